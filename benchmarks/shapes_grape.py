"""GRAPE on the shapes CLIP track, stage by stage (issues 14, 28): does the rank reward teach an LLM what CLIP wants?

The retriever is the shipped `open_clip:grape-shapes-clip@grape-shapes` ranking rendered images (text → image). For
each shift of `grape_hf.shapes` (multilingual de/fr/es/zh, long-form, composed) the task is `build_grape_task`'s
(train: seed 2's world minus the held-out scenes; validation: 200 queries over seed 1's 1,000 images) and every
stage is grape_hf's own, run through its recipe config (`recipes/<model>/{distill,grpo}/config_shapes.yaml`) with
the shift's few-shot prompt:

- `no_rewrite`: the shifted query as it is; `oracle`: the target's canonical caption (the ceiling);
  `reference_caption` (composed): copying the reference and ignoring the edit;
- `zero_shot`: the base model (SmolLM2-135M-Instruct, or Gemma 3 270M with `--rewriter gemma3-270m`) with the prompt,
  no training (for Gemma: the shift's plain-text few-shot completion prompt, the multilingual one naming no language);
- `self_distillation`: rank-filtered self-distillation from the zero-shot policy (`grape_hf.training.distill`: no
  captions or translations as labels, only what the retriever's ranking picks);
- `grape_rank`: GRPO `rank` from the better of zero-shot and self-distillation (`grape_hf.training.grpo`, with
  `--init_rewriter` from self-distillation);
- `grpo_similarity`: GRPO `similarity` from the same start with the same budget (the inflation comparison);
- `oracle_best_of_8`: the best of 8 samples of the final policy, picked knowing the target;
- the word-level probe (`grape_hf.shapes.word_probe`) of the held-out rewrites: per attribute word and language, how
  often a method names it when the target has it, and when it has not (`word_probes`).

    python benchmarks/shapes_grape.py --quick        # tiny sizes: checks the pipeline in minutes
    python benchmarks/shapes_grape.py --ship         # the sizes below, then ship the grape_rank rewriters
    python benchmarks/shapes_grape.py --rewriter gemma3-270m --shifts multilingual long_form --ship
    python benchmarks/shapes_grape.py --shifts composed --variant rr --start_from grape_rank \
        --grpo_args --reward_funcs reciprocal_rank   # one more GRPO stage, method grape_rank_rr
    python benchmarks/shapes_grape.py --shifts composed --variant r1 --start_from grape_rank \
        --distill_args --max_rank 1                  # one more self-distillation stage, method self_distillation_r1

Stages are cached in --output_dir (finished stages are reused, GRPO resumes from its last checkpoint). Writes
benchmarks/results/shapes{,_quick}.json (shift → method → metric → value; another rewriter's under its key, e.g.
`gemma3-270m`), shapes_grape{_gemma3-270m,}{,_quick}.md, and the R@10 and curve plots.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
RECIPES = REPO / "recipes"
ASSETS = REPO / "grape_hf" / "assets" / "rewriters"
RETRIEVER = "open_clip:grape-shapes-clip@grape-shapes"
SHIFTS = ("multilingual", "long_form", "composed")
METHODS = (
    "no_rewrite",
    "zero_shot",
    "self_distillation",
    "grape_rank",
    "grpo_similarity",
    "oracle_best_of_8",
    "oracle",
    "reference_caption",
)
# The rewriters this benchmark trains (--rewriter): the base model, its recipe folder, its prompt format, the dtype of
# its evaluation and sampling, where its rows go in shapes.json (None: the top level, as before Gemma) and the name of
# its shipped folders. SmolLM2's rows were measured in bf16 on an AMX CPU; "auto" is bf16 only where it is native.
REWRITERS = {
    "smollm2-135m": {
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "recipes": "SmolLM2-135M-Instruct",
        "prompt_format": "chat",
        "dtype": "bfloat16",
        "results_key": None,
        "shipped": "smollm2-135m-grape-shapes-{shift}",
    },
    "gemma3-270m": {
        "model": "google/gemma-3-270m",
        "recipes": "gemma-3-270m",
        "prompt_format": "completion",
        "dtype": "auto",
        "results_key": "gemma3-270m",
        "shipped": "gemma3-270m-grape-shapes-{shift}",
        # On top of FULL: more training queries and steps (one shift's stages ~35 min on the 2-core AVX2 CPU in fp32,
        # ~3 completions/s), and the oracle best of 8 on every shift.
        "sizes": {
            "distill": ["--max_train_samples", "192"],
            "grpo": ["--max_steps", "40"],
            "multilingual": {"best_of": True},
            "long_form": {"best_of": True},
        },
    },
}
# The built-in multilingual prompt names German; the shapes queries come in four languages.
MULTILINGUAL_PROMPT = {
    "system": "You rewrite search queries for an English image-caption search engine.",
    "user": "Translate this image description into English, as a short image caption. Reply with the English "
    "description only.\n\n{query}",
}
# Gemma's long-form prompt asks for a length CLIP's 32-token text window holds (its built-in one does not).
LONG_FORM_COMPLETION = (
    "Summarise each long description as one short image caption of at most 16 words that keeps every object, colour, "
    "size and position."
)
# Demonstrations per prompt (count, objects in each). SmolLM2-135M does not find the caption style zero-shot
# (long-form rewrites are chatter without one), and given one it often copies it verbatim; two that differ curb
# that. Long-form queries are ~300 tokens, so they get one, of one object.
SHOTS = {"multilingual": (2, 2), "long_form": (1, 1), "composed": (2, 2)}
# Stage -> recipe overrides (a shift's own list is appended: the last value of a flag wins). FULL is sized for this
# 2-core CPU, where a forward + backward runs at ~0.2 TFLOP/s: with these prompts (~240 tokens, long-form ~520) a
# distillation round of 128 queries took 11 min (7 sampling 8 rewrites each, 4 fine-tuning) and a GRPO step of 16
# completions ~20 s, so one round, 30 GRPO steps per reward (long-form: 32 queries, 8 steps): ~35 min a shift.
FULL = {
    "task": {"train_images": 1000, "eval_images": 1000, "eval_queries": 200},
    "distill": ["--rounds", "1", "--max_train_samples", "128"],
    "grpo": ["--max_steps", "30", "--curve_eval_steps", "10", "--curve_queries", "32"],
    "long_form": {
        "distill": ["--max_train_samples", "32"],
        "grpo": ["--max_steps", "8", "--curve_eval_steps", "4"],
        "best_of": False,
    },
    # The best of 8 samples of 200 queries takes ~8 min with these prompts (~3 completions/s), ~2x on long-form.
    "multilingual": {"best_of": False},
}
QUICK = {
    "task": {"train_images": 200, "eval_images": 200, "eval_queries": 16},
    "distill": ["--rounds", "1", "--max_train_samples", "8", "--num_samples", "4", "--max_steps", "2"],
    "grpo": [
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "8",
        "--num_generations",
        "4",
        "--steps_per_generation",
        "1",
        "--curve_eval_steps",
        "1",
        "--curve_queries",
        "4",
    ],
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_task(shift: str, folder: Path, sizes: dict, prompt_format: str = "chat"):
    """The shift's GRAPE task saved where `--dataset_name` reads it, and its few-shot prompt (`prompt.json`)."""
    from datasets import load_from_disk

    from grape_hf.rewriting.prompts import get_prompt_template
    from grape_hf.shapes import build_grape_task

    data = folder / "data"
    if not (data / "dataset_dict.json").is_file():
        build_grape_task(shift, **sizes).save_to_disk(str(data))
    task = load_from_disk(str(data))
    # Demonstrations from the training world, with the target's caption as the rewrite: scenes of few objects (short
    # prompts), distinct languages (multilingual) or edit kinds (composed).
    count, objects = SHOTS[shift]
    rows = [row for row in task["train"] if len(row["target_caption"].replace(" and ", ", ").split(", ")) == objects]
    random.Random(f"shapes-grape-shots-{shift}").shuffle(rows)
    key = {"multilingual": "language", "composed": "edit_kind"}.get(shift)
    examples, seen = [], set()
    for row in rows:
        if len(examples) < count and not (key and row[key] in seen):
            seen.add(row.get(key))
            examples.append(
                {
                    "query": row["query"],
                    "rewrite": row["target_caption"],
                    **({"reference": row["reference"]} if shift == "composed" else {}),
                }
            )
    if prompt_format == "completion":  # the shift's plain-text prompt; multilingual already names no language
        base = get_prompt_template(shift, prompt_format="completion").to_dict()
        if shift == "long_form":
            base["system"] = LONG_FORM_COMPLETION
    else:
        base = MULTILINGUAL_PROMPT if shift == "multilingual" else get_prompt_template(shift).to_dict()
    template = get_prompt_template(shift, {**base, "examples": examples}, prompt_format=prompt_format)
    (folder / "prompt.json").write_text(json.dumps(template.to_dict(), indent=1, ensure_ascii=False) + "\n")
    return task, template


