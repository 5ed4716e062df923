"""Retrieval evaluation before and after rewriting: R@1/5/10, MRR and nDCG@10, as markdown, JSON and a bar chart."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .metrics import MEAN_RANK, METRICS, retrieval_metrics
from .rewriter import QueryRewriter
from .scorer import CLIPRankScorer

__all__ = [
    "METRICS",
    "retrieval_metrics",
    "evaluate_retrieval",
    "evaluate_rewriters",
    "markdown_table",
    "save_results",
]


def evaluate_retrieval(scorer: CLIPRankScorer, queries: list[str], target_ids) -> dict[str, float]:
    """Rank each query's target among the scorer's corpus and return [`retrieval_metrics`] plus the mean rank.

    Empty queries (e.g. an empty rewrite) rank last.
    """
    queries = [str(q) for q in queries]
    targets = list(target_ids)
    ranks = torch.full((len(queries),), len(scorer), dtype=torch.long)
    keep = [i for i, q in enumerate(queries) if q.strip()]
    if keep:
        ranks[keep] = scorer.ranks([queries[i] for i in keep], [targets[i] for i in keep])
    metrics = retrieval_metrics(ranks)
    metrics[MEAN_RANK] = round(ranks.float().mean().item(), 2)
    return metrics


def evaluate_rewriters(
    scorer: CLIPRankScorer,
    queries: list[str],
    target_ids,
    rewriters: dict[str, QueryRewriter | None],
    references: list[str] | None = None,
    batch_size: int = 32,
    extra_queries: dict[str, list[str]] | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, list[str]]]:
    """Evaluate the original queries (`rewriter=None`) and each rewriter's greedy rewrites.

    Args:
        rewriters (`dict`): Method name -> [`~grape_hf.rewriter.QueryRewriter`] or `None` (no rewriting).
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


def save_results(
    results: dict[str, dict[str, float]],
    output_dir: str | Path,
    name: str = "evaluation",
    title: str | None = None,
    rewrites: dict[str, list[str]] | None = None,
) -> dict[str, Path]:
    """Write `<name>.md`, `<name>.json` (method -> metric -> value) and `<name>.png` (a bar chart, if matplotlib is
    installed) to `output_dir`; returns the paths written."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    table = markdown_table(results)
    paths["markdown"] = output_dir / f"{name}.md"
    paths["markdown"].write_text((f"## {title}\n\n" if title else "") + table + "\n")
    paths["json"] = output_dir / f"{name}.json"
    paths["json"].write_text(json.dumps(results, indent=2) + "\n")
    if rewrites is not None:
        paths["rewrites"] = output_dir / f"{name}_rewrites.json"
        paths["rewrites"].write_text(json.dumps(rewrites, indent=2, ensure_ascii=False) + "\n")
    png = bar_chart(results, output_dir / f"{name}.png", title=title)
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
