"""The reward's cost inside a GRPO step at 100k corpus items: one `GRAPERewardFunction` call (embed the completions
with all-MiniLM-L6-v2, rank each target exactly among 100k items) for one step's completions.

    flock /tmp/grape_heavy.lock python benchmarks/reward_share.py --step_time 6.1

The corpus embeddings are random unit vectors (the ranking cost does not depend on their content); the completions
are real Multi30k English descriptions. `--step_time` is a GRPO step measured on the same machine (see RESULTS.md).
Writes benchmarks/results/reward_share.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", type=int, default=100_000)
    parser.add_argument("--completions", type=int, nargs="+", default=[8, 16, 64])
    parser.add_argument("--step_time", type=float, default=None, help="Measured GRPO step time (s) to compare.")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import torch

    from grape_hf import GRAPERewardFunction, RankScorer, load_retriever
    from grape_hf.data import load_multi30k

    retriever = load_retriever("sentence-transformers:all-MiniLM-L6-v2", device="cpu")
    generator = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(args.corpus, retriever.embedding_dim, generator=generator), dim=-1)
    scorer = RankScorer.from_embeddings(retriever, emb)
    reward = GRAPERewardFunction(scorer, reward="rank")
    texts = list(load_multi30k("../shared/data/multi30k", split="validation", max_images=200).corpus)
    result = {
        "command": "python benchmarks/reward_share.py " + (f"--step_time {args.step_time}" if args.step_time else ""),
        "corpus": args.corpus,
        "rows": [],
    }
    for count in args.completions:
        completions = texts[:count]
        targets = [int(t) for t in torch.randint(0, args.corpus, (count,), generator=generator)]
        reward(completions=completions, target_id=targets)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            reward(completions=completions, target_id=targets)
            times.append(time.perf_counter() - start)
        row = {"completions": count, "reward_call_s": statistics.median(times)}
        if args.step_time:
            row["share_of_step"] = row["reward_call_s"] / args.step_time
        print(json.dumps(row), flush=True)
        result["rows"].append(row)
    if args.step_time:
        result["step_time_s"] = args.step_time
    Path("benchmarks/results").mkdir(parents=True, exist_ok=True)
    Path("benchmarks/results/reward_share.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
