"""Does rank supervision beat a supervised warm start? Multi30k German→English, stage by stage (issue 11).

Every stage is grape_hf's own, run with its recipe config and a few overrides: the warm start (`grape_hf.training.sft`,
LoRA SFT on task1's translations), rank-filtered self-distillation from it (`grape_hf.training.distill`), GRPO `rank`
with a KL term from the self-distillation policy (`grape_hf.training.grpo`, `--init_rewriter`), and GRPO `similarity`
with the same budget (the inflation comparison). Each is evaluated on the Multi30k task2 val queries (German
description 1 → the image's English description 1 among all 1,014), together with the German query as is, the zero-shot
SmolLM2 and the oracle best of 8 samples of the final policy (picked knowing the target: the room a policy could still
learn).

    python benchmarks/multi30k_rank_supervision.py --quick      # tiny sizes, minutes: checks the pipeline
    python benchmarks/multi30k_rank_supervision.py              # the sizes below, hours on this CPU
    python benchmarks/multi30k_rank_supervision.py --stages sft --variant long_r10 \
        --start_from grape_rank_long_shaped --distill_args --max_rank 10 --rounds 2 --seed 3
        # one more stage: --sft_args, --distill_args, --grpo_args
    python benchmarks/multi30k_rank_supervision.py --stages sft --variant dpo1 \
        --start_from self_distillation_long_r10 --preference_args --seed 6
        # rank preference optimisation (grape_hf.training.dpo)

Stages are cached in --output_dir (a finished stage's rewriter folder is reused; GRPO resumes from its last
checkpoint), so a run spread over several sessions picks up where it stopped. Writes
benchmarks/results/multi30k_de_rank_supervision{,_quick}.json and a plot of R@10 against completions seen.
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
RESULTS = REPO / "benchmarks" / "results"
RECIPES = REPO / "recipes" / "SmolLM2-135M-Instruct"
RETRIEVER = "sentence-transformers:all-MiniLM-L6-v2"
# Stage -> recipe overrides. FULL is sized for one ~80-minute session of this 2-core CPU: SFT ~5 s a step, a
# distillation round of 600 queries x 8 samples ~15 min, a GRPO step of 16 completions ~5 s (RESULTS.md).
FULL = {
    "sft": ["--max_steps", "250", "--max_train_samples", "4000"],
    "distill": ["--rounds", "1", "--max_train_samples", "600", "--num_train_epochs", "2"],
    "grpo": ["--max_steps", "200", "--beta", "0.04", "--learning_rate", "1e-4", "--curve_eval_steps", "20"],
    "preference": [],  # the recipe's own sizes: 1 round of 600 queries x 8 samples, 2 epochs of DPO
}
QUICK = {
    "sft": ["--max_steps", "4", "--max_train_samples", "64", "--per_device_train_batch_size", "8"],
    "distill": ["--rounds", "1", "--max_train_samples", "16", "--num_samples", "4", "--max_steps", "2"],
    "grpo": ["--max_steps", "4", "--curve_eval_steps", "2", "--curve_queries", "8", "--max_train_images", "200"],
    "preference": ["--max_train_samples", "16", "--num_samples", "4", "--max_steps", "2"],
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# The stages as this script names them -> grape_hf's stage (module grape_hf.training.<stage>, recipe folder).
STAGE_OF = {"sft": "sft", "distill": "distill", "grpo": "grpo", "preference": "dpo"}


def fast_rewriter(source: str):
    """A rewriter folder (or model) loaded for evaluation: bf16 (as every number here was measured), LoRA merged."""
    from grape_hf.training.stages import load_fast_rewriter

    return load_fast_rewriter(source, dtype="bfloat16", max_new_tokens=32)


def run_stage(stage: str, out: Path, extra: list[str]) -> Path:
    """Run one stage with its recipe config and the Multi30k data, unless its rewriter folder exists."""
    from grape_hf.training import stages

    config = RECIPES / STAGE_OF[stage] / "config_multi30k_de.yaml"
    overrides = ["--dataset_name", str(MULTI30K), "--use_cpu", "true", "--report_to", "none", *extra]
    if not stages.is_finished(out):
        log(f"{stage} -> {out}")
    return stages.run_stage(STAGE_OF[stage], config, out, overrides)


def main() -> None:

    from grape_hf import RankScorer, load_retriever
    from grape_hf.data import load_multi30k
    from grape_hf.evaluation import evaluate_retrieval, markdown_table, plot_curves
    from grape_hf.metrics import retrieval_metrics
    from grape_hf.models import SMOLLM2_ID, cache_home
    from grape_hf.rewriting.rewriter import shipped_rewriter_path
    from grape_hf.training.stages import best_of_n
    from grape_hf.training.stages import stage_minutes as minutes

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output_dir", default=None)
    parser.add_argument("--eval_queries", type=int, default=0, help="Val queries evaluated (0: all 1,014).")
    parser.add_argument("--stages", nargs="+", default=["sft", "distill", "rank", "similarity"])
    parser.add_argument(
        "--variant",
        default=None,
        help="Train the GRPO stages as a named variant (own folders grpo-<reward>-<variant>, methods "
        "grape_rank_<variant> / grpo_similarity_<variant>) with --grpo_args on top of the sizes.",
    )
    parser.add_argument(
        "--grpo_args",
        nargs=argparse.REMAINDER,
        default=[],
        help="Recipe overrides for the GRPO stages, e.g. --grpo_args --temperature 0.7 --max_steps 400 "
        "(must come last).",
    )
    parser.add_argument(
        "--sft_args",
        nargs=argparse.REMAINDER,
        default=[],
        help="Train a warm start variant (folder sft-<variant>, method warm_start_<variant>) with these "
        "recipe overrides, e.g. --sft_args --max_steps 430 (must come last; not with --grpo_args).",
    )
    parser.add_argument(
        "--distill_args",
        nargs=argparse.REMAINDER,
        default=[],
        help="Train a self-distillation variant (folder distill-<variant>, method "
        "self_distillation_<variant>) from --start_from (default: the warm start) with these "
        "recipe overrides, e.g. --distill_args --max_rank 10 --rounds 2 (must come last).",
    )
    parser.add_argument(
        "--preference_args",
        nargs=argparse.REMAINDER,
        default=None,
        help="Train a rank preference optimisation variant (grape_hf.training.dpo: DPO on pairs ordered by "
        "the ranking; folder dpo-<variant>, method rank_preference_<variant>) from --start_from "
        "with these recipe overrides, e.g. --preference_args --seed 6 (may be empty; must come "
        "last).",
    )
    parser.add_argument(
        "--start_from",
        default=None,
        metavar="METHOD",
        help="Start a --variant's GRPO stages or --distill_args rounds from METHOD's rewriter instead "
        "of the latest earlier stage (the warm start for --distill_args), e.g. grape_rank_shaped "
        "(a stage of this output_dir) to train on.",
    )
    parser.add_argument(
        "--oracle",
        default=None,
        metavar="METHOD",
        help="Also measure the best of 8 samples of METHOD's rewriter (picked knowing the target) as "
        "oracle_best_of_8_<METHOD>, e.g. --oracle self_distillation_long_r10.",
    )
    parser.add_argument(
        "--human",
        action="store_true",
        help="Also rank with the other annotators' English descriptions (2-5) of each val image as the "
        "query (english_description_<k>): what an independent human description reaches.",
    )
    parser.add_argument(
        "--ship",
        default=None,
        metavar="METHOD",
        help="After the stages, ship METHOD's rewriter (e.g. grape_rank or grape_rank_<variant>) as "
        "grape_hf's smollm2-135m-grape-multi30k-de, if it beats the one shipped now on the same "
        "queries. Regenerate the Space's examples after: python spaces/make_examples.py captions",
    )
    args = parser.parse_args()
    if args.grpo_args and not args.variant:
        parser.error("--grpo_args changes what the GRPO stages train: name the run with --variant.")
    if args.sft_args and (args.grpo_args or not args.variant):
        parser.error("--sft_args trains a named warm start variant: give --variant, and no --grpo_args.")
    if args.distill_args and not args.variant:
        parser.error("--distill_args trains a named self-distillation variant: give --variant.")
    if args.preference_args is not None and not (args.variant and args.start_from):
        parser.error(
            "--preference_args trains a named variant from an earlier stage: give --variant and --start_from."
        )
    if args.start_from and not args.variant:
        parser.error(
            f"--start_from {args.start_from} changes what the GRPO stages train: name the run with --variant."
        )
    sizes = QUICK if args.quick else FULL
    tag = "_quick" if args.quick else ""
    out = Path(args.output_dir or REPO / "outputs" / f"multi30k_rank_supervision{tag}")
    eval_queries = args.eval_queries or (48 if args.quick else None)

    val = load_multi30k(MULTI30K, split="validation", task="task2", max_queries=eval_queries, seed=0)
    scorer = RankScorer(load_retriever(RETRIEVER), val.corpus, cache_dir=cache_home() / "corpus_embeddings")
    queries, targets = list(val.queries["query"]), list(val.queries["target_id"])
    results_file = RESULTS / f"multi30k_de_rank_supervision{tag}.json"
    results = json.loads(results_file.read_text())["methods"] if results_file.is_file() else {}

    def evaluate(name: str, source: str | None, texts: list[str] | None = None, **info) -> None:
        if name in results:
            return
        t = time.time()
        if source is None:
            texts = texts or queries
        else:
            texts = [r[0] for r in fast_rewriter(source).rewrite(queries, batch_size=32)]
        results[name] = {**evaluate_retrieval(scorer, texts, targets), **info}
        log(f"{name}: {results[name]} ({time.time() - t:.0f} s)")
        save()

    def save() -> None:
        results_file.write_text(json.dumps({"num_queries": len(queries), "methods": results}, indent=2) + "\n")

    evaluate("german_as_is", None)
    if args.human:  # the ceiling of a perfect description-writer: another person's English description of the image
        for index in range(2, 6):
            other = load_multi30k(
                MULTI30K,
                split="validation",
                task="task2",
                query_lang="en",
                query_index=index,
                max_queries=eval_queries,
                seed=0,
            )
            evaluate(f"english_description_{index}", None, texts=list(other.queries["query"]))
    evaluate("zero_shot", SMOLLM2_ID)
    sft_dir = run_stage("sft", out / "sft", sizes["sft"])
    evaluate("warm_start", str(sft_dir), train_cpu_minutes=minutes(sft_dir))
    if args.sft_args:  # a warm start variant, e.g. one given as many minutes as the stages after the warm start
        folder = run_stage("sft", out / f"sft-{args.variant.replace('_', '-')}", [*sizes["sft"], *args.sft_args])
        meta = json.loads((folder / "grape_rewriter.json").read_text())["training"]
        evaluate(
            f"warm_start_{args.variant}",
            str(folder),
            train_cpu_minutes=minutes(folder),
            sft_args=args.sft_args,
            eval_loss=meta.get("eval_loss"),
        )
    if args.distill_args:  # e.g. rank-filtered rounds from a later stage, on queries not drawn before
        source = _method_folder(args.start_from, out) if args.start_from else sft_dir
        folder = run_stage(
            "distill",
            out / f"distill-{args.variant.replace('_', '-')}",
            ["--init_rewriter", str(source), *sizes["distill"], *args.distill_args],
        )
        evaluate(
            f"self_distillation_{args.variant}",
            str(folder),
            train_cpu_minutes=minutes(folder),
            started_from=args.start_from or "warm_start",
            distill_args=args.distill_args,
        )
    if args.preference_args is not None:  # DPO on the start's own rewrites, paired by the retriever's ranking
        folder = run_stage(
            "preference",
            out / f"dpo-{args.variant.replace('_', '-')}",
            [
                "--init_rewriter",
                str(_method_folder(args.start_from, out)),
                *sizes["preference"],
                *args.preference_args,
            ],
        )
        evaluate(
            f"rank_preference_{args.variant}",
            str(folder),
            train_cpu_minutes=minutes(folder),
            started_from=args.start_from,
            preference_args=args.preference_args,
        )
    start = sft_dir
    if "distill" in args.stages:
        distill_dir = run_stage("distill", out / "distill", ["--init_rewriter", str(sft_dir), *sizes["distill"]])
        evaluate(
            "self_distillation", str(distill_dir), train_cpu_minutes=minutes(distill_dir), started_from="warm_start"
        )
        start = distill_dir
    started_from = "self_distillation" if start != sft_dir else "warm_start"
    if args.start_from:
        start, started_from = _method_folder(args.start_from, out), args.start_from
    curves = {}

    def oracle_best_of_8(final: Path, name: str = "oracle_best_of_8") -> None:
        if name in results:
            return
        t = time.time()
        _, ranks = best_of_n(fast_rewriter(str(final)), scorer, queries, targets, n=8)
        results[name] = {**retrieval_metrics(ranks), "policy": final.name}
        log(f"{name}: {results[name]} ({time.time() - t:.0f} s)")
        save()

    suffix = f"_{args.variant}" if args.variant else ""
    for reward, name in (("rank", "grape_rank"), ("similarity", "grpo_similarity")):
        if reward not in args.stages:
            continue
        folder = run_stage(
            "grpo",
            out / f"grpo-{reward}{suffix.replace('_', '-')}",
            [
                "--init_rewriter",
                str(start),
                "--reward_funcs",
                reward,
                "--evaluate_before_after",
                "false",
                *sizes["grpo"],
                *args.grpo_args,
            ],
        )
        info = {"grpo_args": args.grpo_args} if args.grpo_args else {}
        evaluate(name + suffix, str(folder), train_cpu_minutes=minutes(folder), started_from=started_from, **info)
        curves[f"GRPO {reward}{suffix}"] = json.loads((folder / "curves.json").read_text())
        if reward == "rank" and not args.variant:  # the room left to the final rank-supervised policy
            oracle_best_of_8(folder)
    if "rank" not in args.stages:
        oracle_best_of_8(start)
    if args.oracle:  # the room left to a later policy: the best of its own 8 samples, picked knowing the target
        oracle_best_of_8(_method_folder(args.oracle, out), f"oracle_best_of_8_{args.oracle}")
    if args.ship:
        shipped = shipped_rewriter_path(SHIPPED)
        commit = _shipped_commit(shipped)
        earlier = results.get("previously_shipped")
        if earlier and earlier.get("commit") != commit:  # shipped since it was measured: keep it, measure the new one
            results[f"shipped_{earlier['commit']}"] = results.pop("previously_shipped")
        evaluate("previously_shipped", str(shipped), commit=commit)
        ship(args.ship, out, results, out / "shipped" if args.quick else shipped.parent, len(queries), len(val.corpus))
    log("\n" + markdown_table(results))
    if curves:
        plot_curves(
            curves,
            RESULTS / f"multi30k_de_rank_supervision{tag}{suffix}_curves.png",
            title="Multi30k de→en: GRPO from the best earlier stage",
        )


SHIPPED = "smollm2-135m-grape-multi30k-de"


# Method prefix -> (rewriter folder stem, the module that trains it); a variant appends _<variant> / -<variant>.
STAGES = {
    "warm_start": ("sft", "grape_hf.training.sft"),
    "self_distillation": ("distill", "grape_hf.training.distill"),
    "grape_rank": ("grpo-rank", "grape_hf.training.grpo"),
    "grpo_similarity": ("grpo-similarity", "grape_hf.training.grpo"),
    "rank_preference": ("dpo", "grape_hf.training.dpo"),
}


def _method_prefix(method: str) -> str:
    for prefix in STAGES:
        if method == prefix or method.startswith(prefix + "_"):
            return prefix
    raise SystemExit(f"{method}: not a method of this script; use one of {sorted(STAGES)} or <method>_<variant>.")


def _method_folder(method: str, out: Path) -> Path:
    """The rewriter folder of a method this script trains: grape_rank_<variant> -> out/grpo-rank-<variant>."""
    from grape_hf.training.stages import method_folder

    return method_folder(method, out, {prefix: stem for prefix, (stem, _) in STAGES.items()})


def _shipped_commit(folder: Path) -> str:
    """The commit that last changed the shipped rewriter's weights (what "previously_shipped" was)."""
    import subprocess

    weights = folder / "adapter" / "adapter_model.safetensors"
    run = subprocess.run(
        ["git", "log", "-1", "--format=%h", "--", str(weights)], cwd=REPO, capture_output=True, text=True
    )
    return run.stdout.strip() or "unknown"


