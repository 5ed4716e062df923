"""GRPO throughput on this CPU: the Multi30k recipe before and after the fast path, in one run.

"before" is the GRPO recipe's `config_multi30k_de.yaml` as it was at commit d267acd (then in
`recipes/SmolLM2-135M-Instruct/grape/`, now `.../grpo/`; a copy lives in
`benchmarks/configs/grpo_throughput_before.yaml`); "after" is the recipe's config now (bf16 base, merged bf16
sampling, 4 optimizer steps a generation round, no gradient checkpointing). Both run through the recipe's own
`grape_hf.training.grpo.main` with `--use_cpu true`, the same model, LoRA, data, seed and completion length, for the
same number of steps, one after the other (never two heavy jobs at once on 2 cores). Completions per second is the
completions the optimizer consumed (batch x steps) over the training wall time; the per-step reward curves show
whether the fast path changes what is learned.

    python benchmarks/bench_grpo_throughput.py               # 32 steps each (~10 min here)
    python benchmarks/bench_grpo_throughput.py --steps 8     # a quick look

Writes benchmarks/results/grpo_throughput.json and grpo_throughput.png.
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
CONFIGS = {
    "before": REPO / "benchmarks" / "configs" / "grpo_throughput_before.yaml",
    "after": REPO / "recipes" / "SmolLM2-135M-Instruct" / "grpo" / "config_multi30k_de.yaml",
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


def run(name: str, steps: int, output_dir: Path) -> dict:
    import torch
    from trl import ModelConfig, TrlParser

    from grape_hf import GRAPEScriptArguments
    from grape_hf.training.grpo import main
    from grape_hf.training.trainer import GRAPEConfig

    argv = [
        "--config",
        str(CONFIGS[name]),
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
        "torch_threads": torch.get_num_threads(),
        **{k: getattr(training_args, k, None) for k in SETTINGS},
        "config": str(CONFIGS[name].relative_to(REPO)),
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
    ax.set_title("Multi30k de→en GRPO: before vs after the fast path")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=32, help="Optimizer steps of each run (a multiple of 4).")
    parser.add_argument("--output_dir", default=str(REPO / "outputs" / "bench_grpo_throughput"))
    parser.add_argument("--only", choices=list(CONFIGS), default=None, help="Run one side only (no JSON written).")
    args = parser.parse_args()
    if args.steps % 4:
        parser.error(
            f"--steps must be a multiple of 4 (the fast path's steps per generation round), got {args.steps}."
        )
    results, curves = {}, {}
    for name in [args.only] if args.only else list(CONFIGS):
        results[name], curves[name] = run(name, args.steps, Path(args.output_dir))
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    if args.only:
        return
    out = REPO / "benchmarks" / "results"
    results["speedup"] = round(
        results["after"]["completions_per_second"] / results["before"]["completions_per_second"], 2
    )
    results["reward_curves"] = curves
    (out / "grpo_throughput.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(curves, out / "grpo_throughput.png")
    print(f"speedup {results['speedup']}x", flush=True)


if __name__ == "__main__":
    main()
