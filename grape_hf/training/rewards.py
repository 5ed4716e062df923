"""GRAPE's reward functions for TRL's `GRPOTrainer`.

A reward variant maps the scorer's per-completion [`~grape_hf.retrieval.scorer.RankStats`] to one float per completion.
[`GRAPERewardFunction`] wraps a variant in TRL's reward contract
(`prompts, completions, **dataset_columns -> list[float]`) and logs retrieval metrics through TRL's `log_metric`.
Variants are chosen by name (`rank`, `shaped_rank`, `reciprocal_rank`, `similarity`, `margin`), or by a dotted path to
your own function.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import Any

import torch

from ..metrics import MEAN_RANK, prefix_metrics, retrieval_metrics
from ..retrieval.scorer import RankScorer, RankStats
from ..rewriting.prompting import clean_rewrite, is_blank

RewardVariant = Callable[[RankStats], torch.Tensor]


def completion_text(completion: Any) -> str:
    """The text of one completion, standard (`str`) or conversational (`[{"role": "assistant", "content": ...}]`,
    as TRL passes it; a content may also be a list of `{"type": "text", "text": ...}` parts). Several messages or
    parts are joined by a newline, so their words never run together.

    Example:
    ```python
    >>> from grape_hf.training.rewards import completion_text
    >>> completion_text([{"role": "assistant", "content": "two men"}, {"role": "assistant", "content": "play chess"}])
    'two men\\nplay chess'
    ```
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return _join(_message_text(m) for m in completion)
    if isinstance(completion, dict):
        return _message_text(completion)
    raise TypeError(f"A completion must be a string or a list of messages, got {type(completion).__name__}.")


def _message_text(message: Any) -> str:
    if not isinstance(message, dict):
        return str(message)
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, list):  # multimodal parts: only the text ones carry words
        return _join(part.get("text") or "" if isinstance(part, dict) else str(part) for part in content)
    return str(content)


def _join(texts) -> str:
    return "\n".join(t for t in texts if t)


def rank_reward(stats: RankStats) -> torch.Tensor:
    r"""GRAPE's corpus-relative ranking reward, the DCG discount of the target's rank:

    $$ r = \frac{1}{\log_2(1 + \mathrm{rank})} $$

    1 at rank 1, 0.63 at rank 2, 0.29 at rank 10, 0.10 at rank 1,000. It depends only on how the target is ordered
    against the rest of the corpus, so writing queries that score high against everything earns nothing. The
    logarithm keeps a useful gradient deep in the ranking (rank 500 → 200 still pays), unlike reciprocal rank.
    Lowest value (empty completion): 0.
    """
    return 1.0 / torch.log2(1.0 + stats.ranks.float())


def shaped_rank_reward(stats: RankStats) -> torch.Tensor:
    r"""A piecewise-linear rank reward in the manner of ConvSearch-R1's rank incentive: steep in the top 10, linear to
    rank 100, zero beyond.

    $$ r = \begin{cases} 1 - \frac{\mathrm{rank} - 1}{18} & \mathrm{rank} \le 10 \\
    \frac{100 - \mathrm{rank}}{180} & 10 < \mathrm{rank} \le 100 \\ 0 & \text{otherwise} \end{cases} $$

    1 at rank 1, 0.5 at rank 10, 0.25 at rank 55, 0 from rank 100. Where [`rank_reward`] is nearly flat past rank
    ~30 (0.20 at 31, 0.15 at 100), this one pays each place gained up to rank 100 the same, and a top-10 place ten
    times more. Lowest value (empty completion): 0.

    Example:
    ```python
    >>> import torch
    >>> from grape_hf.training.rewards import shaped_rank_reward
    >>> from grape_hf.retrieval.scorer import RankStats
    >>> zeros = torch.zeros(5)
    >>> ranks = torch.tensor([1, 10, 55, 100, 5000])
    >>> stats = RankStats(ranks=ranks, target_similarity=zeros, nontarget_similarity=zeros,
    ...                   topk_nontarget_similarity=zeros, corpus_size=9000)
    >>> [round(x, 3) for x in shaped_rank_reward(stats).tolist()]
    [1.0, 0.5, 0.25, 0.0, 0.0]
    ```
    """
    ranks = stats.ranks.float()
    top = 1.0 - (ranks - 1.0) / 18.0
    middle = (100.0 - ranks) / 180.0
    return torch.where(ranks <= 10, top, middle.clamp(min=0.0))