def run_stage(
    stage: str, shift: str, folder: Path, out: Path, extra: list[str], recipes: str, done: dict, *methods: str
) -> Path:
    """Run `grape_hf.training.distill` or `grape_hf.training.grpo` with its shapes config, unless it is done. A stage
    trained now (its folder was not in the cache, e.g. on a fresh machine) is another model than the one the recorded
    rows of `methods` measured: those rows are dropped, so they are measured again."""
    from grape_hf.training import stages

    data = ["--dataset_name", str(folder / "data"), "--shift", shift, "--use_cpu", "true", "--report_to", "none"]
    prompt = [] if "--init_rewriter" in extra else ["--prompt_template", str(folder / "prompt.json")]
    if not stages.is_finished(out):
        log(f"{shift}: {stage} -> {out}")
        for method in [m for m in methods if done.pop(m, None) is not None]:
            log(f"{shift}: {method}'s recorded row was of an earlier run of this stage: measured again after it")
    return stages.run_stage(stage, RECIPES / recipes / stage / "config_shapes.yaml", out, [*data, *extra, *prompt])


def visible_facts(texts: list[str], captions: list[str], context: int = 32) -> dict:
    """What CLIP's text tower reads of each text (its first `context` tokens, start and end included): the mean share
    of the target caption's attribute words (shape, colour, size, position) found there, and the texts' mean length."""
    from grape_hf.shapes import COLOURS, POSITIONS, SHAPES, SIZES

    tokenizer = load_retriever_tokenizer()
    vocabulary = {*COLOURS, *SHAPES, *SIZES, *POSITIONS}
    shares, lengths = [], []
    for text, caption in zip(texts, captions):
        ids = tokenizer.encode(text)
        lengths.append(len(ids) + 2)
        seen = set(tokenizer.decode(ids[: context - 2]).split())
        facts = [word for word in caption.split() if word in vocabulary]
        shares.append(sum(word in seen for word in facts) / max(len(facts), 1))
    return {
        "visible_facts": round(sum(shares) / max(len(shares), 1), 4),
        "clip_tokens": round(sum(lengths) / max(len(lengths), 1), 1),
    }


