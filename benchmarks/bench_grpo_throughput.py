"""GRPO throughput on this CPU: the Multi30k recipe in fp32, bf16 and `auto`, and before the fast path, in one run.

"auto" is `recipes/SmolLM2-135M-Instruct/grpo/config_multi30k_de.yaml` as it is (`dtype: auto`, bf16 left unset,
`generation_dtype: auto`: bf16 where the CPU has AMX or AVX-512-BF16, else fp32; grape_hf.rewriting.devices); "fp32"
and "bf16" are the same recipe with the base weights, autocast and the merged sampling copy forced to one precision;
"before" is the recipe as it was at commit d267acd (then in `.../grape/`;
`benchmarks/configs/grpo_throughput_before.yaml`, bf16, no fast path). All run through the recipe's own
`grape_hf.training.grpo.main` with `--use_cpu true`, the same model, LoRA, data, seed and completion length, for the
same number of steps, one after the other (never two heavy jobs at once on 2 cores), with torch using every core this
process may run on. Completions per second is the completions the optimizer consumed (batch x steps) over the training
wall time; the per-step reward curves show whether a variant changes what is learned.

    python benchmarks/bench_grpo_throughput.py                          # fp32, bf16, auto: 8 steps each
    python benchmarks/bench_grpo_throughput.py --variants fp32 auto before --steps 32

Results go to benchmarks/results/grpo_throughput_dtypes.json under this CPU's name (one entry per CPU kind
measured; the 2026-11-29 AMX Xeon before/after run is benchmarks/results/grpo_throughput.json).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
MULTI30K = Path(os.environ.get("GRAPE_MULTI30K", REPO.parent / "shared" / "data" / "multi30k"))
RECIPE = REPO / "recipes" / "SmolLM2-135M-Instruct" / "grpo" / "config_multi30k_de.yaml"
VARIANTS = {  # name -> (config, overrides)
    "auto": (RECIPE, []),
    "fp32": (RECIPE, ["--dtype", "float32", "--bf16", "false", "--generation_dtype", "float32"]),
    "bf16": (RECIPE, ["--dtype", "bfloat16", "--bf16", "true", "--generation_dtype", "bfloat16"]),
    "before": (REPO / "benchmarks" / "configs" / "grpo_throughput_before.yaml", []),
}
SETTINGS = (
    "per_device_train_batch_size",
    "num_generations",
    "steps_per_generation",
    "generation_batch_size",
    "max_completion_length",
    "bf16",
    "gradient_checkpointing",
    "merged_generation",
    "generation_dtype",
    "learning_rate",
    "seed",
    "shared_prompt_forward",
    "old_logps_from_sampler",
    "group_batches",
    "contiguous_lm_head_inputs",
    "pack_completions",
)


def machine() -> dict:
    """The CPU this run measured: model name, torch's kernel level, native bf16, and the threads torch uses."""
    import torch

    from grape_hf.rewriting.devices import cpu_description, native_bf16

    return {
        "cpu": cpu_description(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native_bf16("cpu"),
        "torch_threads": torch.get_num_threads(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
    }


def run(name: str, steps: int, output_dir: Path) -> dict:
    import torch
    from trl import ModelConfig, TrlParser

    from grape_hf import GRAPEScriptArguments
    from grape_hf.rewriting.devices import dtype_name
    from grape_hf.training.configs import GRAPEConfig
    from grape_hf.training.grpo import main

    config, overrides = VARIANTS[name]
    argv = [
        "--config",
        str(config),
        *overrides,
        "--use_cpu",
        "true",
        "--dataset_name",
        str(MULTI30K),
        "--max_steps",
        str(steps),
        "--evaluate_before_after",
        "false",
        "--output_dir",
        str(output_dir / name),
        "--save_strategy",
        "no",
        "--logging_steps",
        "1",
        "--report_to",
        "none",
        "--lr_scheduler_type",
        "constant",
        "--warmup_steps",
        "0",
    ]
    script_args, training_args, model_args = TrlParser(
        (GRAPEScriptArguments, GRAPEConfig, ModelConfig)
    ).parse_args_and_config(args=argv, fail_with_unknown_args=True)
    start = time.time()
    main(script_args, training_args, model_args)
    wall = time.time() - start
    meta = json.loads((output_dir / name / "grape_rewriter.json").read_text())
    train_seconds = meta["training"]["train_seconds"]
    completions = training_args.per_device_train_batch_size * steps
    curves = json.loads((output_dir / name / "curves.json").read_text())["train"]
    result = {
        "completions_per_second": round(completions / train_seconds, 3),
        "seconds_per_step": round(train_seconds / steps, 2),
        "train_seconds": train_seconds,
        "wall_seconds_with_setup": round(wall, 1),
        "steps": steps,
        "completions": completions,
        "dtype": model_args.dtype,
        "resolved_dtype": dtype_name(model_args.dtype, "cpu"),
        "resolved_generation_dtype": dtype_name(getattr(training_args, "generation_dtype", None), "cpu"),
        "torch_threads": torch.get_num_threads(),
        **{k: getattr(training_args, k, None) for k in SETTINGS},
        "config": str(config.relative_to(REPO)),
        "overrides": overrides,
    }
    return result, {k: curves.get(k) for k in ("step", "completions", "reward", "mean_rank", "nontarget_similarity")}


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, c in curves.items():
        ax.plot(c["completions"], c["reward"], marker="o", ms=3, label=name)
    ax.set_xlabel("completions seen")
    ax.set_ylabel("mean rank reward (training batch)")
    ax.set_title("Multi30k de→en GRPO: the recipe in each precision")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="Optimizer steps of each run (a multiple of 4).")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["fp32", "bf16", "auto"])
    parser.add_argument("--output_dir", default=str(REPO / "outputs" / "bench_grpo_throughput"))
    parser.add_argument("--no_save", action="store_true", help="Print the results only.")
    args = parser.parse_args()
    if args.steps % 4:
        parser.error(
            f"--steps must be a multiple of 4 (the fast path's steps per generation round), got {args.steps}."
        )
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    where = machine()
    print(f"machine: {json.dumps(where)}", flush=True)
    results, curves = {}, {}
    for name in args.variants:
        results[name], curves[name] = run(name, args.steps, Path(args.output_dir))
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    rates = {name: r["completions_per_second"] for name, r in results.items()}
    best = max((rates[n] for n in ("fp32", "bf16") if n in rates), default=None)
    summary = {"machine": where, "date": time.strftime("%Y-%m-%d"), "steps": args.steps, "variants": results}
    if best and "auto" in rates:
        summary["auto_over_best_of_fp32_bf16"] = round(rates["auto"] / best, 3)
        print(f"auto / best of fp32, bf16: {summary['auto_over_best_of_fp32_bf16']}", flush=True)
    summary["reward_curves"] = curves
    if args.no_save:
        return
    out = REPO / "benchmarks" / "results"
    path = out / "grpo_throughput_dtypes.json"
    every = json.loads(path.read_text()) if path.is_file() else {}
    every[where["cpu"]] = summary
    path.write_text(json.dumps(every, indent=2) + "\n")
    slug = "".join(c if c.isalnum() else "_" for c in where["cpu"]).strip("_").lower()
    plot(curves, out / f"grpo_throughput_dtypes_{slug}.png")


if __name__ == "__main__":
    main()
