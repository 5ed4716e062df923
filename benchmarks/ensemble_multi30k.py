"""Does fusing sampled rewrites beat a single rewrite? (issue 5, rewrite-then-retrieve)

The shipped GRAPE rewriter (`smollm2-135m-grape-multi30k-de`) on Multi30k task2 val: the greedy rewrite alone vs
reciprocal-rank fusion (`GRAPERetriever(..., ensemble=N)`) of N sampled rewrites and the original German query.
Same 200 queries and 1,014-description corpus as the Multi30k runs in RESULTS.md.

    python benchmarks/ensemble_multi30k.py [--num_queries 200] [--ensemble 4]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from grape_hf import GRAPERetriever, RankScorer, load_retriever  # noqa: E402
from grape_hf.data import load_multi30k  # noqa: E402
from grape_hf.evaluation import markdown_table, retrieval_metrics  # noqa: E402
from grape_hf.models import cache_home  # noqa: E402
from grape_hf.rewriting.rewriter import QueryRewriter, shipped_rewriter_path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MULTI30K = Path(os.environ.get("GRAPE_MULTI30K", REPO.parent / "shared" / "data" / "multi30k"))


def ranks_from_lists(id_lists: list[list[int]], targets: list[int], miss: int) -> list[int]:
    """1-based rank of the target in each top-k list (`miss` when it is not there)."""
    return [ids.index(t) + 1 if t in ids else miss for ids, t in zip(id_lists, targets)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_queries", type=int, default=200)
    parser.add_argument("--ensemble", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    start = time.time()
    val = load_multi30k(MULTI30K, split="validation", task="task2", max_queries=args.num_queries, seed=0)
    scorer = RankScorer(
        load_retriever("sentence-transformers:all-MiniLM-L6-v2"),
        val.corpus,
        cache_dir=cache_home() / "corpus_embeddings",
    )
    rewriter = QueryRewriter.from_pretrained(str(shipped_rewriter_path()), dtype=torch.bfloat16, max_new_tokens=32)
    search = GRAPERetriever(rewriter, scorer)
    queries, targets = list(val.queries["query"]), list(val.queries["target_id"])
    k = 10
    greedy = search.search(queries, k=k, batch_size=32)
    sampled = search.search(queries, k=k, ensemble=args.ensemble, batch_size=32)
    miss = k + 1  # outside the top-k: counts as a miss for R@k (MRR@10 and R@k are exact; mean rank is not)
    results = {}
    for name, lists in {
        "German query as is": [r["original"]["ids"] for r in greedy],
        "greedy rewrite": [r["rewritten"]["ids"] for r in greedy],
        "one sampled rewrite": [r["rewritten"]["ids"] for r in sampled],
        f"RRF of {args.ensemble} sampled rewrites + original": [r["ensemble"]["ids"] for r in sampled],
    }.items():
        ranks = ranks_from_lists(lists, targets, miss)
        metrics = retrieval_metrics(ranks)
        # 1/(k+1) for misses would inflate MRR: recompute MRR@10 with misses at 0.
        metrics["MRR"] = round(sum(1 / r for r in ranks if r <= k) / len(ranks), 4)
        results[name] = metrics
    table = markdown_table(results)
    print(table)
    out = REPO / "benchmarks" / "results" / "ensemble_multi30k.json"
    meta = {
        "num_queries": len(queries),
        "corpus": len(scorer),
        "ensemble": args.ensemble,
        "k": k,
        "seconds": round(time.time() - start, 1),
        "command": "python benchmarks/ensemble_multi30k.py",
        "note": "MRR is MRR@10 (top-10 lists); nDCG@10 likewise.",
    }
    out.write_text(json.dumps({**results, "_meta": meta}, indent=2) + "\n")
    print(f"wrote {out} in {meta['seconds']} s")


if __name__ == "__main__":
    main()
