"""GRAPE on the shapes CLIP track (issue 4): rewriting shifted queries for `grape-shapes-clip`.

The retriever is the shipped `open_clip:grape-shapes-clip@grape-shapes`, ranking an image corpus (text → image). For
each shift of `grape_hf.shapes` (multilingual de/fr/es/zh, long-form, composed) the rewriter is
SmolLM2-135M-Instruct; the methods are:

- `no rewrite`: the shifted query as it is;
- `SmolLM2 zero-shot`: the shift's prompt (with a few demonstrations drawn from the train seed), no training;
- `GRAPE (GRPO, rank)`: LoRA GRPO from the zero-shot rewriter with the corpus-relative rank reward;
- `GRPO, similarity`: the same with the naive reward, the cosine similarity to the target image.
- composed also gets `reference caption as query`: copying the reference and ignoring the edit.

Training queries and their corpus come from the world of seed 2 (minus the queries whose target caption is in the
evaluation corpus, so that no evaluation scene is a training target). Evaluation ranks the target among the 1,000 images of seed 1 (the
corpus of `benchmarks/shapes_baselines.py`; the retriever was trained on seed 0), for a seeded subset of that shift's
queries (multilingual: the same images in each of the four languages). Everything is seeded: a rerun gives the same
numbers.

    python benchmarks/shapes_grape.py --quick    # tiny: 48 queries per shift, 3 GRPO steps of 1 prompt x 4
    python benchmarks/shapes_grape.py            # full: 200 queries per shift, 40 GRPO steps of 2 prompts x 4
    python benchmarks/shapes_grape.py --ship     # ... and ship the rank rewriters into the package

Stages are cached under --output_dir, so an interrupted run resumes. Merges the methods into
benchmarks/results/shapes.json (shift → method → metric → value) and writes benchmarks/results/shapes_grape.md and
benchmarks/results/shapes_grape_r10.png (quick mode: shapes_quick.json and the `_quick` files).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from grape_hf import CLIPRankScorer, GRAPERewardFunction, load_retriever  # noqa: E402
from grape_hf.evaluation import METRICS, evaluate_retrieval, markdown_table  # noqa: E402
from grape_hf.models import SMOLLM2_ID, cache_home, resolve_model_path  # noqa: E402
from grape_hf.prompts import PromptTemplate, get_prompt_template  # noqa: E402
from grape_hf.rewriter import QueryRewriter  # noqa: E402
from grape_hf.rewriter_folder import RewriterConfig  # noqa: E402
from grape_hf.shapes import SHIFT_LANGUAGES, build_shift  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
ASSETS = REPO / "grape_hf" / "assets" / "rewriters"
RETRIEVER = "open_clip:grape-shapes-clip@grape-shapes"
SHIFTS = ("multilingual", "long_form", "composed")
EVAL_SEED = 1  # the corpus of shapes_baselines.py
TRAIN_SEED = 2  # the retriever was trained on seed 0, the evaluation corpus is seed 1
REWARDS = {"rank": "GRAPE (GRPO, rank)", "similarity": "GRPO, similarity"}
METHODS = ("no rewrite", "SmolLM2 zero-shot", *REWARDS.values())
ORACLE = "oracle (target caption)"
REFERENCE = "reference caption as query"  # composed only: what copying the reference, ignoring the edit, gets
# prompts.json's multilingual prompt names German; the shapes queries come in four languages.
MULTILINGUAL_PROMPT = {
    "system": "You rewrite search queries for an English image-caption search engine.",
    "user": "Translate this image description into English, as a short image caption. Reply with the English "
    "description only.\n\n{query}",
}
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"}
MAX_NEW_TOKENS = 32  # the longest canonical caption is 23 SmolLM2 tokens; the retriever reads 32 CLIP tokens


@dataclass
class Budget:
    eval_queries: int  # per shift; multilingual splits them evenly over the four languages
    curve_queries: int  # held-out queries rewritten during GRPO (RetrievalEvalCallback); 0: no curve
    curve_every: int
    train_images: int  # train-seed corpus per shift (composed: a quarter as many queries)
    grpo_steps: int
    grpo_prompts: int
    grpo_generations: int
    learning_rate: float = 1e-4
    eval_images: int = 1000
    long_form_prompts: int | None = None  # prompts a step for long-form (3x longer prompts); None: grpo_prompts

    def prompts_per_step(self, shift: str) -> int:
        if shift == "long_form" and self.long_form_prompts is not None:
            return self.long_form_prompts
        return self.grpo_prompts


# Sized by what a GRPO step costs here: forward + backward over prompt and completion, ~7 ms a token on 2 idle cores
# (a long-form prompt with its demonstration is ~330 tokens, the others ~150), so 2 prompts x 4 generations a step,
# and one prompt a step for long-form. lr 1e-4: at 5e-4 the multilingual and long-form policies left the caption style
# within 40 steps and their training reward fell (results/shapes_grape_lr5e-4.md); at 1e-4 composed's rose
# (results/shapes_grape.md).
FULL = Budget(
    eval_queries=200,
    curve_queries=16,
    curve_every=10,
    train_images=1000,
    grpo_steps=40,
    grpo_prompts=2,
    grpo_generations=4,
    learning_rate=1e-4,
    long_form_prompts=1,
)
QUICK = Budget(
    eval_queries=48,
    curve_queries=4,
    curve_every=3,
    train_images=200,
    grpo_steps=3,
    grpo_prompts=1,
    grpo_generations=4,
)
# Demonstrations per prompt (count, objects in the scene). SmolLM2-135M does not find the caption style zero-shot
# (long-form rewrites are chatter without one), and given one it often copies it verbatim; two that differ curb
# that. Each costs prompt length in every GRPO step, so long-form (~300 tokens a query) gets one, of one object.
SHOTS = {"multilingual": (2, 2), "long_form": (1, 1), "composed": (2, 2)}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- data -----------------------------------------------------------------------------------------------------------


def eval_split(shift: str, budget: Budget) -> tuple[list[dict], list]:
    """A seeded subset of the shift's queries over seed 1's corpus, and the corpus scenes."""
    rows, scenes = build_shift(shift, num_images=budget.eval_images, seed=EVAL_SEED)
    rng = random.Random(f"shapes-grape-eval-{shift}")
    if shift == "multilingual":
        per_language = budget.eval_queries // len(SHIFT_LANGUAGES)
        keep = set(rng.sample(range(budget.eval_images), per_language))
        rows = [row for row in rows if row["target_id"] in keep]
    else:
        rows = [rows[i] for i in sorted(rng.sample(range(len(rows)), min(budget.eval_queries, len(rows))))]
    for row in rows:
        row["target_caption"] = scenes[row["target_id"]].caption
    return rows, scenes


def train_split(shift: str, budget: Budget, held_out: set[str]) -> tuple[list[dict], list]:
    """Seed 2's queries and corpus, minus the queries whose target caption is in the evaluation corpus."""
    rows, scenes = build_shift(shift, num_images=budget.train_images, seed=TRAIN_SEED)
    return [row for row in rows if scenes[row["target_id"]].caption not in held_out], scenes


