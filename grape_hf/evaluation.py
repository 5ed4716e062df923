"""Retrieval evaluation before and after rewriting: R@1/5/10, MRR and nDCG@10, as markdown, JSON and a bar chart."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .metrics import MEAN_RANK, METRICS, PRIMARY_METRIC, retrieval_metrics
from .retrieval.scorer import RankScorer
from .rewriting.rewriter import QueryRewriter

__all__ = [
    "METRICS",
    "retrieval_metrics",
    "query_ranks",
    "evaluate_retrieval",
    "evaluate_rewriters",
    "markdown_table",
    "save_results",
    "check_result_paths",
]


def query_ranks(scorer: RankScorer, queries: list[str], target_ids) -> torch.Tensor:
    """The 1-based rank of each query's target among the scorer's corpus; an empty query (e.g. an empty rewrite)
    ranks last. Keep these per query to compare two methods on the same queries
    ([`~grape_hf.metrics.paired_recall_test`])."""
    queries = [str(q) for q in queries]
    targets = list(target_ids)
    ranks = torch.full((len(queries),), len(scorer), dtype=torch.long)
    keep = [i for i, q in enumerate(queries) if q.strip()]
    if keep:
        ranks[keep] = scorer.ranks([queries[i] for i in keep], [targets[i] for i in keep])
    return ranks


def evaluate_retrieval(scorer: RankScorer, queries: list[str], target_ids) -> dict[str, float]:
    """Rank each query's target among the scorer's corpus ([`query_ranks`]) and return [`retrieval_metrics`] plus
    the mean rank."""
    ranks = query_ranks(scorer, queries, target_ids)
    metrics = retrieval_metrics(ranks)
    metrics[MEAN_RANK] = round(ranks.float().mean().item(), 2)
    return metrics


def evaluate_rewriters(
    scorer: RankScorer,
    queries: list[str],
    target_ids,
    rewriters: dict[str, QueryRewriter | None],
    references: list[str] | None = None,
    batch_size: int = 32,
    extra_queries: dict[str, list[str]] | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, list[str]]]:
    """Evaluate the original queries (`rewriter=None`) and each rewriter's greedy rewrites.

    Args:
        rewriters (`dict`): Method name -> [`~grape_hf.rewriting.rewriter.QueryRewriter`] or `None` (no rewriting).
        extra_queries (`dict`, *optional*): Method name -> ready-made queries (e.g. an oracle ceiling).

    Returns:
        `tuple`: `(results, rewrites)`: method -> metrics, and method -> the queries that were ranked.
    """
    results, rewrites = {}, {}
    for name, rewriter in rewriters.items():
        if rewriter is None:
            texts = list(queries)
        else:
            texts = [r[0] for r in rewriter.rewrite(list(queries), references=references, batch_size=batch_size)]
        rewrites[name] = texts
        results[name] = evaluate_retrieval(scorer, texts, target_ids)
    for name, texts in (extra_queries or {}).items():
        rewrites[name] = list(texts)
        results[name] = evaluate_retrieval(scorer, texts, target_ids)
    return results, rewrites


def markdown_table(results: dict[str, dict[str, float]], metrics=METRICS) -> str:
    """Render method -> metrics as a markdown table.

    Example:
    ```python
    >>> from grape_hf.evaluation import markdown_table
    >>> print(markdown_table({"none": {"R@1": 0.1, "R@5": 0.2, "R@10": 0.3, "MRR": 0.15, "nDCG@10": 0.2}}))
    | method | R@1 | R@5 | R@10 | MRR | nDCG@10 |
    |---|---|---|---|---|---|
    | none | 0.100 | 0.200 | 0.300 | 0.150 | 0.200 |
    ```
    """
    lines = ["| method | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, values in results.items():
        cells = [_fmt(values.get(m)) for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.3f}"


def result_paths(output_dir: str | Path, name: str = "evaluation", rewrites: bool = True) -> dict[str, Path]:
    """The files [`save_results`] writes for `name` under `output_dir`. `name` may hold subfolders (`runs/first`)
    but must stay inside `output_dir`."""
    parts = Path(name).parts
    if not name or name.endswith(("/", "\\")) or Path(name).is_absolute() or ".." in parts or not parts:
        raise ValueError(
            f"name {name!r} is not a file name inside the output folder; give a name such as 'evaluation' or "
            "'runs/first' (no absolute path, no '..', no trailing slash)."
        )
    base = Path(output_dir) / name
    paths = {"markdown": base.with_name(base.name + ".md"), "json": base.with_name(base.name + ".json")}
    if rewrites:
        paths["rewrites"] = base.with_name(base.name + "_rewrites.json")
    paths["png"] = base.with_name(base.name + ".png")
    return paths


def check_result_paths(output_dir: str | Path, name: str = "evaluation", rewrites: bool = True) -> dict[str, Path]:
    """Make sure every file [`save_results`] will write can be written, before the (long) evaluation: create the
    folders, and try each file name (too long, a folder in the way, no permission). Returns the paths."""
    paths = result_paths(output_dir, name, rewrites)
    for path in paths.values():
        try:
            if path.is_dir():
                raise ValueError(f"Cannot write {str(path)!r}: a folder is in the way; give another name.")
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():
                with open(path, "ab"):
                    pass
            else:
                with open(path, "xb"):
                    pass
                path.unlink()
        except OSError as err:
            raise ValueError(
                f"Cannot write {str(path)!r} ({err.strerror or err}); give a writable output folder and a valid name."
            ) from err
    return paths


def save_results(
    results: dict[str, dict[str, float]],
    output_dir: str | Path,
    name: str = "evaluation",
    title: str | None = None,
    rewrites: dict[str, list[str]] | None = None,
) -> dict[str, Path]:
    """Write `<name>.md`, `<name>.json` (method -> metric -> value) and `<name>.png` (a bar chart, if matplotlib is
    installed) to `output_dir`, creating the folders (`name` may hold subfolders, e.g. `runs/first`); returns the
    paths written. [`check_result_paths`] checks them beforehand."""
    planned = result_paths(output_dir, name, rewrites is not None)
    planned["markdown"].parent.mkdir(parents=True, exist_ok=True)
    paths = {}
    table = markdown_table(results)
    paths["markdown"] = planned["markdown"]
    paths["markdown"].write_text((f"## {title}\n\n" if title else "") + table + "\n")
    paths["json"] = planned["json"]
    paths["json"].write_text(json.dumps(results, indent=2) + "\n")
    if rewrites is not None:
        paths["rewrites"] = planned["rewrites"]
        paths["rewrites"].write_text(json.dumps(rewrites, indent=2, ensure_ascii=False) + "\n")
    png = bar_chart(results, planned["png"], title=title)
    if png is not None:
        paths["png"] = png
    return paths


def bar_chart(results: dict[str, dict[str, float]], path: str | Path, title: str | None = None, metrics=METRICS):
    """A grouped bar chart of the metrics per method; returns the path, or `None` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    methods = list(results)
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(1.6 * len(metrics) + 2, 3.6))
    for i, method in enumerate(methods):
        xs = [j + i * width for j in range(len(metrics))]
        ax.bar(xs, [results[method].get(m, 0.0) for m in metrics], width, label=method)
    ax.set_xticks([j + width * (len(methods) - 1) / 2 for j in range(len(metrics))], metrics)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def training_curves(log_history: list[dict], completions_per_step: int | None = None) -> dict[str, list]:
    """Curves of a GRPO run from its trainer's `state.log_history`: the held-out retrieval metrics logged by
    [`~grape_hf.training.callbacks.RetrievalEvalCallback`] (`eval_retrieval/<metric>`) and the reward's training-batch
    metrics (`grape/<metric>`, `rewards/<name>/mean`), each with its steps (and completions seen, when given).

    Example:
    ```python
    >>> from grape_hf.evaluation import training_curves
    >>> logs = [{"step": 0, "eval_retrieval/R@10": 0.3}, {"step": 1, "grape/mean_rank": 40.0, "reward": 0.2}]
    >>> training_curves(logs, completions_per_step=8)["eval"]
    {'step': [0], 'completions': [0], 'R@10': [0.3]}
    ```
    """
    evals = [e for e in log_history if any(k.startswith("eval_retrieval/") for k in e)]
    trains = [e for e in log_history if "grape/mean_rank" in e or "reward" in e]

    def columns(entries: list[dict], prefix: str, extra: tuple[str, ...] = ()) -> dict[str, list]:
        out: dict[str, list] = {"step": [e["step"] for e in entries]}
        if completions_per_step:
            out["completions"] = [e["step"] * completions_per_step for e in entries]
        names = sorted({k[len(prefix) :] for e in entries for k in e if k.startswith(prefix)})
        for name in names:
            out[name] = [e.get(prefix + name) for e in entries]
        for key in extra:
            if any(key in e for e in entries):
                out[key] = [e.get(key) for e in entries]
        return out

    return {"eval": columns(evals, "eval_retrieval/"), "train": columns(trains, "grape/", extra=("reward",))}