def load_retriever_tokenizer():
    import open_clip

    return open_clip.get_tokenizer(RETRIEVER.split(":", 1)[1].split("@")[0])


def run_shift(
    shift: str,
    folder: Path,
    sizes: dict,
    results: dict,
    save,
    retriever,
    variant: dict | None = None,
    shipped: Path | None = None,
    spec: dict = REWRITERS["smollm2-135m"],
) -> dict:
    """Every method of one shift, each evaluated on its validation queries as soon as it exists (cached in
    `results`); returns the GRPO runs' curves. `variant` (`name`, `stage`, `method`, `start_from`, `args`) adds one
    more stage:
    GRPO, `grpo-<name>`, evaluated as `grape_rank_<name>`, or self-distillation, `distill-<name>`, evaluated as
    `self_distillation_<name>`. `shipped` (the rewriter shipped now, about to be compared) is measured afresh as
    `previously_shipped`. `spec` is the rewriter's entry of `REWRITERS`."""
    import torch

    from grape_hf import RankScorer
    from grape_hf.metrics import METRICS, retrieval_metrics
    from grape_hf.models import cache_home
    from grape_hf.rewriting.devices import cpu_description, resolve_dtype
    from grape_hf.shapes.word_probe import word_recall
    from grape_hf.training.stages import best_of_n, load_fast_rewriter
    from grape_hf.training.stages import stage_minutes as minutes

    folder.mkdir(parents=True, exist_ok=True)
    task, template = build_task(shift, folder, sizes["task"], spec["prompt_format"])
    val = task["validation"]
    scorer = RankScorer(
        retriever,
        list(task["validation_corpus"]["image"]),
        cache_dir=cache_home() / "corpus_embeddings",
        show_progress_bar=False,
    )
    queries, targets, captions = list(val["query"]), list(val["target_id"]), list(val["target_caption"])
    references = list(val["reference"]) if shift == "composed" else None
    done = results.setdefault(shift, {})
    rewrites_file = folder / "rewrites.json"
    rewrites = json.loads(rewrites_file.read_text()) if rewrites_file.is_file() else {}

    # Each row records the CPU and dtype it was measured on (the CPU changes between sessions; greedy rewrites can
    # differ between bf16 and fp32).
    measured_on = {"cpu": cpu_description(), "dtype": str(resolve_dtype(spec["dtype"], "cpu")).removeprefix("torch.")}

    def record(name: str, texts: list[str], **info) -> None:
        ranks = scorer.ranks(texts, targets)
        done[name] = {**retrieval_metrics(ranks), **info, **measured_on}
        if shift == "multilingual":
            for language in sorted(set(val["language"])):
                keep = torch.tensor([lang == language for lang in val["language"]])
                results.setdefault(f"multilingual/{language}", {})[name] = retrieval_metrics(ranks[keep])
        if shift == "long_form":
            done[name].update(visible_facts(texts, captions))
        rewrites[name] = texts
        rewrites_file.write_text(json.dumps(rewrites, indent=1, ensure_ascii=False))
        save()
        log(f"{shift} / {name}: " + ", ".join(f"{m} {done[name][m]:.3f}" for m in METRICS))

    def rewriter(source: str):
        # the rewriter's dtype (SmolLM2: bf16, as its numbers were measured), LoRA merged: the fast path
        own = template if source == spec["model"] else None
        return load_fast_rewriter(source, template=own, dtype=spec["dtype"], max_new_tokens=32)

    def evaluate(name: str, source: str, **info) -> None:
        if name not in done:
            texts = [r[0] for r in rewriter(source).rewrite(queries, references=references, batch_size=16)]
            record(name, texts, **info)

    if "no_rewrite" not in done:
        record("no_rewrite", queries)
    if "oracle" not in done:
        record("oracle", captions)
    if shift == "composed" and "reference_caption" not in done:
        record("reference_caption", references)
    evaluate("zero_shot", spec["model"])
    own = sizes.get(shift, {})
    curves = {}
    # A variant from zero-shot needs none of the base stages: where their numbers are recorded and their folders are
    # gone (a fresh machine has no stage cache), they are not trained again.
    skip_base = (
        variant is not None
        and variant["start_from"] == "zero_shot"
        and all(m in done and not (folder / f).is_dir() for m, f in BASE_STAGES.items())
    )
    if skip_base:
        log(f"{shift}: base stages recorded in the results and not cached here: not trained again")
    else:
        curves = run_base_stages(shift, folder, sizes, own, evaluate, done, spec["recipes"])
    if variant:
        extra = (
            [*sizes["distill"], *own.get("distill", [])]
            if variant["stage"] == "distill"
            else ["--evaluate_before_after", "false", *sizes["grpo"], *own.get("grpo", [])]
        )
        start = (
            []
            if variant["start_from"] == "zero_shot"
            else ["--init_rewriter", str(stage_folder(variant["start_from"], folder))]
        )
        run = run_stage(
            variant["stage"],
            shift,
            folder,
            folder / f"{variant['stage']}-{variant['name']}",
            [*start, *extra, *variant["args"]],
            spec["recipes"],
            done,
            variant["method"],
        )
        evaluate(
            variant["method"],
            str(run),
            train_cpu_minutes=minutes(run),
            started_from=variant["start_from"],
            **{f"{variant['stage']}_args": variant["args"]},
        )
        if variant["stage"] == "grpo":
            curves[variant["name"]] = json.loads((run / "curves.json").read_text())
    if own.get("best_of", True) and "oracle_best_of_8" not in done:
        best, _ = best_of_n(rewriter(str(folder / "grpo-rank")), scorer, queries, targets, 8, references, batch_size=8)
        record("oracle_best_of_8", best, policy="grape_rank")
    # The word-level probe of the held-out greedy rewrites before and after training (no model runs).
    groups = list(val["language"]) if "language" in val.column_names else None
    results.setdefault("word_probes", {})[shift] = {
        m: word_recall([[t] for t in rewrites[m]], captions, groups) for m in WORD_PROBED if m in rewrites
    }
    if shipped is not None:  # measured now: an earlier entry may be of a rewriter shipped since, or removed
        done.pop("previously_shipped", None)
        if (shipped / "grape_rewriter.json").is_file():
            evaluate("previously_shipped", str(shipped))
    results["_meta"][shift] = {
        "eval_queries": len(val),
        "train_queries": len(task["train"]),
        "corpus": len(scorer),
        "shots": SHOTS[shift][0],
    }
    return curves


