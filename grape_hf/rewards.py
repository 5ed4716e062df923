"""GRAPE's reward functions for TRL's `GRPOTrainer`.

A reward variant maps the scorer's per-completion [`~grape_hf.scorer.RankStats`] to one float per completion.
[`GRAPERewardFunction`] wraps a variant in TRL's reward contract
(`prompts, completions, **dataset_columns -> list[float]`) and logs retrieval metrics through TRL's `log_metric`.
Variants are chosen by name (`rank`, `similarity`, `margin`), or by a dotted path to your own function.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import Any

import torch

from .metrics import MEAN_RANK, prefix_metrics, retrieval_metrics
from .scorer import CLIPRankScorer, RankStats

RewardVariant = Callable[[RankStats], torch.Tensor]


def completion_text(completion: Any) -> str:
    """The text of one completion, standard (`str`) or conversational (`[{"role": "assistant", "content": ...}]`)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(m.get("content", "") if isinstance(m, dict) else str(m) for m in completion)
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    raise TypeError(f"A completion must be a string or a list of messages, got {type(completion).__name__}.")


def rank_reward(stats: RankStats) -> torch.Tensor:
    r"""GRAPE's corpus-relative ranking reward, the DCG discount of the target's rank:

    $$ r = \frac{1}{\log_2(1 + \mathrm{rank})} $$

    1 at rank 1, 0.63 at rank 2, 0.29 at rank 10, 0.10 at rank 1,000. It depends only on how the target is ordered
    against the rest of the corpus, so writing queries that score high against everything earns nothing. The
    logarithm keeps a useful gradient deep in the ranking (rank 500 → 200 still pays), unlike reciprocal rank.
    Lowest value (empty completion): 0.
    """
    return 1.0 / torch.log2(1.0 + stats.ranks.float())


def similarity_reward(stats: RankStats) -> torch.Tensor:
    r"""The naive baseline: cosine similarity to the target, $r = \cos(q, t) \in [-1, 1]$.

    It rewards any rewrite that scores high, including ones that score high against every item (score inflation).
    Lowest value (empty completion): -1.
    """
    return stats.target_similarity


def margin_reward(stats: RankStats) -> torch.Tensor:
    r"""Target similarity minus the mean similarity of the `top_k` highest-scoring other items:

    $$ r = \cos(q, t) - \frac{1}{k}\sum_{j \in \mathrm{top}_k, j \ne t} \cos(q, j) \in [-2, 2] $$

    A smooth relative of the rank reward. Lowest value (empty completion): -2.
    """
    return stats.target_similarity - stats.topk_nontarget_similarity


REWARD_VARIANTS: dict[str, RewardVariant] = {
    "rank": rank_reward,
    "similarity": similarity_reward,
    "margin": margin_reward,
}
# The reward an empty (or whitespace-only) completion gets: the variant's lowest value.
LOWEST_REWARD: dict[str, float] = {"rank": 0.0, "similarity": -1.0, "margin": -2.0}


def resolve_reward_variant(reward: str | RewardVariant) -> tuple[str, RewardVariant]:
    """Return `(name, function)` for a registered name, a dotted path (`pkg.module.func` or `pkg.module:func`),
    or a callable."""
    if callable(reward):
        return getattr(reward, "__name__", type(reward).__name__), reward
    if reward in REWARD_VARIANTS:
        return reward, REWARD_VARIANTS[reward]
    if isinstance(reward, str) and ("." in reward or ":" in reward):
        module_name, _, attr = reward.replace(":", ".").rpartition(".")
        try:
            return attr, getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError, ValueError) as err:
            raise ValueError(f"Cannot import the reward function {reward!r}: {err}.") from err
    raise ValueError(
        f"Unknown reward {reward!r}; choose one of {sorted(REWARD_VARIANTS)} or give a dotted path to a function "
        "mapping RankStats to a tensor of rewards."
    )


