"""Recall@10 of the FAISS indexes against exact search on Multi30k train (29,000 English descriptions,
all-MiniLM-L6-v2), queried with 1,000 of the German descriptions, across the search-time settings.

    flock /tmp/grape_heavy.lock python benchmarks/index_recall.py

Writes benchmarks/results/index_recall.json. The corpus embeddings come from the scorer's cache when present.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main():
    from grape_hf import RankScorer, load_retriever
    from grape_hf.data import load_multi30k
    from grape_hf.models import cache_home
    from grape_hf.retrieval.index import CorpusIndex

    data = load_multi30k("../shared/data/multi30k", split="train", task="task2")
    retriever = load_retriever("sentence-transformers:all-MiniLM-L6-v2", device="cpu")
    cache = os.environ.get("GRAPE_INDEX_CACHE", str(cache_home() / "corpus_embeddings"))
    scorer = RankScorer(retriever, data.corpus, cache_dir=cache)
    queries = scorer.embed_queries(list(data.queries["query"])[:1000])
    start = time.perf_counter()
    _, exact = scorer.search(queries, k=10)
    result = {
        "command": "python benchmarks/index_recall.py",
        "corpus": len(scorer),
        "queries": len(queries),
        "exact_search_s": time.perf_counter() - start,
        "rows": [],
    }
    for kind, knob, values in (("hnsw", "ef_search", (64, 128, 256, 512)), ("ivf", "nprobe", (16, 32, 85, 170))):
        start = time.perf_counter()
        index = CorpusIndex.build(scorer.corpus_embeddings, scorer.identity, kind=kind)
        build = time.perf_counter() - start
        for value in values:
            if kind == "hnsw":
                index.index.hnsw.efSearch = value
            else:
                index.index.nprobe = value
            start = time.perf_counter()
            recall = index.recall_at_k(queries, exact, k=10)
            row = {
                "kind": kind,
                knob: value,
                "recall@10": recall,
                "search_s": time.perf_counter() - start,
                "build_s": build,
                **index.info,
            }
            print(json.dumps(row), flush=True)
            result["rows"].append(row)
    Path("benchmarks/results/index_recall.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