def few_shot_examples(shift: str, rows: list[dict], scenes: list, count: int, objects: int = 2) -> list[dict]:
    """Train-seed demonstrations with the target's canonical caption as the rewrite: scenes of `objects` objects
    (few, to keep the prompt short), distinct languages (multilingual) or edit kinds (composed)."""
    rng = random.Random(f"shapes-grape-shots-{shift}")
    candidates = [row for row in rows if len(scenes[row["target_id"]].objects) == objects]
    rng.shuffle(candidates)
    key = {"multilingual": "language", "composed": "edit_kind"}.get(shift)
    examples, seen = [], set()
    for row in candidates:
        if len(examples) == count:
            break
        if key and row[key] in seen:
            continue
        seen.add(row.get(key))
        example = {"query": row["query"], "rewrite": scenes[row["target_id"]].caption}
        if shift == "composed":
            example["reference"] = row["reference"]
        examples.append(example)
    return examples


def shift_template(shift: str, examples: list[dict]) -> PromptTemplate:
    base = MULTILINGUAL_PROMPT if shift == "multilingual" else get_prompt_template(shift).to_dict()
    return get_prompt_template(shift, {**base, "examples": examples or None})


# --- rewriting and scoring ------------------------------------------------------------------------------------------


def load_rewriter(adapter: Path | None, template: PromptTemplate, dtype=torch.bfloat16) -> QueryRewriter:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = resolve_model_path(SMOLLM2_ID)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.eval()
    return QueryRewriter(model, AutoTokenizer.from_pretrained(base), template, max_new_tokens=MAX_NEW_TOKENS)


