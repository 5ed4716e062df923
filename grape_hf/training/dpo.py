r"""Rank preference optimisation: DPO on pairs of the policy's own rewrites, ordered by the retriever's ranking.

Self-distillation ([`grape_hf.training.distill`]) fine-tunes on the best sample of a query and throws the rest away.
Here each round samples the same way, scores the greedy rewrite and every sample with the same reward object GRPO uses,
and builds one preference pair per query: the best-rewarded rewrite is `chosen`; `rejected` is the greedy rewrite
when a sample beat it (the mode the policy would return is what must move), else the worst sample. TRL's
DPOTrainer then trains on the pairs against a frozen copy of the starting policy (with a LoRA adapter, TRL keeps
that copy as a second adapter, `"ref"`). It is offline, iterated DPO with ranking feedback, as RaFe
(arXiv 2405.14431) does for query rewriting with a reranker.

`main(script_args, training_args, model_args)` is what `recipes/dpo_grape.py` runs. Each round is saved as a
rewriter folder in `output_dir/round-<k>` (with `pairs.jsonl` and `stats.json`), and a finished round is not redone.
"""

from __future__ import annotations

from functools import partial

from .configs import PreferenceScriptArguments
from .distill import check_sampled, run_rounds
from .rewards import GRAPERewardFunction


def select_pairs(
    queries: list[str],
    targets: list,
    greedy: list[str],
    samples: list[list[str]],
    reward: GRAPERewardFunction,
    min_margin: float = 0.0,
    references: list[str] | None = None,
    max_rank: int | None = None,
) -> tuple[list[dict], dict]:
    """One preference pair per query from its greedy rewrite and samples, ordered by `reward`.

    `chosen` is the best-rewarded rewrite (greedy included). `rejected` is the greedy rewrite when a sample beats it,
    else the worst-rewarded sample. A pair is kept when the rewards differ by more than `min_margin` and, with
    `max_rank`, the retriever ranks the target at that place or better for `chosen`.

    Returns:
        `tuple`: `(pairs, stats)`: rows `{"query", "chosen", "rejected", "chosen_reward", "rejected_reward",
        "chosen_rank", "rejected_rank", "rejected_is_greedy"}` (and `"reference"`), and the round's numbers (`pairs`,
        `rejected_greedy`, `mean_greedy_reward`, `mean_chosen_reward`, `mean_rejected_reward`, `oracle_R@1` /
        `oracle_R@10` of the chosen rewrites).

    Example:
    ```python
    >>> import os; os.environ["HF_HUB_OFFLINE"] = "1"
    >>> from grape_hf import RankScorer, GRAPERewardFunction, load_retriever
    >>> from grape_hf.training.dpo import select_pairs
    >>> scorer = RankScorer(load_retriever("sentence-transformers:all-MiniLM-L6-v2", device="cpu"),
    ...                         ["a dog on the grass", "two men play chess"], show_progress_bar=False)
    >>> pairs, stats = select_pairs(["Zwei Männer"], [1], ["a dog"], [["a dog", "two men playing chess"]],
    ...                             GRAPERewardFunction(scorer))
    >>> pairs[0]["chosen"], pairs[0]["rejected"], stats["rejected_greedy"]
    ('two men playing chess', 'a dog', 1)
    ```
    """
    import torch

    n = check_sampled(queries, targets, greedy, samples)
    groups = [[g, *s] for g, s in zip(greedy, samples)]  # index 0: the greedy rewrite
    flat = [text for group in groups for text in group]
    flat_targets = [t for t, group in zip(targets, groups) for _ in group]
    flat_rewards = reward(prompts=flat, completions=flat, **{reward.target_column: flat_targets})
    picks, start = [], 0
    for group in groups:
        values = flat_rewards[start : start + len(group)]
        start += len(group)
        best = max(range(len(group)), key=values.__getitem__)
        if values[best] > values[0]:
            worst = 0  # a sample beat the greedy rewrite: move the mode
        else:
            worst = min(range(1, len(group)), key=values.__getitem__)
        picks.append((group[best], values[best], group[worst], values[worst], worst == 0, values[0]))
    texts = [p[0] for p in picks] + [p[2] for p in picks]
    ranks = reward.scorer.ranks(texts, list(targets) * 2) if n else torch.zeros(0, dtype=torch.long)
    chosen_ranks, rejected_ranks = ranks[:n].tolist(), ranks[n:].tolist()
    pairs = []
    for i, (chosen, chosen_value, rejected, rejected_value, is_greedy, _) in enumerate(picks):
        if chosen_value - rejected_value <= min_margin or chosen == rejected:
            continue
        if max_rank is not None and chosen_ranks[i] > max_rank:
            continue
        row = {
            "query": queries[i],
            "chosen": chosen,
            "rejected": rejected,
            "chosen_reward": chosen_value,
            "rejected_reward": rejected_value,
            "chosen_rank": chosen_ranks[i],
            "rejected_rank": rejected_ranks[i],
            "rejected_is_greedy": is_greedy,
        }
        pairs.append(row if references is None else {**row, "reference": references[i]})
    stats = {
        "queries": n,
        "samples_per_query": max((len(s) for s in samples), default=0),
        "pairs": len(pairs),
        "rejected_greedy": sum(row["rejected_is_greedy"] for row in pairs),
        "mean_greedy_reward": round(sum(p[5] for p in picks) / max(n, 1), 4),
        "mean_chosen_reward": round(sum(p[1] for p in picks) / max(n, 1), 4),
        "mean_rejected_reward": round(sum(p[3] for p in picks) / max(n, 1), 4),
        "oracle_R@1": round(float((ranks[:n] <= 1).float().mean()), 4) if n else 0.0,
        "oracle_R@10": round(float((ranks[:n] <= 10).float().mean()), 4) if n else 0.0,
    }
    return pairs, stats


def to_preference_dataset(pairs, template):
    """TRL's conversational preference format: the rewriter's prompt, then the chosen and the rejected rewrite.

    `pairs` has `query`, `chosen` and `rejected` columns, and `reference` when the template is a composed one.
    """

    def convert(example):
        return {
            "prompt": template.build_messages(example["query"], example.get("reference")),
            "chosen": [{"role": "assistant", "content": example["chosen"]}],
            "rejected": [{"role": "assistant", "content": example["rejected"]}],
        }

    return pairs.map(convert, remove_columns=pairs.column_names)


def main(script_args: PreferenceScriptArguments, training_args, model_args):
    """Run the rounds (sample, pair by rank, DPO); the last one is also saved to `output_dir` itself."""
    from trl import DPOTrainer

    select = partial(select_pairs, min_margin=script_args.min_margin, max_rank=script_args.max_rank)
    hint = "every rewrite of every query had the same reward; raise num_samples or sample_temperature"
    if script_args.max_rank:
        hint += f", or raise max_rank ({script_args.max_rank})"
    return run_rounds(
        script_args,
        training_args,
        model_args,
        "rank_preference",
        select,
        DPOTrainer,
        to_preference_dataset,
        hint,
        "pairs.jsonl",
        key=("query", "chosen", "rejected"),
    )
