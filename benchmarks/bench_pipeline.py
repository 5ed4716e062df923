"""Throughput of `pipeline("grape-rewrite")` on CPU: batched generation vs one query at a time.

    python benchmarks/bench_pipeline.py

SmolLM2-135M-Instruct (offline: the de-quantized local copy from `grape_hf.models.resolve_model_path`) rewrites the
first 32 German captions of Multi30k's validation split with the multilingual prompt, greedy, 32 new tokens. One at a
time is a pipeline call per query; batched is one call with `batch_size` queries generated together (left padding).
Each setting runs `--repeats` times after a warm-up call and the best time counts. `prefill` times the prompt
forward pass alone (all prompts in one padded batch, and one by one), the part of generation batching cannot speed up
when a single thread is compute-bound. Writes `benchmarks/results/pipeline_throughput.json`;
`identical_to_one_at_a_time` counts the queries whose batched greedy rewrite equals the unbatched one (padding may
shift float rounding, and with it a near-tie argmax). Defaults: `--dtype auto` (bf16 where the CPU has AMX or
AVX-512-BF16, else fp32; grape_hf.rewriting.devices) and as many torch threads as cores this process may use, for an
idle machine; under contention use `--threads 1` (OpenMP threads that wait on each other were ten times slower).
`load_seconds` is the pipeline's load (the de-quantized copy already cached; a first run ever adds its
de-quantization).

Results go to `benchmarks/results/pipeline_throughput_cpus.json` under this CPU's name, one entry per CPU kind
measured (`pipeline_throughput.json` is the 2026-11-29 run, bf16 on that session's CPU).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from transformers import pipeline

import grape_hf  # noqa: F401 - registers "grape-rewrite"
from grape_hf.models import SMOLLM2_ID, resolve_model_path
from grape_hf.rewriting.devices import cpu_description, dtype_name, native_bf16, resolve_dtype

RESULTS = Path(__file__).parent / "results" / "pipeline_throughput_cpus.json"
QUERIES = Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k" / "task1" / "val.de.gz"


def timed(fn) -> tuple[float, list]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


@torch.no_grad()
def measure_prefill(rewriter, queries: list[str]) -> dict:
    tokenizer, model = rewriter.tokenizer, rewriter.model
    prompts = [rewriter.preprocess({"query": q, "reference": None}, rewriter.template())["prompt"] for q in queries]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    lengths = batch["attention_mask"].sum(1).float()
    batched, _ = timed(lambda: model(**batch))
    single, _ = timed(lambda: [model(**tokenizer(p, return_tensors="pt", add_special_tokens=False)) for p in prompts])
    return {
        "prompt_tokens_mean": round(lengths.mean().item(), 1),
        "prompt_tokens_max": int(lengths.max().item()),
        "batched_seconds": round(batched, 3),
        "one_at_a_time_seconds": round(single, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-queries", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="torch threads (default: the usable cores; 1 on a machine shared with other jobs).",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "bfloat16", "float32"],
        help="Weights of the rewriter: 'auto' is bf16 where the CPU runs it natively (AMX, AVX-512-BF16), else fp32.",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_average = [round(x, 2) for x in os.getloadavg()]

    with gzip.open(QUERIES, "rt", encoding="utf-8") as f:
        queries = [line.strip() for _, line in zip(range(args.num_queries), f)]
    dtype = resolve_dtype(args.dtype, "cpu")
    load_seconds, rewriter = timed(
        lambda: pipeline("grape-rewrite", model=resolve_model_path(SMOLLM2_ID), device="cpu", dtype=dtype)
    )
    settings = {"max_new_tokens": args.max_new_tokens, "do_sample": False}
    rewriter(queries[:2], batch_size=2, **settings)  # warm-up

    def one_at_a_time():
        return [rewriter(q, **settings) for q in queries]

    runs = {}
    single_time, single = min((timed(one_at_a_time) for _ in range(args.repeats)), key=lambda r: r[0])
    runs["one_at_a_time"] = {
        "seconds": round(single_time, 3),
        "rewrites_per_second": round(len(queries) / single_time, 2),
    }
    for batch_size in args.batch_sizes:
        seconds, batched = min(
            (timed(lambda b=batch_size: rewriter(queries, batch_size=b, **settings)) for _ in range(args.repeats)),
            key=lambda r: r[0],
        )
        runs[f"batched_{batch_size}"] = {
            "batch_size": batch_size,
            "seconds": round(seconds, 3),
            "rewrites_per_second": round(len(queries) / seconds, 2),
            "speedup_vs_one_at_a_time": round(single_time / seconds, 2),
            "identical_to_one_at_a_time": sum(b["rewrite"] == s["rewrite"] for b, s in zip(batched, single)),
        }
        print(f"batch_size {batch_size}: {seconds:.1f} s", file=sys.stderr, flush=True)
    prefill = measure_prefill(rewriter, queries)
    print(f"prefill: {prefill}", file=sys.stderr, flush=True)
    result = {
        "_meta": {
            "model": SMOLLM2_ID,
            "model_path": resolve_model_path(SMOLLM2_ID),
            "queries": f"Multi30k task1 val.de, first {len(queries)} lines",
            "num_queries": len(queries),
            "max_new_tokens": args.max_new_tokens,
            "decoding": "greedy",
            "dtype": args.dtype,
            "resolved_dtype": dtype_name(dtype),
            "device": "cpu",
            "cpu": cpu_description(),
            "native_bf16": native_bf16("cpu"),
            "date": time.strftime("%Y-%m-%d"),
            "load_seconds": round(load_seconds, 1),
            "torch_threads": torch.get_num_threads(),
            "load_average_at_start": load_average,
            "repeats": args.repeats,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "command": "python benchmarks/bench_pipeline.py " + " ".join(sys.argv[1:]),
        },
        **runs,
        "prefill": prefill,
        "examples": [{"query": s["query"], "rewrite": s["rewrite"]} for s in single[:3]],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    every = json.loads(args.output.read_text()) if args.output.is_file() else {}
    every[cpu_description()] = result
    args.output.write_text(json.dumps(every, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
