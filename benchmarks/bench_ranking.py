"""Exact ranking at scale: `RankScorer.rank_stats` against a bare chunked matmul, sentence-transformers'
`semantic_search` and FAISS `IndexFlatIP`, on random unit embeddings (the cost does not depend on their content);
plus sampled negatives against exact ranking, and the reward call's time at 100k items.

    flock /tmp/grape_heavy.lock python benchmarks/bench_ranking.py --sizes 10000 100000 1000000

Writes benchmarks/results/ranking.json. Timings are medians of `--repeats` runs after one warm-up, in one process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
    # Every large block is mmapped and returned on free, so resident memory shows what is live (peak measurement).
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    os.execv(sys.executable, [sys.executable, *sys.argv])


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every millisecond (torch allocations included)."""

    def __enter__(self):
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.001)

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def mb(self) -> float:
        return (self.peak - self.base) / 2**20


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bare_matmul(q, emb, chunk):
    for start in range(0, emb.shape[0], chunk):
        scores = q @ emb[start : start + chunk].T
    return scores


def measure(n: int, args, retriever, generator) -> dict:
    from grape_hf import RankScorer

    emb = torch.nn.functional.normalize(torch.randn(n, args.dim, generator=generator), dim=-1)
    targets = torch.randint(0, n, (args.queries // args.generations,), generator=generator)
    targets = targets.repeat_interleave(args.generations)
    q = torch.nn.functional.normalize(
        emb[targets] + 0.08 * torch.randn(args.queries, args.dim, generator=generator), dim=-1
    )
    scorer = RankScorer.from_embeddings(retriever, emb)
    row = {"corpus": n}
    scorer.rank_stats(q, targets)  # warm-up: one-time library initialisation is not the ranking's memory
    bare_matmul(q, emb, scorer.chunk_size)
    with PeakRSS() as mem:
        scorer.rank_stats(q, targets)
    row["rank_stats_peak_mb"] = mem.mb
    row["documented_bound_mb"] = 9 * args.queries * min(scorer.chunk_size, n) / 2**20
    with PeakRSS() as mem:
        bare_matmul(q, emb, scorer.chunk_size)
    row["bare_matmul_peak_mb"] = mem.mb
    row["bare_matmul_s"] = timed(lambda: bare_matmul(q, emb, scorer.chunk_size), args.repeats)
    row["rank_stats_s"] = timed(lambda: scorer.rank_stats(q, targets), args.repeats)
    row["ratio_to_bare"] = row["rank_stats_s"] / row["bare_matmul_s"]
    # On a shared machine OpenMP threads wait on each other: each parallel op then costs a scheduler slice, which
    # penalises rank_stats' extra passes more than one matmul. The same comparison on one thread:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    row["bare_matmul_1thread_s"] = timed(lambda: bare_matmul(q, emb, scorer.chunk_size), args.repeats)
    row["rank_stats_1thread_s"] = timed(lambda: scorer.rank_stats(q, targets), args.repeats)
    row["ratio_to_bare_1thread"] = row["rank_stats_1thread_s"] / row["bare_matmul_1thread_s"]
    torch.set_num_threads(threads)
    row["search_top10_s"] = timed(lambda: scorer.search(q, k=10), args.repeats)
    if "st" not in args.skip:
        from sentence_transformers.util import semantic_search

        row["st_semantic_search_s"] = timed(lambda: semantic_search(q, emb, top_k=10), args.repeats)
    if "faiss" not in args.skip:
        import faiss

        start = time.perf_counter()
        index = faiss.IndexFlatIP(args.dim)
        index.add(emb.numpy())
        row["faiss_flat_build_s"] = time.perf_counter() - start
        qn = q.numpy()
        row["faiss_flat_search_s"] = timed(lambda: index.search(qn, 10), args.repeats)
        del index
    if "sampled" not in args.skip:
        fresh = RankScorer.from_embeddings(retriever, emb, sampled_negatives=args.sampled_negatives)
        start = time.perf_counter()
        fresh.rank_stats(q, targets)  # first pass: finds the hard negatives of the new targets
        row["sampled_first_pass_s"] = time.perf_counter() - start
        row["sampled_cached_s"] = timed(lambda: fresh.rank_stats(q, targets), args.repeats)
    return row


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--generations", type=int, default=8, help="Completions per prompt (distinct targets).")
    parser.add_argument("--sampled_negatives", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip", nargs="*", default=[], help="Methods to leave out: st, faiss, sampled.")
    parser.add_argument("--output", default="benchmarks/results/ranking.json")
    args = parser.parse_args()

    from grape_hf import load_retriever

    # A randomly initialised open_clip ViT-B-32 (no download): a real retriever that embeds to 512 dimensions.
    retriever = load_retriever("open_clip:ViT-B-32", device="cpu")
    assert retriever.embedding_dim == args.dim, retriever.embedding_dim
    results = {
        "command": "python benchmarks/bench_ranking.py "
        + " ".join(f"--sizes {' '.join(map(str, args.sizes))}".split()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads",
        "queries": args.queries,
        "dim": args.dim,
        "rows": [],
    }
    generator = torch.Generator().manual_seed(0)
    for n in args.sizes:
        row = measure(n, args, retriever, generator)
        print(json.dumps(row), flush=True)
        results["rows"].append(row)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
