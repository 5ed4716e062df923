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
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
MULTI30K = Path(os.environ.get("GRAPE_MULTI30K", REPO.parent / "shared" / "data" / "multi30k"))
RESULTS = REPO / "benchmarks" / "results"
RECIPES = REPO / "recipes" / "SmolLM2-135M-Instruct"  # <stage>/config_multi30k_de.yaml
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


def fast_rewriter(source: str):
    """A rewriter folder (or model) loaded for evaluation: bf16 (as every number here was measured), LoRA merged."""
    from grape_hf.training.stages import load_fast_rewriter

    return load_fast_rewriter(source, dtype="bfloat16", max_new_tokens=32)


# The trained methods: stage and folder in the stage cache (a variant <method>_<name>: <folder>-<name>).
TRAINED = {
    "warm_start": ("sft", "sft"),
    "self_distillation": ("distill", "distill"),
    "grape_rank": ("grpo", "grpo-rank"),
    "grpo_similarity": ("grpo", "grpo-similarity"),
    "rank_preference": ("dpo", "dpo"),
}
SHIPPED = "smollm2-135m-grape-multi30k-de"


def main() -> None:

    from grape_hf import RankScorer, load_retriever
    from grape_hf.data import load_multi30k
    from grape_hf.evaluation import evaluate_retrieval, markdown_table, plot_curves
    from grape_hf.metrics import retrieval_metrics
    from grape_hf.models import SMOLLM2_ID, cache_home
    from grape_hf.rewriting.folder import RewriterConfig
    from grape_hf.rewriting.rewriter import shipped_rewriter_path
    from grape_hf.training.chain import StageChain
    from grape_hf.training.stages import best_of_n

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

    def save() -> None:
        results_file.write_text(json.dumps({"num_queries": len(queries), "methods": results}, indent=2) + "\n")

    def measure(name: str, source: str) -> dict:
        return evaluate_retrieval(
            scorer, [r[0] for r in fast_rewriter(source).rewrite(queries, batch_size=32)], targets
        )

    chain = StageChain(
        out,
        TRAINED,
        {stage: RECIPES / stage / "config_multi30k_de.yaml" for stage in ("sft", "distill", "grpo", "dpo")},
        measure,
        rows=results,
        overrides=["--dataset_name", str(MULTI30K), "--use_cpu", "true", "--report_to", "none"],
        save=save,
        command="python benchmarks/multi30k_rank_supervision.py " + " ".join(sys.argv[1:]),
        log=log,
    )
    texts = {"german_as_is": queries}
    if args.human:  # the ceiling of a perfect description-writer: another person's English description of the image
        for index in range(2, 6):
            other = load_multi30k(
                MULTI30K, "validation", "task2", "en", query_index=index, max_queries=eval_queries, seed=0
            )
            texts[f"english_description_{index}"] = list(other.queries["query"])
    for name in [n for n in texts if n not in results]:
        results[name] = evaluate_retrieval(scorer, texts[name], targets)
        save()
    chain.measure_row("zero_shot", SMOLLM2_ID)
    chain.train("warm_start", args=sizes["sft"])
    variant = args.variant
    if args.sft_args:  # a warm start variant, e.g. one given as many minutes as the stages after the warm start
        folder = chain.train(f"warm_start_{variant}", args=[*sizes["sft"], *args.sft_args])
        results[f"warm_start_{variant}"]["eval_loss"] = RewriterConfig.load(folder).training.get("eval_loss")
    if args.distill_args:  # e.g. rank-filtered rounds from a later stage, on queries not drawn before
        start = args.start_from or "warm_start"
        chain.train(f"self_distillation_{variant}", start=start, args=[*sizes["distill"], *args.distill_args])
    if args.preference_args is not None:  # DPO on the start's own rewrites, paired by the retriever's ranking
        extra = [*sizes["preference"], *args.preference_args]
        chain.train(f"rank_preference_{variant}", start=args.start_from, args=extra)
    start = "warm_start"
    if "distill" in args.stages:
        chain.train("self_distillation", start="warm_start", args=sizes["distill"])
        start = "self_distillation"
    start = args.start_from or start

    def oracle_best_of_8(policy: str, name: str = "oracle_best_of_8") -> None:
        if name not in results:
            _, ranks = best_of_n(fast_rewriter(str(chain.finished_folder(policy))), scorer, queries, targets, n=8)
            results[name] = {**retrieval_metrics(ranks), "policy": chain.folder(policy).name}
            log(f"{name}: {results[name]}")
            save()

    suffix = f"_{variant}" if variant else ""
    curves = {}
    for reward, name in (("rank", "grape_rank"), ("similarity", "grpo_similarity")):
        if reward in args.stages:
            flags = ["--reward_funcs", reward, "--evaluate_before_after", "false", *sizes["grpo"], *args.grpo_args]
            drops = ("oracle_best_of_8",) if reward == "rank" and not variant else ()
            folder = chain.train(name + suffix, start=start, args=flags, drops=drops)
            curves[f"GRPO {reward}{suffix}"] = json.loads((folder / "curves.json").read_text())
            if reward == "rank" and not variant:  # the room left to the final rank-supervised policy
                oracle_best_of_8("grape_rank")
    if "rank" not in args.stages and chain.is_trained(start):
        oracle_best_of_8(start)
    if args.oracle:  # the room left to a later policy: the best of its own 8 samples, picked knowing the target
        oracle_best_of_8(args.oracle, f"oracle_best_of_8_{args.oracle}")
    if args.ship:
        shipped = shipped_rewriter_path(SHIPPED)
        commit = shipped_commit(shipped)
        earlier = results.get("previously_shipped")
        if earlier and earlier.get("commit") != commit:  # shipped since it was measured: keep it, measure the new one
            results[f"shipped_{earlier['commit']}"] = results.pop("previously_shipped")
        chain.measure_row("previously_shipped", shipped, commit=commit)
        chain.ship(
            args.ship,
            (out / "shipped" if args.quick else shipped.parent) / SHIPPED,
            before="german_as_is",
            zero_shot="zero_shot",
            evaluation={
                "split": "validation",
                "dataset": "Multi30k task2 val",
                "num_queries": len(queries),
                "corpus_size": len(val.corpus),
            },
            training={"stage_sizes": FULL, "results": "benchmarks/results/multi30k_de_rank_supervision.json"},
            dataset="Multi30k task2 (German description 1 -> English description 1 of the same image)",
            corpus="Multi30k task2 train, English description 1 of 5,000 images",
        )
    log("\n" + markdown_table(results))
    if curves:
        plot_curves(
            curves,
            RESULTS / f"multi30k_de_rank_supervision{tag}{suffix}_curves.png",
            title="Multi30k de→en: GRPO from the best earlier stage",
        )


def shipped_commit(folder: Path) -> str:
    """The commit that last changed the shipped rewriter's weights (what "previously_shipped" was)."""
    import subprocess

    weights = folder / "adapter" / "adapter_model.safetensors"
    run = subprocess.run(
        ["git", "log", "-1", "--format=%h", "--", str(weights)], cwd=REPO, capture_output=True, text=True
    )
    return run.stdout.strip() or "unknown"


if __name__ == "__main__":
    main()