# The methods whose held-out rewrites get the word-level probe (results["word_probes"][shift][method]).
WORD_PROBED = ("no_rewrite", "zero_shot", "self_distillation", "grape_rank", "grpo_similarity")
# The base stages' methods and their folders in a shift's stage cache.
BASE_STAGES = {"self_distillation": "distill", "grape_rank": "grpo-rank", "grpo_similarity": "grpo-similarity"}


def run_base_stages(shift: str, folder: Path, sizes: dict, own: dict, evaluate, done: dict, recipes: str) -> dict:
    """Self-distillation from zero-shot, then GRPO `rank` and `similarity` from the better of the two (held-out R@10;
    self-distillation on a tie), each evaluated; returns the GRPO runs' curves."""
    from grape_hf.training.stages import stage_minutes as minutes

    distill = [*sizes["distill"], *own.get("distill", [])]
    distilled = run_stage("distill", shift, folder, folder / "distill", distill, recipes, done, "self_distillation")
    evaluate("self_distillation", str(distilled), train_cpu_minutes=minutes(distilled), started_from="zero_shot")
    start = "self_distillation" if done["self_distillation"]["R@10"] >= done["zero_shot"]["R@10"] else "zero_shot"
    init = ["--init_rewriter", str(distilled)] if start == "self_distillation" else []
    curves = {}
    for reward, name in (("rank", "grape_rank"), ("similarity", "grpo_similarity")):
        run = run_stage(
            "grpo",
            shift,
            folder,
            folder / f"grpo-{reward}",
            [
                *init,
                "--reward_funcs",
                reward,
                "--evaluate_before_after",
                "false",
                *sizes["grpo"],
                *own.get("grpo", []),
            ],
            recipes,
            done,
            *((name, "oracle_best_of_8") if reward == "rank" else (name,)),
        )
        evaluate(name, str(run), train_cpu_minutes=minutes(run), started_from=start)
        curves[reward] = json.loads((run / "curves.json").read_text())
    return curves