def rewrite(rewriter: QueryRewriter, rows: list[dict]) -> list[str]:
    """Greedy rewrites, in batches of similar prompt length (less left padding), returned in the rows' order."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["query"]) + len(rows[i].get("reference", "")))
    queries = [rows[i]["query"] for i in order]
    references = [rows[i]["reference"] for i in order] if rewriter.template.needs_reference else None
    texts = [r[0] for r in rewriter.rewrite(queries, references=references, batch_size=32)]
    out = [""] * len(rows)
    for i, text in zip(order, texts):
        out[i] = text
    return out


def score(scorer: CLIPRankScorer, texts: list[str], rows: list[dict]) -> dict:
    """Metrics of the texts as queries; for multilingual also per language (`by_language`)."""
    metrics = evaluate_retrieval(scorer, texts, [row["target_id"] for row in rows])
    if "language" in rows[0]:
        metrics["by_language"] = {}
        for language in SHIFT_LANGUAGES:
            keep = [i for i, row in enumerate(rows) if row["language"] == language]
            if keep:
                metrics["by_language"][language] = evaluate_retrieval(
                    scorer, [texts[i] for i in keep], [rows[i]["target_id"] for i in keep]
                )
    return metrics


# --- GRPO -----------------------------------------------------------------------------------------------------------


def grpo(
    run: Path,
    reward: str,
    template: PromptTemplate,
    budget: Budget,
    train_rows: list[dict],
    train_scorer: CLIPRankScorer,
    curve_rows: list[dict],
    eval_scorer: CLIPRankScorer,
) -> dict:
    """LoRA GRPO from the zero-shot rewriter with one reward; saves the adapter in `run` and returns the curves."""
    if (run / "curves.json").is_file():
        return json.loads((run / "curves.json").read_text())
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import GRPOConfig, GRPOTrainer

    from grape_hf.callbacks import RetrievalEvalCallback
    from grape_hf.data import GRAPEData
    from grape_hf.grpo import to_prompt_dataset

    set_seed(0)  # the LoRA initialisation
    base = resolve_model_path(SMOLLM2_ID)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), LoraConfig(task_type="CAUSAL_LM", **LORA)
    )
    callbacks = []
    if budget.curve_queries:
        callbacks.append(
            RetrievalEvalCallback(
                eval_scorer,
                [row["query"] for row in curve_rows],
                [row["target_id"] for row in curve_rows],
                tokenizer,
                template,
                eval_steps=budget.curve_every,
                references=[row["reference"] for row in curve_rows] if template.needs_reference else None,
                max_new_tokens=MAX_NEW_TOKENS,
            )
        )
    args = GRPOConfig(
        output_dir=str(run / "trainer"),
        max_steps=budget.grpo_steps,
        per_device_train_batch_size=budget.prompts_per_step(template.shift) * budget.grpo_generations,
        num_generations=budget.grpo_generations,
        max_completion_length=MAX_NEW_TOKENS,
        learning_rate=budget.learning_rate,
        lr_scheduler_type="constant",
        temperature=1.0,
        beta=0.0,
        gradient_checkpointing=False,  # TRL turns it on by default; a 135M model needs no memory saved, only time
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        # CPU autocast, as the shipped results were made. Not faster here: multilingual steps took ~35 s for 16
        # completions in fp32 and ~17 s for 8 in bf16. The LoRA weights stay fp32.
        bf16=True,
        seed=0,
    )
    # No column may be called "image": TRL would read it as the prompt's picture. The rows hold none.
    data = GRAPEData(queries=Dataset.from_list(train_rows), corpus=[], name=f"shapes seed {TRAIN_SEED}")
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[GRAPERewardFunction(train_scorer, reward=reward)],
        args=args,
        train_dataset=to_prompt_dataset(data, template, reference_column="reference"),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    start = time.time()
    trainer.train()
    seconds = time.time() - start
    trainer.save_model(str(run))
    logs = [e for e in trainer.state.log_history if "grape/target_similarity" in e]
    history = callbacks[0].history if callbacks else []
    curves = {
        "eval_steps": [s for s, _ in history],
        "eval_R@10": [m["R@10"] for _, m in history],
        "eval_MRR": [m["MRR"] for _, m in history],
        "train_steps": [e["step"] for e in logs],
        "train_recall@10": [e["grape/R@10"] for e in logs],
        "train_mean_rank": [e["grape/mean_rank"] for e in logs],
        "target_similarity": [e["grape/target_similarity"] for e in logs],
        "nontarget_similarity": [e["grape/nontarget_similarity"] for e in logs],
        "reward": [e[f"rewards/grape_{reward}/mean"] for e in logs],
        "seconds": round(seconds, 1),
    }
    (run / "curves.json").write_text(json.dumps(curves, indent=1))
    return curves


# --- reporting ------------------------------------------------------------------------------------------------------


def plot_r10(final: dict, oracle: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shifts = [s for s in SHIFTS if s in final]
    width = 0.8 / len(METHODS)
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for i, method in enumerate(METHODS):
        xs = [j + (i - (len(METHODS) - 1) / 2) * width for j in range(len(shifts))]
        values = [final[s].get(method, {}).get("R@10", 0.0) for s in shifts]
        bars = ax.bar(xs, values, width, label=method)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    for j, shift in enumerate(shifts):
        ax.hlines(oracle[shift]["R@10"], j - 0.45, j + 0.45, colors="grey", linestyles="dashed")
    ax.plot([], [], color="grey", linestyle="dashed", label="oracle (target caption)")
    ax.set_xticks(range(len(shifts)), shifts)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("R@10")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=5, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.4), sharey=True, squeeze=False)
    for ax, (shift, by_reward) in zip(axes[0], curves.items()):
        for reward, c in by_reward.items():
            line = ax.plot(c["train_steps"], c["train_recall@10"], alpha=0.4, label=f"{reward}: train batch")[0]
            if c["eval_steps"]:
                ax.plot(
                    c["eval_steps"], c["eval_R@10"], marker="o", color=line.get_color(), label=f"{reward}: held out"
                )
        ax.set_title(shift)
        ax.set_xlabel("GRPO step")
    axes[0][0].set_ylabel("R@10")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("R@10 during GRPO: training completions (sampled) and held-out curve queries (greedy)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def ship(shift: str, run: Path, template: PromptTemplate, evaluation: dict, budget: Budget, dest: Path, command: str):
    """Save a shift's GRAPE rewriter with `grape_hf.hub.save_rewriter`: fp16 LoRA adapter, tokenizer,
    grape_rewriter.json and model card, loadable by `pipeline("grape-rewrite")` offline."""
    import shutil

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grape_hf.hub import save_rewriter

    base = resolve_model_path(SMOLLM2_ID)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(run)).half()
    for peft_config in model.peft_config.values():
        peft_config.base_model_name_or_path = SMOLLM2_ID  # the Hub id, resolved to the local copy offline
    shutil.rmtree(dest, ignore_errors=True)
    config = RewriterConfig(
        prompt=template.to_dict(),
        base_model=SMOLLM2_ID,
        shift=shift,
        retriever=RETRIEVER,
        dataset=f"grape_hf.shapes {shift} shift (text -> image)",
        corpus=f"shapes world seed {TRAIN_SEED}, {budget.train_images} images (rendered, 64 px)",
        reward="rank",
        training={
            "grpo_steps": budget.grpo_steps,
            "prompts_per_step": budget.prompts_per_step(shift),
            "num_generations": budget.grpo_generations,
            "learning_rate": budget.learning_rate,
            "max_completion_length": MAX_NEW_TOKENS,
            "beta": 0.0,
            "lora": {"r": LORA["r"], "alpha": LORA["lora_alpha"], "target_modules": LORA["target_modules"]},
            "start": "SmolLM2-135M-Instruct zero-shot (no warm start)",
            "command": command,
        },
        evaluation=evaluation,
    )
    save_rewriter(model, AutoTokenizer.from_pretrained(base), dest, config)


# --- main -----------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Tiny sizes, to check the pipeline (≤ 10 min, 2 cores).")
    parser.add_argument("--output_dir", type=Path, default=None, help="Stage cache (default outputs/shapes_grape).")
    parser.add_argument("--shifts", nargs="+", default=list(SHIFTS), choices=SHIFTS)
    parser.add_argument("--rewards", nargs="+", default=list(REWARDS), choices=list(REWARDS))
    parser.add_argument("--eval_queries", type=int, default=None, help="Override the mode's queries per shift.")
    parser.add_argument("--grpo_steps", type=int, default=None, help="Override the mode's GRPO steps.")
    parser.add_argument("--learning_rate", type=float, default=None, help="Override the mode's GRPO learning rate.")
    parser.add_argument(
        "--tag", default=None, help="Suffix of the results files (default: '_quick' with --quick, else none)."
    )
    parser.add_argument(
        "--ship",
        action="store_true",
        help="Ship each shift's rank rewriter into grape_hf/assets/rewriters/ (with --quick: into the "
        "output dir, never the package).",
    )
    args = parser.parse_args()
    budget = QUICK if args.quick else FULL
    if args.eval_queries is not None:
        budget.eval_queries = args.eval_queries
    if args.grpo_steps is not None:
        budget.grpo_steps = args.grpo_steps
        budget.curve_every = min(budget.curve_every, args.grpo_steps)
    if args.learning_rate is not None:
        budget.learning_rate = args.learning_rate
    tag = args.tag if args.tag is not None else ("_quick" if args.quick else "")
    out = args.output_dir or (REPO / "outputs" / f"shapes_grape{tag}")
    out.mkdir(parents=True, exist_ok=True)
    stage_file = out / "results.json"
    stages: dict = json.loads(stage_file.read_text()) if stage_file.is_file() else {}
    if stages.setdefault("_budget", asdict(budget)) != asdict(budget):
        raise ValueError(
            f"{out} caches a run with other sizes ({stages['_budget']}) than this one ({asdict(budget)}); pass another "
            "--output_dir or delete it."
        )
    command = "python benchmarks/shapes_grape.py " + " ".join(sys.argv[1:])

    def record(shift, method, metrics, seconds, texts=None):
        stages.setdefault(shift, {})[method] = {**metrics, "seconds": round(seconds, 1)}
        stage_file.write_text(json.dumps(stages, indent=1, ensure_ascii=False))
        if texts is not None:
            (out / shift / f"rewrites_{method.replace(' ', '_').replace(',', '')}.json").write_text(
                json.dumps(texts[:50], indent=1, ensure_ascii=False)
            )
        log(f"{shift} / {method}: " + ", ".join(f"{m} {metrics[m]:.3f}" for m in METRICS) + f" ({seconds:.0f} s)")

    total = time.time()
    retriever = load_retriever(RETRIEVER, device="cpu")
    cache = cache_home() / "corpus_embeddings"
    curves: dict = {}
    setup: dict = {}
    for shift in args.shifts:
        t = time.time()
        (out / shift).mkdir(exist_ok=True)
        rows, eval_scenes = eval_split(shift, budget)
        eval_scorer = CLIPRankScorer(
            retriever, [s.render() for s in eval_scenes], cache_dir=cache, show_progress_bar=False
        )
        train_rows, train_scenes = train_split(shift, budget, {s.caption for s in eval_scenes})
        train_scorer = CLIPRankScorer(
            retriever, [s.render() for s in train_scenes], cache_dir=cache, show_progress_bar=False
        )
        template = shift_template(shift, few_shot_examples(shift, train_rows, train_scenes, *SHOTS[shift]))
        (out / shift / "prompt.json").write_text(json.dumps(template.to_dict(), indent=1, ensure_ascii=False))
        setup[shift] = {"eval_queries": len(rows), "train_queries": len(train_rows), "shots": SHOTS[shift][0]}
        log(f"{shift}: {len(rows)} eval queries, {len(train_rows)} train queries ({time.time() - t:.0f} s)")

        if "no rewrite" not in stages.get(shift, {}):
            t = time.time()
            record(shift, "no rewrite", score(eval_scorer, [r["query"] for r in rows], rows), time.time() - t)
        if ORACLE not in stages.get(shift, {}):
            t = time.time()
            record(shift, ORACLE, score(eval_scorer, [r["target_caption"] for r in rows], rows), time.time() - t)
        if shift == "composed" and REFERENCE not in stages[shift]:
            t = time.time()
            record(shift, REFERENCE, score(eval_scorer, [r["reference"] for r in rows], rows), time.time() - t)
        if "SmolLM2 zero-shot" not in stages.get(shift, {}):
            t = time.time()
            texts = rewrite(load_rewriter(None, template), rows)
            record(shift, "SmolLM2 zero-shot", score(eval_scorer, texts, rows), time.time() - t, texts)

        curve_rows = random.Random(f"shapes-grape-curve-{shift}").sample(rows, min(budget.curve_queries, len(rows)))
        for reward in args.rewards:
            run = out / shift / f"grpo-{reward}"
            t = time.time()
            curves.setdefault(shift, {})[reward] = grpo(
                run, reward, template, budget, train_rows, train_scorer, curve_rows, eval_scorer
            )
            if REWARDS[reward] not in stages[shift]:
                texts = rewrite(load_rewriter(run, template), rows)
                metrics = {**score(eval_scorer, texts, rows), "train_seconds": curves[shift][reward]["seconds"]}
                record(shift, REWARDS[reward], metrics, time.time() - t, texts)

        if args.ship and "rank" in args.rewards:
            name = f"smollm2-135m-grape-shapes-{shift.replace('_', '-')}"
            dest = (out / "shipped" / name) if args.quick else (ASSETS / name)
            evaluation = {
                "before": {m: stages[shift]["no rewrite"][m] for m in METRICS},
                "zero_shot": {m: stages[shift]["SmolLM2 zero-shot"][m] for m in METRICS},
                "after": {m: stages[shift][REWARDS["rank"]][m] for m in METRICS},
                "split": f"shapes world seed {EVAL_SEED} (held out)",
                "dataset": f"grape_hf.shapes {shift}",
                "num_queries": len(rows),
                "corpus_size": len(eval_scorer),
            }
            ship(shift, out / shift / "grpo-rank", template, evaluation, budget, dest, command)
            log(f"shipped {dest}")

    # Report: shapes.json gets the four methods per shift (and per language), merged into what is there.
    done = [s for s in SHIFTS if s in stages]
    final: dict = {}
    for shift in done:
        final[shift] = {
            m: {k: stages[shift][m][k] for k in METRICS} for m in (*METHODS, REFERENCE) if m in stages[shift]
        }
        if shift == "multilingual":
            for language in SHIFT_LANGUAGES:
                final[f"multilingual/{language}"] = {
                    m: {k: stages[shift][m]["by_language"][language][k] for k in METRICS}
                    for m in METHODS
                    if m in stages[shift]
                }
    results_file = RESULTS / f"shapes{tag}.json"
    merged = json.loads(results_file.read_text()) if results_file.is_file() else {}
    meta = merged.pop("_meta", {})
    for key, methods in final.items():
        merged.setdefault(key, {}).update(methods)
    seconds = round(time.time() - total, 1)
    # What the cached stages took, summed: the cost of the whole run even when this invocation only resumed it.
    stage_total = round(sum(v["seconds"] for s in done for v in stages[s].values()), 1)
    meta["shapes_grape"] = {
        "command": command,
        "methods": list(METHODS),
        "note": "these methods are measured on a seeded subset of each shift's queries (eval_queries), all four on "
        "the same queries; shapes_baselines.py's no_rewrite and oracle are on every query",
        "retriever": RETRIEVER,
        "direction": "text -> image",
        "rewriter": SMOLLM2_ID,
        "eval": {"seed": EVAL_SEED, "corpus_images": budget.eval_images},
        "train": {"seed": TRAIN_SEED, "corpus_images": budget.train_images, "held_out": "eval-corpus captions"},
        "per_shift": setup,
        "budget": asdict(budget),
        "lora": LORA,
        "seconds_this_run": seconds,
        "seconds_all_stages": stage_total,
        "torch_threads": torch.get_num_threads(),
        "stage_seconds": {s: {m: v["seconds"] for m, v in stages[s].items()} for s in done},
    }
    merged["_meta"] = meta
    results_file.write_text(json.dumps(merged, indent=2, ensure_ascii=False) + "\n")

    oracle = {s: stages[s][ORACLE] for s in done}
    plot_r10(
        final,
        oracle,
        RESULTS / f"shapes_grape{tag}_r10.png",
        f"{RETRIEVER.split('@')[0]}: R@10 among {budget.eval_images} held-out images "
        f"({budget.eval_queries} queries per shift)",
    )
    if curves:
        plot_curves(curves, RESULTS / f"shapes_grape{tag}_curves.png")
    lines = [
        f"# GRAPE on the shapes CLIP track{' (quick mode)' if args.quick else ''}",
        "",
        f"Retriever `{RETRIEVER}` ranks {budget.eval_images} images of seed {EVAL_SEED} (text → image); rewriter "
        f"SmolLM2-135M-Instruct (bf16, greedy), GRPO with LoRA r={LORA['r']} on seed {TRAIN_SEED}'s world for "
        f"{budget.grpo_steps} steps of {budget.grpo_prompts} prompt(s) × {budget.grpo_generations} generations "
        + (f"(long-form: {budget.long_form_prompts} prompt) " if budget.long_form_prompts else "")
        + f"(lr {budget.learning_rate}, β = 0). `{command.strip()}`: the stages took {stage_total:.0f} s "
        f"with {torch.get_num_threads()} torch thread(s).",
        "",
    ]
    for shift in done:
        n = stages[shift]["no rewrite"]
        lines += [f"## {shift}", "", f"{setup.get(shift, {}).get('eval_queries', '?')} queries.", ""]
        lines += [markdown_table({**final[shift], ORACLE: stages[shift][ORACLE]}), ""]
        if "by_language" in n:
            lines += ["R@10 per language:", "", "| method | " + " | ".join(SHIFT_LANGUAGES) + " |"]
            lines += ["|---" * (len(SHIFT_LANGUAGES) + 1) + "|"]
            for m in (*METHODS, ORACLE):
                if m in stages[shift]:
                    by = stages[shift][m]["by_language"]
                    lines.append(
                        f"| {m} | " + " | ".join(f"{by[lang]['R@10']:.3f}" for lang in SHIFT_LANGUAGES) + " |"
                    )
            lines.append("")
        examples = {m: out / shift / f"rewrites_{m.replace(' ', '_').replace(',', '')}.json" for m in METHODS[1:]}
        if all(path.is_file() for path in examples.values()):
            rows = eval_split(shift, budget)[0]
            texts = {m: json.loads(path.read_text()) for m, path in examples.items()}
            lines += ["Rewrites of the first three queries:", ""]
            for i, row in enumerate(rows[:3]):
                query = row["query"] if len(row["query"]) <= 120 else row["query"][:117] + "..."
                lines.append(f"- `{query}`" + (f" (reference: `{row['reference']}`)" if "reference" in row else ""))
                lines += [f"  - {m}: `{texts[m][i]}`" for m in texts]
                lines.append(f"  - target caption: `{row['target_caption']}`")
            lines.append("")
        timing = {m: v["seconds"] for m, v in stages[shift].items()}
        lines += [f"Stage seconds: {timing}", ""]
    (RESULTS / f"shapes_grape{tag}.md").write_text("\n".join(lines))
    log(f"wrote {results_file}, {RESULTS / f'shapes_grape{tag}.md'}; total {seconds:.0f} s")


if __name__ == "__main__":
    main()
