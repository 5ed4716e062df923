"""GRAPE on real models and real data: Multi30k German→English (issue 3).

Retriever: all-MiniLM-L6-v2 (English-only). Corpus: one English description per image (task2 `val.1.en`, 1,014
images). Query: an independent German description of the same image (`val.1.de`). Rewriter: SmolLM2-135M-Instruct
with LoRA. Methods: the German query as is; SmolLM2 zero-shot; the best few-shot prompt (chosen on train); a
supervised warm start on task1's German→English translations; GRPO from that warm start with the `rank` (GRAPE),
`similarity` and `margin` rewards; another English description of the image (the ceiling).

    python benchmarks/multi30k_de.py --quick     # a few steps of everything (~10 min here)
    python benchmarks/multi30k_de.py             # the full run
    # the 240-step run in benchmarks/RESULTS.md (all 1,014 val queries; ~70 min here, with its sft/ linked in):
    python benchmarks/multi30k_de.py --output_dir outputs/m30k_long2 --tag _long --rewards rank --eval_queries 0 \\
        --curve_queries 200 --curve_every 40 --grpo_steps 240 --grpo_prompts 4 --grpo_generations 4 \\
        --num_iterations 2 --learning_rate 2e-4

Stages are cached under --output_dir, so an interrupted run resumes. Writes benchmarks/results/multi30k_de.json
(method -> metric -> value), plots, and benchmarks/results/multi30k_de.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from grape_hf import CLIPRankScorer, GRAPERewardFunction, load_retriever  # noqa: E402
from grape_hf.data import load_multi30k  # noqa: E402
from grape_hf.evaluation import evaluate_retrieval, markdown_table  # noqa: E402
from grape_hf.models import SMOLLM2_ID, cache_home, resolve_model_path  # noqa: E402
from grape_hf.prompts import PromptTemplate, get_prompt_template  # noqa: E402
from grape_hf.rewriter import QueryRewriter, RewriterConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MULTI30K = Path(os.environ.get("GRAPE_MULTI30K", REPO.parent / "shared" / "data" / "multi30k"))
RETRIEVER = "sentence-transformers:all-MiniLM-L6-v2"
SHIPPED = REPO / "grape_hf" / "assets" / "rewriters" / "smollm2-135m-grape-multi30k-de"


@dataclass
class Budget:
    eval_queries: int | None  # val queries evaluated (None: all 1,014); the corpus is always all 1,014
    curve_queries: int
    select_queries: int
    sft_steps: int
    sft_batch: int
    grpo_steps: int
    grpo_prompts: int
    grpo_generations: int
    curve_every: int
    train_images: int
    learning_rate: float = 1e-4
    num_iterations: int = 1  # GRPO's μ: optimizer passes over each generated batch
    steps_per_generation: int = 1  # optimizer steps each generation round is split into
    beta: float = 0.0  # KL coefficient; > 0 keeps the policy near the warm start (TRL copies it as the reference)


# Sized for ~75 minutes on this 2-core CPU, so the final numbers use a seeded subset of 200 val queries ranked against
# all 1,014 val descriptions: greedy generation of all 1,014 queries took 3–6 min per method on the idle machine
# (the 240-step run, 2026-11-28) and ~20 min under contention. `--eval_queries 0` evaluates all of them.
FULL = Budget(
    eval_queries=200,
    curve_queries=48,
    select_queries=60,
    sft_steps=80,
    sft_batch=16,
    grpo_steps=30,
    grpo_prompts=2,
    grpo_generations=4,
    curve_every=10,
    train_images=2000,
)
QUICK = Budget(
    eval_queries=60,
    curve_queries=24,
    select_queries=24,
    sft_steps=6,
    sft_batch=8,
    grpo_steps=4,
    grpo_prompts=2,
    grpo_generations=4,
    curve_every=2,
    train_images=200,
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def read(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [line.strip() for line in f]


def few_shot_candidates() -> dict[str, PromptTemplate]:
    """Prompt-only candidates: the default instruction (the zero-shot row), a caption-style one, and the default with
    3 or 5 task1 demonstrations."""
    de = read(MULTI30K / "task1" / "train.de.gz")
    en = read(MULTI30K / "task1" / "train.en.gz")
    rng = random.Random(0)
    short = [i for i in range(5000) if len(en[i].split()) <= 12]
    picks = rng.sample(short, 5)
    examples = [{"query": de[i], "rewrite": en[i]} for i in picks]
    base = get_prompt_template("multilingual")
    caption = {
        "system": base.system,
        "user": "Write a short English caption of the image that this German text describes.\n\n{query}",
    }
    return {
        "zero-shot, default instruction": base,
        "zero-shot, caption instruction": get_prompt_template("multilingual", caption),
        "3-shot": get_prompt_template("multilingual", {**base.to_dict(), "examples": examples[:3]}),
        "5-shot": get_prompt_template("multilingual", {**base.to_dict(), "examples": examples}),
    }


def load_rewriter(adapter: Path | None, template: PromptTemplate, dtype=torch.bfloat16) -> QueryRewriter:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = resolve_model_path(SMOLLM2_ID)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.eval()
    return QueryRewriter(model, AutoTokenizer.from_pretrained(base), template, max_new_tokens=32)


def evaluate_method(rewriter, queries, targets, scorer) -> tuple[dict, list[str]]:
    rewrites = [r[0] for r in rewriter.rewrite(queries, batch_size=32)] if rewriter else list(queries)
    return evaluate_retrieval(scorer, rewrites, targets), rewrites


def warm_start(out: Path, budget: Budget, template: PromptTemplate) -> Path:
    """Supervised LoRA warm start on task1's German→English translations (train split only)."""
    adapter = out / "sft"
    if (adapter / "adapter_model.safetensors").is_file():
        return adapter
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    de = read(MULTI30K / "task1" / "train.de.gz")
    en = read(MULTI30K / "task1" / "train.en.gz")
    order = list(range(len(de)))
    random.Random(0).shuffle(order)
    n = budget.sft_steps * budget.sft_batch
    rows = [
        {"prompt": template.build_messages(de[i]), "completion": [{"role": "assistant", "content": en[i]}]}
        for i in order[:n]
    ]
    args = SFTConfig(
        output_dir=str(out / "sft-trainer"),
        max_steps=budget.sft_steps,
        per_device_train_batch_size=budget.sft_batch,
        learning_rate=3e-4,
        lr_scheduler_type="cosine",
        warmup_steps=10,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        max_length=192,
    )
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(
        model=resolve_model_path(SMOLLM2_ID), args=args, train_dataset=Dataset.from_list(rows), peft_config=peft_config
    )
    start = time.time()
    trainer.train()
    trainer.save_model(str(adapter))
    (adapter / "timing.json").write_text(json.dumps({"seconds": time.time() - start, "steps": budget.sft_steps}))
    return adapter