def stage_folder(method: str, folder: Path) -> Path:
    """The rewriter folder of a method this script trains: grape_rank -> folder/grpo-rank, grape_rank_<v> ->
    folder/grpo-<v>, self_distillation_<v> -> folder/distill-<v>."""
    from grape_hf.training.stages import method_folder

    if method in BASE_STAGES:
        return method_folder(method, folder, BASE_STAGES)
    return method_folder(method, folder, {"grape_rank": "grpo", "self_distillation": "distill"})


def main() -> None:
    import torch

    from grape_hf import load_retriever

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Tiny sizes, to check the pipeline.")
    parser.add_argument(
        "--rewriter",
        default="smollm2-135m",
        choices=sorted(REWRITERS),
        help="The base model to rewrite with (its recipes: recipes/<model>/{distill,grpo}/config_shapes.yaml).",
    )
    parser.add_argument(
        "--output_dir",
        type=Path,
        default=None,
        help="Stage cache (default outputs/shapes_grape, outputs/shapes_grape_<rewriter> for another rewriter).",
    )
    parser.add_argument("--shifts", nargs="+", default=list(SHIFTS), choices=SHIFTS)
    parser.add_argument(
        "--ship",
        action="store_true",
        help="Ship each shift's grape_rank rewriter (or the --variant's) into the package if it beats "
        "the one shipped now (measured again on the same queries).",
    )
    parser.add_argument(
        "--variant",
        default=None,
        help="After the stages, train one more stage named VARIANT from --start_from: GRPO with "
        "--grpo_args (folder grpo-VARIANT, method grape_rank_VARIANT) or self-distillation with "
        "--distill_args (folder distill-VARIANT, method self_distillation_VARIANT), on top of the "
        "sizes.",
    )
    parser.add_argument(
        "--start_from",
        default="self_distillation",
        metavar="METHOD",
        help="The stage the variant starts from: zero_shot (SmolLM2 with the shift's prompt), self_distillation, "
        "grape_rank, grape_rank_<variant>, self_distillation_<variant>.",
    )
    parser.add_argument(
        "--grpo_args",
        nargs=argparse.REMAINDER,
        default=[],
        help="Recipe overrides for the variant, e.g. --grpo_args --reward_funcs reciprocal_rank (must come last).",
    )
    parser.add_argument(
        "--distill_args",
        nargs=argparse.REMAINDER,
        default=[],
        help="Make the variant a self-distillation stage with these recipe overrides, e.g. "
        "--distill_args --max_rank 1 --rounds 3 (must come last).",
    )
    args = parser.parse_args()
    if (args.grpo_args or args.distill_args) and not args.variant:
        parser.error("--grpo_args / --distill_args change what a stage trains: name the run with --variant.")
    if args.grpo_args and args.distill_args:
        parser.error("a variant is one stage: give --grpo_args or --distill_args, not both.")
    variant = None
    if args.variant:
        stage = "distill" if args.distill_args else "grpo"
        method = f"{'self_distillation' if stage == 'distill' else 'grape_rank'}_{args.variant}"
        variant = {
            "name": args.variant,
            "stage": stage,
            "method": method,
            "start_from": args.start_from,
            "args": args.distill_args or args.grpo_args,
        }
    spec = REWRITERS[args.rewriter]
    sizes = QUICK if args.quick else with_overrides(FULL, spec.get("sizes", {}))
    tag = "_quick" if args.quick else ""
    suffix = f"_{spec['results_key']}" if spec["results_key"] else ""
    out = args.output_dir or REPO / "outputs" / f"shapes_grape{suffix}{tag}"
    results_file = RESULTS / f"shapes{tag}.json"
    everything = json.loads(results_file.read_text()) if results_file.is_file() else {}
    # SmolLM2's rows are the file's top level (as before other rewriters); another rewriter's sit under its key.
    results = everything.setdefault(spec["results_key"], {}) if spec["results_key"] else everything
    results.setdefault("_meta", {})
    command = "python benchmarks/shapes_grape.py " + " ".join(sys.argv[1:])

    def save() -> None:
        results_file.write_text(json.dumps(everything, indent=2, ensure_ascii=False) + "\n")

    retriever = load_retriever(RETRIEVER, device="cpu")
    curves = {}
    dest_root = out / "shipped" if args.quick else ASSETS
    for shift in args.shifts:
        shipped = dest_root / spec["shipped"].format(shift=shift.replace("_", "-")) if args.ship else None
        curves[shift] = run_shift(shift, out / shift, sizes, results, save, retriever, variant, shipped, spec)
    if variant:  # the main command stays the one that trained the stages
        results["_meta"].setdefault("variants", {})[args.variant] = {"command": command, "shifts": args.shifts}
    else:
        results["_meta"]["command"] = command
    for shift in args.shifts if args.ship else []:
        ship(shift, out / shift, results, variant["method"] if variant else "grape_rank", dest_root, spec)
    results["_meta"].update(
        retriever=RETRIEVER,
        direction="text -> image",
        rewriter=spec["model"],
        stages=sizes,
        torch_threads=torch.get_num_threads(),
    )
    save()
    report(results, curves, tag + suffix)