def reciprocal_rank_reward(stats: RankStats) -> torch.Tensor:
    r"""Reciprocal rank, the per-query term of MRR: $r = 1 / \mathrm{rank}$.

    1 at rank 1, 0.5 at rank 2, 0.1 at rank 10, nearly 0 beyond. It pays the first place far above the next few,
    where [`rank_reward`] pays rank 2 0.63 of rank 1: use it when R@1 is what counts and an easy rewrite already
    lands in the top few (a composed query whose reference caption ranks the target 2nd–5th). Deep in the ranking it
    gives almost no signal, so start from a policy that already reaches the top ranks. Lowest value (empty
    completion): 0.

    Example:
    ```python
    >>> import torch
    >>> from grape_hf.training.rewards import reciprocal_rank_reward
    >>> from grape_hf.retrieval.scorer import RankStats
    >>> zeros = torch.zeros(4)
    >>> stats = RankStats(ranks=torch.tensor([1, 2, 10, 1000]), target_similarity=zeros, nontarget_similarity=zeros,
    ...                   topk_nontarget_similarity=zeros, corpus_size=9000)
    >>> [round(x, 3) for x in reciprocal_rank_reward(stats).tolist()]
    [1.0, 0.5, 0.1, 0.001]
    ```
    """
    return 1.0 / stats.ranks.float()


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
    "shaped_rank": shaped_rank_reward,
    "reciprocal_rank": reciprocal_rank_reward,
    "similarity": similarity_reward,
    "margin": margin_reward,
}
# The reward an empty (or whitespace-only) completion gets: the variant's lowest value.
LOWEST_REWARD: dict[str, float] = {
    "rank": 0.0,
    "shaped_rank": 0.0,
    "reciprocal_rank": 0.0,
    "similarity": -1.0,
    "margin": -2.0,
}


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
        scorer ([`~grape_hf.retrieval.scorer.RankScorer`]): The frozen retriever with its corpus.
        reward (`str` or callable, *optional*, defaults to `"rank"`): `"rank"` ([`rank_reward`]), `"similarity"`
            ([`similarity_reward`]), `"margin"` ([`margin_reward`]), a dotted path, or a function of
            [`~grape_hf.retrieval.scorer.RankStats`].
        target_column (`str`, *optional*, defaults to `"target_id"`): Dataset column with the right corpus id (or a
            list of relevant ids) for each prompt.
        relative (`bool`, *optional*, defaults to `False`): Reward the improvement over the original query,
            $r(\text{rewrite}) - r(\text{original})$, the original read from `query_column`. Under GRPO's per-group
            advantage scaling (`scale_rewards="group"`) this changes nothing, since every completion of a group
            shares the original and the group mean is subtracted; with `scale_rewards="batch"` or `"none"` it
            removes the per-query difficulty from the advantages.
        query_column (`str`, *optional*, defaults to `"query"`): Column with the original query (for `relative`).
        lowest_reward (`float`, *optional*): Reward of an empty completion (only whitespace or zero-width
            characters) and of one the retriever embeds to NaN, infinity or zero; defaults to the variant's lowest
            value (0 for rank, -1 for similarity, -2 for margin, else -1).
        metric_prefix (`str`, *optional*, defaults to `"grape"`): Prefix of the logged metrics.

    Every call logs the completions' `mean_rank`, `R@1`, `R@5`, `R@10`, `MRR`, `nDCG@10` (the names of
    [`~grape_hf.metrics`]),    `target_similarity` and `nontarget_similarity` (mean similarity to every non-target
    item: the score-inflation monitor), `empty_fraction` and `degenerate_fraction` (completions the retriever embedded
    to NaN, infinity or zero) as `<metric_prefix>/<name>`. The rank metrics average over all completions, an empty or
    degenerate one counting as a miss (at the worst rank, the corpus size, in `mean_rank`); the similarities average
    over the ranked ones. So the same keys are logged on every call and, averaged over processes as TRL does, equal the
    single-process values. Inside `GRPOTrainer` they go through TRL's `log_metric`; outside it they are kept in
    `last_metrics`. Rewards are never NaN.

    The target column must hold one integer corpus id (or a list of them) per completion: a count that does not
    match the completions, a string id (`"12"`), a bool or a fractional float is refused, not guessed at.

    Example:
    ```python
    >>> import os; os.environ["HF_HUB_OFFLINE"] = "1"
    >>> from grape_hf import RankScorer, GRAPERewardFunction, load_retriever
    >>> retriever = load_retriever("sentence-transformers:all-MiniLM-L6-v2", device="cpu")
    >>> scorer = RankScorer(retriever, ["a dog on the grass", "two men play chess"], show_progress_bar=False)
    >>> reward = GRAPERewardFunction(scorer, reward="rank")
    >>> reward(prompts=["..."] * 3, completions=["men playing chess", "a dog", ""], target_id=[1, 1, 1])
    [1.0, 0.6309297680854797, 0.0]
    ```
    """

    def __init__(
        self,
        scorer: RankScorer,
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
        # The rewrite inference would keep (the first line, quotes stripped): training scores what serving returns.
        texts = [clean_rewrite(completion_text(c)) for c in completions]
        targets = self._column(kwargs, self.target_column, len(texts))
        n = len(self.scorer)
        rewards = torch.full((len(texts),), self.lowest_reward)
        # Per completion, for the metrics: an empty completion retrieves nothing (worst rank, no similarity).
        ranks = torch.full((len(texts),), n, dtype=torch.long)
        target_sim = torch.full((len(texts),), torch.nan)
        nontarget_sim = torch.full((len(texts),), torch.nan)
        degenerate = torch.zeros(len(texts), dtype=torch.bool)
        keep = [i for i, t in enumerate(texts) if not is_blank(t)]
        if keep:
            stats = self.scorer.rank_stats([texts[i].strip() for i in keep], [targets[i] for i in keep])
            values = self._variant_values(stats, "completions")
            values = torch.nan_to_num(
                values, nan=self.lowest_reward, posinf=self.lowest_reward, neginf=self.lowest_reward
            )
            bad = stats.degenerate if stats.degenerate is not None else torch.zeros(len(keep), dtype=torch.bool)
            rewards[keep] = torch.where(bad, self.lowest_reward, values)
            ranks[keep] = stats.ranks
            target_sim[keep] = torch.where(bad, torch.nan, stats.target_similarity.float())
            nontarget_sim[keep] = torch.where(bad, torch.nan, stats.nontarget_similarity.float())
            degenerate[keep] = bad
        per_completion = RankStats(ranks, target_sim, nontarget_sim, nontarget_sim, n, degenerate)
        empty = torch.ones(len(texts), dtype=torch.bool)
        empty[keep] = False
        self._log(per_completion, empty, log_metric)
        if self.relative:
            rewards -= self._original_rewards(kwargs, targets)
        return [float(r) if math.isfinite(float(r)) else self.lowest_reward for r in rewards]

    def _variant_values(self, stats: RankStats, what: str) -> torch.Tensor:
        """The variant's rewards, refused unless there is exactly one per ranked completion: a single number would be
        broadcast to every completion, so each group would share one reward and GRPO would learn nothing."""
        count = len(stats.ranks)
        values = self.variant(stats)
        try:
            values = torch.as_tensor(values, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(
                f"The reward function {self.reward_name!r} returned {type(values).__name__} {values!r:.80}, which is "
                f"not a list of numbers ({err}); return one reward per completion."
            ) from err
        if values.ndim == 0:
            raise ValueError(
                f"The reward function {self.reward_name!r} returned a single number ({values.item():.4g}) for {count} "
                f"{what}; return one reward per completion (a tensor or list of length {count}), e.g. computed from "
                "stats.ranks elementwise. One number for all would give every completion of a group the same reward."
            )
        if values.shape != (count,):
            got = f"{values.shape[0]} values" if values.ndim == 1 else f"a tensor of shape {tuple(values.shape)}"
            raise ValueError(
                f"The reward function {self.reward_name!r} returned {got} for {count} {what}; return one reward "
                f"per completion (a tensor or list of length {count})."
            )
        return values

    def _column(self, kwargs: dict, column: str, expected: int, role: str = "target") -> list:
        """A dataset column TRL passed, checked to hold one value per completion."""
        if column not in kwargs:
            columns = sorted(
                k for k in kwargs if k not in ("trainer_state", "log_extra", "log_metric", "completion_ids")
            )
            raise ValueError(
                f"The dataset has no {role} column {column!r} (columns passed: {columns}); set `{role}_column` to "
                "the column holding it."
            )
        values = kwargs[column]
        values = values.tolist() if isinstance(values, torch.Tensor) else list(values)
        if len(values) != expected:
            raise ValueError(
                f"Got {len(values)} values in column {column!r} for {expected} completions; TRL passes one per "
                "completion (each prompt's row repeated num_generations times)."
            )
        return values

    def _original_rewards(self, kwargs, targets) -> torch.Tensor:
        if self.query_column not in kwargs:
            raise ValueError(
                f"relative=True needs the original query in column {self.query_column!r}, which the dataset lacks."
            )
        originals = [str(q) for q in self._column(kwargs, self.query_column, len(targets), "query")]
        # Completions of one prompt share the original: score each distinct (query, target) once.
        unique = {}
        for q, t in zip(originals, targets):
            unique.setdefault((q, str(t)), (q, t))
        keys = list(unique)
        stats = self.scorer.rank_stats([unique[k][0] for k in keys], [unique[k][1] for k in keys])
        values = torch.nan_to_num(self._variant_values(stats, "original queries"), nan=self.lowest_reward)
        if stats.degenerate is not None:
            values = torch.where(stats.degenerate, self.lowest_reward, values)
        lookup = dict(zip(keys, values.tolist()))
        return torch.tensor([lookup[(q, str(t))] for q, t in zip(originals, targets)])

    def _log(self, stats: RankStats, empty: torch.Tensor, log_metric) -> None:
        # One value per completion, so the same keys are logged on every call and the mean over processes that TRL
        # takes equals the single-process value. Empty and degenerate completions retrieve nothing: a miss, counted
        # at the worst rank in mean_rank.
        ranks = stats.ranks.float()
        found = ~(empty | stats.degenerate)
        metrics = {
            MEAN_RANK: ranks.mean().item(),
            # A miss at every cut-off: an infinite rank scores 0 in each retrieval metric.
            **retrieval_metrics(torch.where(found, ranks, math.inf), digits=None),
            "target_similarity": _nanmean(stats.target_similarity),
            "nontarget_similarity": _nanmean(stats.nontarget_similarity),
            "empty_fraction": empty.float().mean().item(),
            "degenerate_fraction": stats.degenerate.float().mean().item(),
        }
        self.last_metrics = prefix_metrics(self.metric_prefix, metrics)
        if log_metric is not None:
            for name, value in self.last_metrics.items():
                log_metric(name, value)

    def __repr__(self) -> str:
        return f"GRAPERewardFunction(reward={self.reward_name!r}, relative={self.relative}, corpus={len(self.scorer)})"


def _nanmean(values: torch.Tensor) -> float:
    finite = values[torch.isfinite(values)]
    return finite.mean().item() if len(finite) else 0.0


def get_reward_funcs(
    scorer: RankScorer,
    reward_funcs: list[str],
    target_column: str = "target_id",
    query_column: str = "query",
    relative: bool = False,
) -> list[GRAPERewardFunction]:
    """Build the reward functions named in a run's YAML (`reward_funcs: [rank]`), open-r1 style.

    Example:
    ```python
    >>> from grape_hf.training.rewards import REWARD_VARIANTS
    >>> sorted(REWARD_VARIANTS)
    ['margin', 'rank', 'reciprocal_rank', 'shaped_rank', 'similarity']
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