def ship(method: str, out: Path, results: dict, dest_root: Path, num_queries: int, corpus_size: int) -> None:
    """Copy METHOD's rewriter folder into the package as SHIPPED, with every stage's numbers on its card, if it beats
    the rewriter shipped now (R@10 on the same queries)."""
    from grape_hf.metrics import METRICS
    from grape_hf.training.stages import ship_rewriter

    if method not in results or not method.startswith(("grape_rank", "self_distillation_", "rank_preference_")):
        raise SystemExit(
            f"--ship {method!r}: ship a GRPO rank stage, a self-distillation or a rank preference variant that was "
            f"evaluated ({sorted(results)})."
        )
    new, old = results[method]["R@10"], results["previously_shipped"]["R@10"]
    if new <= old:
        log(f"not shipped: {method} R@10 {new} does not beat the shipped rewriter's {old}")
        return
    chain = [method]  # the stages that led to METHOD, latest first
    while "started_from" in results[chain[-1]]:
        chain.append(results[chain[-1]]["started_from"])
    training = dict(
        stages=[f"{m} ({STAGES[_method_prefix(m)][1]})" for m in reversed(chain)],
        command=" && ".join(
            [
                _stage_command(m, results[m])
                for m in reversed(chain)
                if m.startswith(("grape_rank", "warm_start_", "self_distillation_", "rank_preference_"))
            ]
            + [f"python benchmarks/multi30k_rank_supervision.py --stages sft distill --ship {method}"]
        ),
        stage_sizes=FULL,
        results="benchmarks/results/multi30k_de_rank_supervision.json",
    )
    evaluation = {
        "before": {m: results["german_as_is"][m] for m in METRICS},
        "zero_shot": {m: results["zero_shot"][m] for m in METRICS},
        **{stage: {m: results[stage][m] for m in METRICS} for stage in reversed(chain[1:])},
        "after": {m: results[method][m] for m in METRICS},
        "previously_shipped": {m: results["previously_shipped"][m] for m in METRICS},
        "split": "validation",
        "dataset": "Multi30k task2 val",
        "num_queries": num_queries,
        "corpus_size": corpus_size,
    }
    dest = dest_root / SHIPPED
    ship_rewriter(
        _method_folder(method, out),
        dest,
        evaluation,
        training,
        dataset="Multi30k task2 (German description 1 -> English description 1 of the same image)",
        corpus="Multi30k task2 train, English description 1 of 5,000 images",
    )
    log(f"shipped {method} ({new} against {old}) to {dest}")


