"""Do sampled-negative rewards agree with exact ones? Multi30k validation (task2, German descriptions as queries,
English ones as the corpus), all-MiniLM-L6-v2: Spearman correlation of the rank reward computed exactly and from
sampled negatives, over every validation query; plus how many identical queries got different rewards.

    flock /tmp/grape_heavy.lock python benchmarks/sampled_negatives_agreement.py

Writes benchmarks/results/sampled_negatives.json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main():
    from scipy.stats import spearmanr

    from grape_hf import RankScorer, load_retriever
    from grape_hf.data import load_multi30k
    from grape_hf.training.rewards import rank_reward

    data = load_multi30k("../shared/data/multi30k", split="validation", task="task2")
    retriever = load_retriever("sentence-transformers:all-MiniLM-L6-v2", device="cpu")
    exact = RankScorer(retriever, data.corpus, show_progress_bar=False)
    queries = retriever.encode_text(list(data.queries["query"]))
    targets = list(data.queries["target_id"])
    exact_stats = exact.rank_stats(queries, targets)
    exact_reward = rank_reward(exact_stats)
    result = {
        "command": "python benchmarks/sampled_negatives_agreement.py",
        "dataset": "Multi30k task2 validation, de queries -> en corpus",
        "queries": len(targets),
        "corpus": len(exact),
        "exact_median_rank": float(exact_stats.ranks.float().median()),
        "rows": [],
    }
    for num in (32, 64, 128, 256, 512):
        for seed in (0, 1):
            sampled = RankScorer.from_embeddings(retriever, exact.corpus_embeddings, sampled_negatives=num, seed=seed)
            stats = sampled.rank_stats(queries, targets)
            # Again, in reverse order and in two halves: the rewards must not move.
            half = len(targets) // 2
            again = sampled.rank_stats(queries.flip(0), targets[::-1]).ranks.flip(0)
            split = [
                sampled.rank_stats(queries[:half], targets[:half]).ranks,
                sampled.rank_stats(queries[half:], targets[half:]).ranks,
            ]
            row = {
                "sampled_negatives": num,
                "seed": seed,
                "spearman_rank_reward": float(spearmanr(exact_reward, rank_reward(stats)).statistic),
                "median_abs_rank_error": float((stats.ranks - exact_stats.ranks).abs().float().median()),
                "changed_with_order_or_split": int(
                    (again != stats.ranks).sum() + (stats.ranks != __import__("torch").cat(split)).sum()
                ),
            }
            print(json.dumps(row), flush=True)
            result["rows"].append(row)
    Path("benchmarks/results").mkdir(parents=True, exist_ok=True)
    Path("benchmarks/results/sampled_negatives.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