def grpo(
    out: Path,
    reward: str,
    sft_adapter: Path,
    budget: Budget,
    template: PromptTemplate,
    train,
    train_scorer,
    curve,
    val_scorer,
) -> tuple[Path, dict]:
    """GRPO from the warm start with one reward variant; returns the adapter and the per-step curves."""
    run = out / f"grpo-{reward}"
    if (run / "curves.json").is_file():
        return run, json.loads((run / "curves.json").read_text())
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from grape_hf.callbacks import RetrievalEvalCallback
    from grape_hf.grpo import to_prompt_dataset

    base = resolve_model_path(SMOLLM2_ID)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(sft_adapter), is_trainable=True)
    callback = RetrievalEvalCallback(
        val_scorer,
        curve.queries["query"],
        curve.queries["target_id"],
        tokenizer,
        template,
        eval_steps=budget.curve_every,
    )
    args = GRPOConfig(
        output_dir=str(run / "trainer"),
        max_steps=budget.grpo_steps,
        per_device_train_batch_size=budget.grpo_prompts * budget.grpo_generations,
        num_generations=budget.grpo_generations,
        num_iterations=budget.num_iterations,
        steps_per_generation=budget.steps_per_generation,
        max_completion_length=32,
        learning_rate=budget.learning_rate,
        lr_scheduler_type="constant",
        temperature=1.0,
        beta=budget.beta,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[GRAPERewardFunction(train_scorer, reward=reward)],
        args=args,
        train_dataset=to_prompt_dataset(train, template),
        processing_class=tokenizer,
        callbacks=[callback],
    )
    start = time.time()
    trainer.train()
    seconds = time.time() - start
    trainer.save_model(str(run))
    train_logs = [e for e in trainer.state.log_history if "grape/target_similarity" in e]
    curves = {
        "eval_steps": [s for s, _ in callback.history],
        "eval_R@10": [m["R@10"] for _, m in callback.history],
        "eval_MRR": [m["MRR"] for _, m in callback.history],
        "train_steps": [e["step"] for e in train_logs],
        "target_similarity": [e["grape/target_similarity"] for e in train_logs],
        "nontarget_similarity": [e["grape/nontarget_similarity"] for e in train_logs],
        "train_mean_rank": [e["grape/mean_rank"] for e in train_logs],
        "reward": [e[f"rewards/grape_{reward}/mean"] for e in train_logs],
        "seconds": seconds,
    }
    (run / "curves.json").write_text(json.dumps(curves, indent=1))
    return run, curves