def with_overrides(sizes: dict, overrides: dict) -> dict:
    """`sizes` with a rewriter's overrides: recipe flags appended (the last value of a flag wins), a shift's own
    settings merged."""
    out = dict(sizes)
    for key, value in overrides.items():
        if isinstance(value, list):
            out[key] = [*sizes.get(key, []), *value]
        else:
            out[key] = {**sizes.get(key, {}), **value}
    return out


# What a shift's rewriter is judged by when it replaces the shipped one: composed queries are easy at R@10 from the
# reference caption alone, so there the first place counts.
HEADLINE = {"composed": "R@1"}


def ship(shift: str, folder: Path, results: dict, method: str, dest_root: Path, spec: dict) -> None:
    """Copy METHOD's rewriter folder into the package with its held-out numbers and its chain of stages on the card,
    if it beats the rewriter shipped now on the shift's headline metric (R@1 for composed, R@10 otherwise)."""
    from grape_hf.metrics import METRICS
    from grape_hf.training.stages import ship_rewriter

    done, size, metric = results[shift], results["_meta"][shift], HEADLINE.get(shift, "R@10")
    earlier = done.get("previously_shipped")
    if earlier and done[method][metric] <= earlier[metric]:
        log(
            f"{shift}: not shipped: {method} {metric} {done[method][metric]} does not beat the shipped rewriter's "
            f"{earlier[metric]}"
        )
        return
    chain = [method]  # the stages that led to METHOD, latest first
    while done[chain[-1]].get("started_from") not in (None, "zero_shot"):
        chain.append(done[chain[-1]]["started_from"])
    variants = results["_meta"].get("variants", {})
    names = [m.removeprefix("grape_rank_").removeprefix("self_distillation_") for m in reversed(chain)]
    commands = [results["_meta"]["command"]] + [variants[n]["command"] for n in names if n in variants]
    training = dict(
        method=method,
        stages=list(reversed(chain)),
        command=" && ".join(commands),
        results="benchmarks/results/shapes.json",
    )
    evaluation = {
        "before": {m: done["no_rewrite"][m] for m in METRICS},
        "zero_shot": {m: done["zero_shot"][m] for m in METRICS},
        "start": {m: done[done[method].get("started_from", "self_distillation")][m] for m in METRICS},
        "after": {m: done[method][m] for m in METRICS},
        **({"previously_shipped": {m: earlier[m] for m in METRICS}} if earlier else {}),
        "split": "shapes world seed 1 (held out)",
        "dataset": f"grape_hf.shapes {shift}",
        "num_queries": size["eval_queries"],
        "corpus_size": size["corpus"],
    }
    dest = dest_root / spec["shipped"].format(shift=shift.replace("_", "-"))
    ship_rewriter(stage_folder(method, folder), dest, evaluation, training)
    log(f"shipped {method} to {dest}")


