"""Paired comparison of Multi30k rewriters on the same val queries: per-query hit@10, and a bootstrap interval.

    python benchmarks/multi30k_paired.py outputs/multi30k_rank_supervision/grpo-rank-shaped \\
        outputs/multi30k_rank_supervision/distill outputs/multi30k_rank_supervision/sft

Rewrites all 1,014 task2 val queries greedily with each rewriter folder (as multi30k_rank_supervision.py evaluates
them), then compares the first against each of the others: the R@10 difference, the queries only one of the two
gets into the top 10, and a 95 % paired bootstrap interval (2,000 resamples each, one generator seeded 0).
"""

from __future__ import annotations

import argparse
import random

from multi30k_rank_supervision import MULTI30K, RETRIEVER, fast_rewriter  # same queries, retriever and loading


def main() -> None:
    from grape_hf import RankScorer, load_retriever
    from grape_hf.data import load_multi30k
    from grape_hf.models import cache_home

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rewriters", nargs="+", help="Rewriter folders; the first is compared with each other one.")
    args = parser.parse_args()
    val = load_multi30k(MULTI30K, split="validation", task="task2", seed=0)
    retriever = load_retriever(RETRIEVER)
    scorer = RankScorer(retriever, val.corpus, cache_dir=cache_home() / "corpus_embeddings")
    queries, targets = list(val.queries["query"]), list(val.queries["target_id"])
    hits = {}
    for folder in args.rewriters:
        texts = [r[0] for r in fast_rewriter(folder).rewrite(queries, batch_size=32)]
        hits[folder] = [rank <= 10 for rank in scorer.ranks(texts, targets).tolist()]
        print(f"{folder}: R@10 {sum(hits[folder]) / len(queries):.4f}", flush=True)
    first, rng = args.rewriters[0], random.Random(0)
    for other in args.rewriters[1:]:
        diffs = [int(a) - int(b) for a, b in zip(hits[first], hits[other])]
        boots = sorted(sum(diffs[rng.randrange(len(diffs))] for _ in diffs) / len(diffs) for _ in range(2000))
        print(
            f"{first} vs {other}: R@10 {sum(diffs) / len(diffs):+.4f}, only the first {diffs.count(1)}, only the "
            f"other {diffs.count(-1)}, 95% interval [{boots[50]:+.4f}, {boots[1949]:+.4f}]"
        )


if __name__ == "__main__":
    main()