def plot(curves: dict[str, dict], path_r10: Path, path_inflation: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for reward, c in curves.items():
        ax.plot(c["eval_steps"], c["eval_R@10"], marker="o", label=f"GRPO {reward}")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("val R@10 (curve subset)")
    ax.set_title("Multi30k de→en: R@10 during GRPO from the warm start")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path_r10, dpi=110)
    plt.close(fig)

    panels = [reward for reward in ("rank", "similarity") if reward in curves]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, reward in zip(axes, panels):
        c = curves[reward]
        ax.plot(c["train_steps"], c["target_similarity"], label="to the target")
        ax.plot(c["train_steps"], c["nontarget_similarity"], label="to non-targets (mean)")
        ax.set_title(f"reward = {reward}")
        ax.set_xlabel("GRPO step")
    axes[0].set_ylabel("cosine similarity of the rewrites")
    axes[0].legend()
    fig.suptitle("Score inflation monitor (training batches)")
    fig.tight_layout()
    fig.savefig(path_inflation, dpi=110)
    plt.close(fig)


def ship(run: Path, template: PromptTemplate, evaluation: dict, budget: Budget, command: str) -> None:
    """Save the GRAPE rewriter inside the package: fp16 LoRA adapter, tokenizer, grape_rewriter.json and model card."""
    import shutil

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grape_hf.hub import save_rewriter

    base = resolve_model_path(SMOLLM2_ID)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(run)).half()
    for peft_config in model.peft_config.values():
        peft_config.base_model_name_or_path = SMOLLM2_ID  # the Hub id, resolved to the local copy offline
    shutil.rmtree(SHIPPED, ignore_errors=True)
    config = RewriterConfig(
        prompt=template.to_dict(),
        base_model=SMOLLM2_ID,
        shift="multilingual",
        retriever=RETRIEVER,
        dataset="Multi30k task2 (German description -> English description of the same image)",
        corpus=f"Multi30k task2 train, English description 1 of {budget.train_images} images",
        reward="rank",
        training={
            "warm_start": f"LoRA SFT on Multi30k task1 train de->en, {budget.sft_steps} steps x {budget.sft_batch}",
            "grpo_steps": budget.grpo_steps,
            "prompts_per_step": budget.grpo_prompts,
            "num_generations": budget.grpo_generations,
            "learning_rate": budget.learning_rate,
            "num_iterations": budget.num_iterations,
            "steps_per_generation": budget.steps_per_generation,
            "max_completion_length": 32,
            "beta": budget.beta,
            "lora": {"r": 16, "alpha": 32, "target_modules": "all-linear"},
            "command": command,
        },
        evaluation=evaluation,
    )
    save_rewriter(model, AutoTokenizer.from_pretrained(base), SHIPPED, config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="A few steps of everything (~10 minutes here).")
    parser.add_argument("--output_dir", default=None)
    parser.add_argument("--rewards", nargs="+", default=["rank", "similarity", "margin"])
    parser.add_argument("--ship", action="store_true", help="Copy the GRAPE (rank) rewriter into the package.")
    parser.add_argument("--grpo_steps", type=int, default=None, help="Override the budget's GRPO steps.")
    parser.add_argument(
        "--eval_queries", type=int, default=None, help="Override the val queries evaluated (0: all 1,014)."
    )
    parser.add_argument("--curve_queries", type=int, default=None, help="Override the val queries of the R@10 curve.")
    parser.add_argument("--curve_every", type=int, default=None, help="Override the steps between curve points.")
    parser.add_argument("--grpo_prompts", type=int, default=None, help="Override the prompts per optimizer step.")
    parser.add_argument("--grpo_generations", type=int, default=None, help="Override the completions per prompt.")
    parser.add_argument("--learning_rate", type=float, default=None, help="Override the GRPO learning rate (1e-4).")
    parser.add_argument(
        "--num_iterations", type=int, default=None, help="GRPO's μ: optimizer passes over each generated batch (1)."
    )
    parser.add_argument("--beta", type=float, default=None, help="Override the KL coefficient (0).")
    parser.add_argument(
        "--steps_per_generation", type=int, default=None, help="Optimizer steps per generation round (1)."
    )
    parser.add_argument(
        "--tag", default=None, help="Suffix of the results files (default: '_quick' with --quick, else none)."
    )
    args = parser.parse_args()
    budget = QUICK if args.quick else FULL
    # Every --flag named like a Budget field overrides it.
    overrides = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(Budget)}
    budget = dataclasses.replace(budget, **{k: v for k, v in overrides.items() if v is not None})
    if budget.eval_queries == 0:
        budget = dataclasses.replace(budget, eval_queries=None)
    tag = args.tag if args.tag is not None else ("_quick" if args.quick else "")
    out = Path(args.output_dir or (REPO / "outputs" / ("multi30k_de_quick" if args.quick else "multi30k_de")))
    out.mkdir(parents=True, exist_ok=True)
    results_file = REPO / "benchmarks" / "results" / f"multi30k_de{tag}.json"
    stage_file = out / "results.json"
    results: dict = json.loads(stage_file.read_text()) if stage_file.is_file() else {}
    timings: dict = results.pop("_seconds", {})
    if results.setdefault("_budget", dataclasses.asdict(budget)) != dataclasses.asdict(budget):
        raise ValueError(
            f"{out} caches a run with other sizes ({results['_budget']}) than this one ({dataclasses.asdict(budget)}); "
            "pass another --output_dir or delete it."
        )

    def record(name, metrics, seconds, rewrites=None):
        results[name] = metrics
        timings[name] = round(seconds, 1)
        stage_file.write_text(json.dumps({**results, "_seconds": timings}, indent=2))
        if rewrites is not None:
            (out / f"rewrites_{name.replace(' ', '_').replace(',', '')}.json").write_text(
                json.dumps(rewrites[:50], indent=1, ensure_ascii=False)
            )
        log(f"{name}: {metrics}")

    total = time.time()
    retriever = load_retriever(RETRIEVER)
    cache = cache_home() / "corpus_embeddings"
    val = load_multi30k(
        MULTI30K,
        split="validation",
        task="task2",
        query_index=1,
        corpus_index=1,
        max_queries=budget.eval_queries,
        seed=0,
    )
    val_scorer = CLIPRankScorer(retriever, val.corpus, cache_dir=cache)
    curve = load_multi30k(MULTI30K, split="validation", task="task2", max_queries=budget.curve_queries, seed=1)
    train = load_multi30k(MULTI30K, split="train", task="task2", max_images=budget.train_images, seed=0)
    train_scorer = CLIPRankScorer(retriever, train.corpus, cache_dir=cache)
    queries, targets = list(val.queries["query"]), list(val.queries["target_id"])
    template = get_prompt_template("multilingual")

    if "German query as is" not in results:
        t = time.time()
        record("German query as is", *evaluate_method(None, queries, targets, val_scorer)[:1], time.time() - t)
    if "English ceiling" not in results:
        t = time.time()
        ceiling = load_multi30k(
            MULTI30K,
            split="validation",
            task="task2",
            query_lang="en",
            query_index=2,
            corpus_index=1,
            max_queries=budget.eval_queries,
            seed=0,
        )
        assert list(ceiling.queries["target_id"]) == targets
        record(
            "English ceiling", evaluate_retrieval(val_scorer, list(ceiling.queries["query"]), targets), time.time() - t
        )
    if "SmolLM2 zero-shot" not in results:
        t = time.time()
        metrics, rewrites = evaluate_method(load_rewriter(None, template), queries, targets, val_scorer)
        record("SmolLM2 zero-shot", metrics, time.time() - t, rewrites)

    if "best prompt-only" not in results:
        t = time.time()
        # Selection queries come from the GRPO training images, so their target ids index train_scorer's corpus.
        sel = train.queries.shuffle(seed=5).select(range(budget.select_queries))
        candidates = few_shot_candidates()
        scores = {}
        for name, cand in candidates.items():
            rw = load_rewriter(None, cand)
            scores[name] = evaluate_method(rw, list(sel["query"]), list(sel["target_id"]), train_scorer)[0]["R@10"]
            log(f"prompt candidate {name!r}: train R@10 {scores[name]}")
        best_name = max(scores, key=scores.get)
        metrics, rewrites = evaluate_method(load_rewriter(None, candidates[best_name]), queries, targets, val_scorer)
        metrics["prompt"] = best_name
        metrics["selection_R@10_train"] = scores
        record("best prompt-only", metrics, time.time() - t, rewrites)

    t = time.time()
    sft_adapter = warm_start(out, budget, template)
    if "warm start (SFT)" not in results:
        metrics, rewrites = evaluate_method(load_rewriter(sft_adapter, template), queries, targets, val_scorer)
        metrics["train_seconds"] = json.loads((sft_adapter / "timing.json").read_text())["seconds"]
        record("warm start (SFT)", metrics, time.time() - t, rewrites)

    curves = {}
    names = {"rank": "GRAPE (GRPO, rank)", "similarity": "GRPO, similarity", "margin": "GRPO, margin"}
    for reward in args.rewards:
        t = time.time()
        run, curves[reward] = grpo(out, reward, sft_adapter, budget, template, train, train_scorer, curve, val_scorer)
        if names[reward] not in results:
            metrics, rewrites = evaluate_method(load_rewriter(run, template), queries, targets, val_scorer)
            metrics["train_seconds"] = round(curves[reward]["seconds"], 1)
            record(names[reward], metrics, time.time() - t, rewrites)

    order = [
        "German query as is",
        "SmolLM2 zero-shot",
        "best prompt-only",
        "warm start (SFT)",
        "GRAPE (GRPO, rank)",
        "GRPO, similarity",
        "GRPO, margin",
        "English ceiling",
    ]
    final = {k: {m: v for m, v in results[k].items() if isinstance(v, int | float)} for k in order if k in results}
    results_file.write_text(json.dumps(final, indent=2) + "\n")
    plot(
        curves,
        REPO / "benchmarks" / "results" / f"multi30k_de{tag}_r10.png",
        REPO / "benchmarks" / "results" / f"multi30k_de{tag}_inflation.png",
    )
    n = len(queries)
    table = markdown_table(final)
    (REPO / "benchmarks" / "results" / f"multi30k_de{tag}.md").write_text(
        f"Multi30k task2 val, {n} German queries, corpus {len(val_scorer)} English descriptions ({RETRIEVER}).\n"
        f"Best prompt-only: {results.get('best prompt-only', {}).get('prompt')}. Stage seconds: {timings}\n\n"
        + table
        + "\n"
    )
    log(f"total {time.time() - total:.0f} s\n{table}")
    if args.ship and "rank" in curves:
        evaluation = {
            "before": final.get("German query as is"),
            "zero_shot": final.get("SmolLM2 zero-shot"),
            "warm_start": final.get("warm start (SFT)"),
            "after": final.get("GRAPE (GRPO, rank)"),
            "split": "validation",
            "dataset": "Multi30k task2 val (de.1 -> en.1)",
            "num_queries": n,
            "corpus_size": len(val_scorer),
        }
        ship(
            out / "grpo-rank",
            template,
            evaluation,
            budget,
            " ".join(["python", "benchmarks/multi30k_de.py", *sys.argv[1:]]),
        )
        log(f"shipped to {SHIPPED}")


if __name__ == "__main__":
    main()