class GRAPERewardFunction:
    r"""A TRL reward function that scores each rewritten query by where the retriever ranks its target.

    Args:
        scorer ([`~grape_hf.scorer.CLIPRankScorer`]): The frozen retriever with its corpus.
        reward (`str` or callable, *optional*, defaults to `"rank"`): `"rank"` ([`rank_reward`]), `"similarity"`
            ([`similarity_reward`]), `"margin"` ([`margin_reward`]), a dotted path, or a function of
            [`~grape_hf.scorer.RankStats`].
        target_column (`str`, *optional*, defaults to `"target_id"`): Dataset column with the right corpus id (or a
            list of relevant ids) for each prompt.
        relative (`bool`, *optional*, defaults to `False`): Reward the improvement over the original query,
            $r(\text{rewrite}) - r(\text{original})$, the original read from `query_column`. Under GRPO's per-group
            advantage scaling (`scale_rewards="group"`) this changes nothing, since every completion of a group
            shares the original and the group mean is subtracted; with `scale_rewards="batch"` or `"none"` it
            removes the per-query difficulty from the advantages.
        query_column (`str`, *optional*, defaults to `"query"`): Column with the original query (for `relative`).
        lowest_reward (`float`, *optional*): Reward of an empty completion; defaults to the variant's lowest value
            (0 for rank, -1 for similarity, -2 for margin, else -1).
        metric_prefix (`str`, *optional*, defaults to `"grape"`): Prefix of the logged metrics.

    Every call logs the completions' `mean_rank`, `R@1`, `R@5`, `R@10`, `MRR`, `nDCG@10` (the names of [`~grape_hf.metrics`]),
    `target_similarity` and `nontarget_similarity` (mean similarity to every non-target item: the score-inflation
    monitor) as `<metric_prefix>/<name>`. Inside `GRPOTrainer` they go through TRL's `log_metric`; outside it
    they are kept in `last_metrics`. Rewards are never NaN.

    Example:
    ```python
    >>> import os; os.environ["HF_HUB_OFFLINE"] = "1"
    >>> from grape_hf import CLIPRankScorer, GRAPERewardFunction, load_retriever
    >>> retriever = load_retriever("sentence-transformers:all-MiniLM-L6-v2", device="cpu")
    >>> scorer = CLIPRankScorer(retriever, ["a dog on the grass", "two men play chess"], show_progress_bar=False)
    >>> reward = GRAPERewardFunction(scorer, reward="rank")
    >>> reward(prompts=["..."] * 3, completions=["men playing chess", "a dog", ""], target_id=[1, 1, 1])
    [1.0, 0.6309297680854797, 0.0]
    ```
    """

    def __init__(
        self,
        scorer: CLIPRankScorer,
        reward: str | RewardVariant = "rank",
        target_column: str = "target_id",
        relative: bool = False,
        query_column: str = "query",
        lowest_reward: float | None = None,
        metric_prefix: str = "grape",
    ):
        self.scorer = scorer
        self.reward_name, self.variant = resolve_reward_variant(reward)
        self.target_column = target_column
        self.relative = relative
        self.query_column = query_column
        self.lowest_reward = float(
            lowest_reward if lowest_reward is not None else LOWEST_REWARD.get(self.reward_name, -1.0)
        )
        self.metric_prefix = metric_prefix
        self.last_metrics: dict[str, float] = {}
        # TRL logs each reward as rewards/<__name__>/mean.
        self.__name__ = f"grape_{self.reward_name}" + ("_relative" if relative else "")

    def __call__(self, prompts=None, completions=None, log_metric=None, **kwargs) -> list[float]:
        if completions is None:
            raise ValueError("GRAPERewardFunction needs `completions` (TRL passes them).")
        if self.target_column not in kwargs:
            columns = sorted(k for k in kwargs if k not in ("trainer_state", "log_extra", "completion_ids"))
            raise ValueError(
                f"The dataset has no target column {self.target_column!r} (columns passed: {columns}); set "
                "`target_column` to the column holding each query's corpus id."
            )
        texts = [completion_text(c).strip() for c in completions]
        targets = list(kwargs[self.target_column])
        rewards = torch.full((len(texts),), self.lowest_reward)
        keep = [i for i, t in enumerate(texts) if t]
        if keep:
            stats = self.scorer.rank_stats([texts[i] for i in keep], [targets[i] for i in keep])
            values = torch.as_tensor(self.variant(stats), dtype=torch.float32)
            rewards[keep] = torch.nan_to_num(
                values, nan=self.lowest_reward, posinf=self.lowest_reward, neginf=self.lowest_reward
            )
            self._log(stats, len(texts), log_metric)
        if self.relative:
            rewards -= self._original_rewards(kwargs, targets)
        return [float(r) if math.isfinite(float(r)) else self.lowest_reward for r in rewards]

    def _original_rewards(self, kwargs, targets) -> torch.Tensor:
        if self.query_column not in kwargs:
            raise ValueError(
                f"relative=True needs the original query in column {self.query_column!r}, which the dataset lacks."
            )
        originals = [str(q) for q in kwargs[self.query_column]]
        # Completions of one prompt share the original: score each distinct (query, target) once.
        unique = {}
        for q, t in zip(originals, targets):
            unique.setdefault((q, str(t)), (q, t))
        keys = list(unique)
        stats = self.scorer.rank_stats([unique[k][0] for k in keys], [unique[k][1] for k in keys])
        values = torch.nan_to_num(torch.as_tensor(self.variant(stats), dtype=torch.float32), nan=self.lowest_reward)
        lookup = dict(zip(keys, values.tolist()))
        return torch.tensor([lookup[(q, str(t))] for q, t in zip(originals, targets)])

    def _log(self, stats: RankStats, num_completions: int, log_metric) -> None:
        ranks = stats.ranks.float()
        metrics = {
            MEAN_RANK: ranks.mean().item(),
            **retrieval_metrics(ranks, digits=None),
            "target_similarity": stats.target_similarity.mean().item(),
            "nontarget_similarity": stats.nontarget_similarity.mean().item(),
            "empty_fraction": 1.0 - len(ranks) / num_completions,
        }
        self.last_metrics = prefix_metrics(self.metric_prefix, metrics)
        if log_metric is not None:
            for name, value in self.last_metrics.items():
                log_metric(name, value)

    def __repr__(self) -> str:
        return f"GRAPERewardFunction(reward={self.reward_name!r}, relative={self.relative}, corpus={len(self.scorer)})"


def get_reward_funcs(
    scorer: CLIPRankScorer,
    reward_funcs: list[str],
    target_column: str = "target_id",
    query_column: str = "query",
    relative: bool = False,
) -> list[GRAPERewardFunction]:
    """Build the reward functions named in a run's YAML (`reward_funcs: [rank]`), open-r1 style.

    Example:
    ```python
    >>> from grape_hf.rewards import REWARD_VARIANTS
    >>> sorted(REWARD_VARIANTS)
    ['margin', 'rank', 'similarity']
    ```
    """
    if not reward_funcs:
        raise ValueError(f"No reward function named; choose from {sorted(REWARD_VARIANTS)}.")
    return [
        GRAPERewardFunction(
            scorer, reward=name, target_column=target_column, query_column=query_column, relative=relative
        )
        for name in reward_funcs
    ]