def plot_curves(runs: dict[str, dict], path: str | Path, title: str | None = None, metric: str = PRIMARY_METRIC):
    """Two panels from [`training_curves`] of several runs (label -> curves): held-out `metric` against completions
    seen (or steps), and the score-inflation monitor (the rewrites' similarity to the target and to the non-targets)
    on the training batches. Returns the path, or `None` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for label, curves in runs.items():
        evals, train = curves["eval"], curves["train"]
        x = "completions" if "completions" in evals else "step"
        if metric in evals:
            left.plot(evals[x], evals[metric], marker="o", label=label)
        tx = "completions" if "completions" in train else "step"
        if "target_similarity" in train:
            line = right.plot(train[tx], train["target_similarity"], label=f"{label}: to the target")[0]
            right.plot(
                train[tx],
                train["nontarget_similarity"],
                ls="--",
                color=line.get_color(),
                label=f"{label}: to non-targets",
            )
    left.set_xlabel("completions seen" if any("completions" in c["eval"] for c in runs.values()) else "step")
    left.set_ylabel(f"held-out {metric}")
    right.set_xlabel("completions seen" if any("completions" in c["train"] for c in runs.values()) else "step")
    right.set_ylabel("cosine similarity of the rewrites")
    right.set_title("score-inflation monitor (training batches)", fontsize=9)
    for ax in (left, right):
        if ax.lines:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
