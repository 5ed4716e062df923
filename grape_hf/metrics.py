r"""The one metric vocabulary of grape_hf: retrieval metrics of 1-based ranks, and their names everywhere.

Every place that reports retrieval quality uses these keys: the evaluation tables and JSON files (`R@10`), the
reward's training logs (`grape/R@10`), the R@10 curve callback (`eval_retrieval/R@10`), `grape_rewriter.json`
and the benchmarks' result files. The model card's `model-index` needs MTEB's names (`recall_at_10`); [`CARD_NAMES`]
is the one place they are mapped, as sentence-transformers' evaluators name a metric once and prefix it per use.

$\mathrm{R@k} = \mathrm{mean}[\mathrm{rank} \le k]$, $\mathrm{MRR} = \mathrm{mean}(1/\mathrm{rank})$,
$\mathrm{nDCG@10} = \mathrm{mean}([\mathrm{rank} \le 10] / \log_2(1 + \mathrm{rank}))$.
"""

from __future__ import annotations

import torch

METRICS = ("R@1", "R@5", "R@10", "MRR", "nDCG@10")
"""The retrieval metrics, in table order."""
MEAN_RANK = "mean_rank"
PRIMARY_METRIC = "R@10"
"""The metric curves, selection and the bars of the benchmarks are read in."""
CARD_NAMES = {
    "R@1": "recall_at_1",
    "R@5": "recall_at_5",
    "R@10": "recall_at_10",
    "MRR": "mrr",
    "nDCG@10": "ndcg_at_10",
}
"""Our metric key -> the model-index metric type of a Hub model card (MTEB's names)."""


def retrieval_metrics(ranks, digits: int | None = 4) -> dict[str, float]:
    r"""[`METRICS`] of 1-based ranks (one relevant item per query; the best-ranked one for several).

    Args:
        ranks (`Sequence[int]` or `torch.Tensor`): The target's rank per query.
        digits (`int`, *optional*, defaults to `4`): Round to this many digits; `None` keeps full precision.

    Example:
    ```python
    >>> from grape_hf.metrics import retrieval_metrics
    >>> retrieval_metrics([1, 3, 20])["R@5"]
    0.6667
    ```
    """
    ranks = torch.as_tensor(ranks, dtype=torch.float32)
    if ranks.numel() == 0:
        raise ValueError("No ranks to evaluate: the query set is empty.")
    out = {
        "R@1": (ranks <= 1).float().mean().item(),
        "R@5": (ranks <= 5).float().mean().item(),
        "R@10": (ranks <= 10).float().mean().item(),
        "MRR": (1.0 / ranks).mean().item(),
        "nDCG@10": torch.where(ranks <= 10, 1.0 / torch.log2(1.0 + ranks), torch.zeros_like(ranks)).mean().item(),
    }
    return out if digits is None else {k: round(v, digits) for k, v in out.items()}


def prefix_metrics(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    """`{"R@10": x}` -> `{"<prefix>/R@10": x}`, the way every training log names a metric.

    Example:
    ```python
    >>> from grape_hf.metrics import prefix_metrics
    >>> prefix_metrics("grape", {"R@10": 0.5})
    {'grape/R@10': 0.5}
    ```
    """
    return {f"{prefix}/{name}": value for name, value in metrics.items()}


def paired_recall_test(ranks_a, ranks_b, k: int = 10) -> dict[str, float]:
    r"""Compare two methods on the *same* queries by R@k, query by query: an exact two-sided sign test (McNemar's
    exact test) on the queries where exactly one of them puts the target in the top `k`.

    Two proportions measured on one query set are correlated, so their difference has a much smaller spread than
    two independent samples would; this is the test to read a few points of R@k with.

    Args:
        ranks_a, ranks_b (`Sequence[int]` or `torch.Tensor`): The target's 1-based rank per query, same order.
        k (`int`, *optional*, defaults to `10`): The cut-off.

    Returns:
        `dict`: `wins` (queries only `a` retrieves in the top `k`), `losses` (only `b`), `ties`, `delta` (R@k of
        `a` minus that of `b`) and `p_value` (two-sided; 1.0 when no query differs).

    Example:
    ```python
    >>> from grape_hf.metrics import paired_recall_test
    >>> paired_recall_test([1, 3, 5, 2, 40], [20, 30, 50, 2, 40], k=10)
    {'wins': 3, 'losses': 0, 'ties': 2, 'delta': 0.6, 'p_value': 0.25}
    ```
    """
    import math

    a = torch.as_tensor(ranks_a) <= k
    b = torch.as_tensor(ranks_b) <= k
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_recall_test needs one rank per query for both methods; got {a.shape} and {b.shape}.")
    if a.numel() == 0:
        raise ValueError("No ranks to compare: the query set is empty.")
    wins, losses = int((a & ~b).sum()), int((~a & b).sum())
    n = wins + losses
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2**n if n else 0.5
    return {
        "wins": wins,
        "losses": losses,
        "ties": a.numel() - n,
        "delta": round((wins - losses) / a.numel(), 4),
        "p_value": float(f"{min(1.0, 2 * tail):.3g}"),  # three significant figures: small ones stay visible
    }