def report(results: dict, curves: dict, tag: str) -> None:
    """shapes_grape.md (one table per shift) and the R@10 bars and GRPO curves."""
    from grape_hf.evaluation import markdown_table, plot_curves

    shifts = [s for s in SHIFTS if s in results]
    lines = [
        f"# GRAPE on the shapes CLIP track{' (quick mode)' if tag else ''}",
        "",
        f"`{results['_meta']['command'].strip()}`; retriever `{RETRIEVER}`, rewriter {results['_meta']['rewriter']}.",
        "",
    ]
    for shift in shifts:
        rows = {m: results[shift][m] for m in METHODS if m in results[shift]}
        rows.update({m: v for m, v in results[shift].items() if m.startswith(("grape_rank_", "self_distillation_"))})
        lines += [f"## {shift}", "", markdown_table(rows), ""]
        if shift == "long_form":
            lines += [
                "What CLIP's 32-token window holds: the share of the target caption's attribute words in it, "
                "and the text's length in CLIP tokens.",
                "",
                "| method | attribute words seen | CLIP tokens |",
                "|---|---|---|",
            ]
            lines += [
                f"| {m} | {v['visible_facts']:.2f} | {v['clip_tokens']:.0f} |"
                for m, v in rows.items()
                if "visible_facts" in v
            ]
            lines.append("")
    (RESULTS / f"shapes_grape{tag}.md").write_text("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(9, 3.6))
    shown = [m for m in METHODS if m != "reference_caption"]
    for j, method in enumerate(shown):
        values = [results[s].get(method, {}).get("R@10", 0) for s in shifts]
        ax.bar([i + (j - len(shown) / 2) * 0.11 for i in range(len(shifts))], values, width=0.11, label=method)
    ax.set_xticks(range(len(shifts)), shifts)
    ax.set_ylabel("R@10 (held out)")
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(RESULTS / f"shapes_grape{tag}_r10.png", dpi=110)
    plt.close(fig)
    for shift, runs in curves.items():
        if not runs:  # no GRPO stage ran this time: keep the plot on record
            continue
        plot_curves(
            {f"GRPO {r}": c for r, c in runs.items()},
            RESULTS / f"shapes_grape{tag}_curves_{shift}.png",
            title=f"shapes {shift}: GRPO stages",
        )


if __name__ == "__main__":
    main()