def _stage_command(method: str, info: dict) -> str:
    """The command line that trained the GRPO stage or the warm-start or self-distillation variant METHOD (as recorded
    in its results entry)."""
    if method.startswith("self_distillation_"):
        start = info.get("started_from", "warm_start")
        return (
            f"python benchmarks/multi30k_rank_supervision.py --stages sft --variant "
            f"{method.removeprefix('self_distillation_')}"
            + ("" if start == "warm_start" else f" --start_from {start}")
            + " --distill_args "
            + " ".join(info["distill_args"])
        )
    if method.startswith("rank_preference_"):
        return (
            f"python benchmarks/multi30k_rank_supervision.py --stages sft --variant "
            f"{method.removeprefix('rank_preference_')} --start_from {info['started_from']} --preference_args "
            + " ".join(info["preference_args"])
        ).rstrip()
    if method.startswith("warm_start_"):
        variant = method.removeprefix("warm_start_")
        return (
            f"python benchmarks/multi30k_rank_supervision.py --stages sft --variant {variant} --sft_args "
            + " ".join(info["sft_args"])
        )
    command = "python benchmarks/multi30k_rank_supervision.py --stages sft distill rank"
    variant = method.removeprefix("grape_rank").removeprefix("_")
    if not variant:
        return command
    command += f" --variant {variant}"
    if info.get("started_from", "self_distillation") not in ("self_distillation", "warm_start"):
        command += f" --start_from {info['started_from']}"
    if info.get("grpo_args"):
        command += " --grpo_args " + " ".join(info["grpo_args"])  # REMAINDER: last on the line
    return command


if __name__ == "__main__":
    main()
