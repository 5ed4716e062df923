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
    python benchmarks/shapes_grape.py --rewriter gemma3-270m --shifts long_form --variant continued \
        --start_from grape_rank --grpo_args --max_steps 60   # 60 more GRPO rank steps: grape_rank_continued
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
        "keep_tokenizer": False,  # 32 MB: the shipped folder loads the base model's rebuilt tokenizer
        # On top of FULL: more training queries and steps (one shift's stages ~35 min on the 2-core AVX2 CPU in fp32,
        # ~3 completions/s), and the oracle best of 8 on every shift.
        "sizes": {
            "distill": ["--max_train_samples", "192"],
            "grpo": ["--max_steps", "40"],
            "multilingual": {"best_of": True},
            # Prompted Gemma's long-form rewrites rank far from the top 10 (R@10 0.01): a top-10 filter keeps nothing
            # of 32 queries, so more queries and a top-100 filter (still only samples that beat the greedy rewrite).
            "long_form": {
                "best_of": True,
                "distill": ["--max_train_samples", "192", "--max_rank", "100"],
                "grpo": ["--max_steps", "40", "--curve_eval_steps", "10"],
            },
        },
    },
}
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
    """The shift's GRAPE task saved where `--dataset_name` reads it, and its few-shot prompt (`prompt.json`): the
    shift's prompt (`grape_hf.shapes.prompts` where the built-in one does not fit) with demonstrations from the
    training world."""
    from datasets import load_from_disk

    from grape_hf.rewriting.prompts import get_prompt_template
    from grape_hf.shapes import build_grape_task
    from grape_hf.shapes.prompts import LONG_FORM_COMPLETION, MULTILINGUAL_CHAT, few_shot_examples

    data = folder / "data"
    if not (data / "dataset_dict.json").is_file():
        build_grape_task(shift, **sizes).save_to_disk(str(data))
    task = load_from_disk(str(data))
    base = get_prompt_template(shift, prompt_format=prompt_format).to_dict()
    if prompt_format == "completion" and shift == "long_form":
        base["system"] = LONG_FORM_COMPLETION
    elif prompt_format == "chat" and shift == "multilingual":
        base = MULTILINGUAL_CHAT
    examples = few_shot_examples(shift, task["train"])
    template = get_prompt_template(shift, {**base, "examples": examples}, prompt_format=prompt_format)
    (folder / "prompt.json").write_text(json.dumps(template.to_dict(), indent=1, ensure_ascii=False) + "\n")
    return task, template


# The trained methods: stage and folder in a shift's stage cache (a variant <method>_<name>: <folder>-<name>).
TRAINED = {"self_distillation": ("distill", "distill"), "grape_rank": ("grpo", "grpo-rank")}
TRAINED["grpo_similarity"] = ("grpo", "grpo-similarity")
# The methods whose held-out rewrites get the word-level probe (results["word_probes"][shift][method]).
WORD_PROBED = ("no_rewrite", "zero_shot", "self_distillation", "grape_rank", "grpo_similarity")


def run_shift(
    shift: str, folder: Path, sizes: dict, results: dict, save, retriever, args, spec: dict, dest_root: Path
) -> dict:
    """Every method of one shift, each measured on its validation queries as soon as it exists (kept in `results`),
    the stages chained by `grape_hf.training.chain.StageChain`; returns the GRPO runs' curves."""
    import open_clip
    import torch

    from grape_hf import RankScorer
    from grape_hf.metrics import retrieval_metrics
    from grape_hf.models import cache_home
    from grape_hf.rewriting.devices import cpu_description, resolve_dtype
    from grape_hf.shapes.prompts import SHOTS
    from grape_hf.shapes.word_probe import visible_facts, word_recall
    from grape_hf.training.chain import StageChain
    from grape_hf.training.stages import best_of_n, load_fast_rewriter

    folder.mkdir(parents=True, exist_ok=True)
    task, template = build_task(shift, folder, sizes["task"], spec["prompt_format"])
    val = task["validation"]
    corpus = list(task["validation_corpus"]["image"])
    scorer = RankScorer(retriever, corpus, cache_dir=cache_home() / "corpus_embeddings", show_progress_bar=False)
    queries, targets, captions = list(val["query"]), list(val["target_id"]), list(val["target_caption"])
    references = list(val["reference"]) if shift == "composed" else None
    done = results.setdefault(shift, {})
    rewrites_file = folder / "rewrites.json"
    rewrites = json.loads(rewrites_file.read_text()) if rewrites_file.is_file() else {}
    # Each row records the CPU and dtype it was measured on (the CPU changes between sessions; greedy rewrites can
    # differ between bf16 and fp32).
    measured_on = {"cpu": cpu_description(), "dtype": str(resolve_dtype(spec["dtype"], "cpu")).removeprefix("torch.")}
    clip_tokenizer = open_clip.get_tokenizer(RETRIEVER.split(":", 1)[1].split("@")[0])

    def score(name: str, texts: list[str]) -> dict:
        ranks = scorer.ranks(texts, targets)
        if shift == "multilingual":
            for language in sorted(set(val["language"])):
                keep = torch.tensor([lang == language for lang in val["language"]])
                results.setdefault(f"multilingual/{language}", {})[name] = retrieval_metrics(ranks[keep])
        rewrites[name] = texts
        rewrites_file.write_text(json.dumps(rewrites, indent=1, ensure_ascii=False))
        extra = visible_facts(texts, captions, clip_tokenizer) if shift == "long_form" else {}
        return {**retrieval_metrics(ranks), **extra, **measured_on}

    def rewriter(source: str):  # the rewriter's dtype (SmolLM2: bf16, as its numbers were measured), LoRA merged
        own = template if source == spec["model"] else None
        return load_fast_rewriter(source, template=own, dtype=spec["dtype"], max_new_tokens=32)

    def measure(name: str, source: str) -> dict:
        return score(name, [r[0] for r in rewriter(source).rewrite(queries, references=references, batch_size=16)])

    stage_flags = [
        "--dataset_name",
        str(folder / "data"),
        "--shift",
        shift,
        "--use_cpu",
        "true",
        "--report_to",
        "none",
    ]
    chain = StageChain(
        folder,
        TRAINED,
        {stage: RECIPES / spec["recipes"] / stage / "config_shapes.yaml" for stage in ("distill", "grpo")},
        measure,
        rows=done,
        overrides=stage_flags,
        base_overrides=["--prompt_template", str(folder / "prompt.json")],
        save=save,
        command="python benchmarks/shapes_grape.py " + " ".join(sys.argv[1:]),
        log=lambda msg: log(f"{shift} / {msg}"),
    )
    for name, texts in (("no_rewrite", queries), ("oracle", captions), ("reference_caption", references)):
        if texts is not None and name not in done:
            done[name] = score(name, texts)
            save()
    chain.measure_row("zero_shot", spec["model"])
    own = sizes.get(shift, {})
    distill, grpo = [*sizes["distill"], *own.get("distill", [])], [*sizes["grpo"], *own.get("grpo", [])]
    curves = {}
    # A variant from zero-shot needs none of the base stages: where their rows are recorded and their folders are
    # gone (a fresh machine has no stage cache), they are not trained again.
    variant = args.variant and f"{variant_base(args)}_{args.variant}"
    if variant and args.start_from == "zero_shot" and all(m in done and not chain.folder(m).is_dir() for m in TRAINED):
        log(f"{shift}: base stages recorded in the results and not cached here: not trained again")
    else:  # self-distillation, then GRPO rank and similarity from the better of it and zero-shot (held-out R@10)
        try:
            chain.train("self_distillation", start="zero_shot", args=distill)
        except RuntimeError as err:  # no sample beat the greedy rewrite within the filter: nothing to distil
            if "no sampled rewrite beat the greedy one" not in str(err):
                raise
            log(f"{shift}: self-distillation kept nothing ({err}); GRPO starts from zero-shot")
            results["_meta"].setdefault("kept_nothing", {})[shift] = {"self_distillation": str(err)}
        sd, zs = done.get("self_distillation", {}).get("R@10", -1), done["zero_shot"]["R@10"]
        start = "self_distillation" if sd >= zs else "zero_shot"
        for reward, name in (("rank", "grape_rank"), ("similarity", "grpo_similarity")):
            flags = ["--reward_funcs", reward, "--evaluate_before_after", "false", *grpo]
            run = chain.train(name, start=start, args=flags, drops=("oracle_best_of_8",) if reward == "rank" else ())
            curves[reward] = json.loads((run / "curves.json").read_text())
    if variant:  # one more stage, on top of the sizes
        extra = [*distill, *args.distill_args] if args.distill_args else ["--evaluate_before_after", "false"]
        extra = extra if args.distill_args else [*extra, *grpo, *args.grpo_args]
        run = chain.train(variant, start=args.start_from, args=extra)
        if not args.distill_args:
            curves[args.variant] = json.loads((run / "curves.json").read_text())
    if own.get("best_of", True) and "oracle_best_of_8" not in done:
        policy = rewriter(str(chain.finished_folder("grape_rank")))
        best, _ = best_of_n(policy, scorer, queries, targets, 8, references, batch_size=8)
        done["oracle_best_of_8"] = {**score("oracle_best_of_8", best), "policy": "grape_rank"}
        save()
    # The word-level probe of the held-out greedy rewrites before and after training (no model runs).
    groups = list(val["language"]) if "language" in val.column_names else None
    results.setdefault("word_probes", {})[shift] = {
        m: word_recall([[t] for t in rewrites[m]], captions, groups)
        for m in rewrites
        if m in WORD_PROBED or m.startswith(tuple(f"{base}_" for base in TRAINED))
    }
    if args.ship:  # measured now: an earlier entry may be of a rewriter shipped since, or removed
        done.pop("previously_shipped", None)
        shipped = dest_root / spec["shipped"].format(shift=shift.replace("_", "-"))
        if (shipped / "grape_rewriter.json").is_file():
            chain.measure_row("previously_shipped", shipped)
        method = variant or "grape_rank"
        chain.ship(
            method,
            shipped,
            before="no_rewrite",
            zero_shot="zero_shot",
            metric=HEADLINE.get(shift, "R@10"),
            evaluation={
                "split": "shapes world seed 1 (held out)",
                "dataset": f"grape_hf.shapes {shift}",
                "num_queries": len(val),
                "corpus_size": len(scorer),
            },
            training={"results": "benchmarks/results/shapes.json", "results_key": spec["results_key"]},
            keep_tokenizer=spec.get("keep_tokenizer", True),
        )
    shots = SHOTS[shift][0]
    results["_meta"][shift] = {"eval_queries": len(val), "train_queries": len(task["train"]), "corpus": len(scorer)}
    if not args.variant:  # the command that trained this shift's stages (the top-level one is the latest run's)
        results["_meta"][shift]["command"] = "python benchmarks/shapes_grape.py " + " ".join(sys.argv[1:])
    results["_meta"][shift]["shots"] = shots
    return curves


def variant_base(args) -> str:
    """The method a variant extends: self-distillation (--distill_args), GRPO `similarity` (--grpo_args naming that
    reward), else GRPO `rank`."""
    if args.distill_args:
        return "self_distillation"
    flags = args.grpo_args
    rewards = flags[flags.index("--reward_funcs") + 1 :] if "--reward_funcs" in flags else []
    return "grpo_similarity" if rewards[:1] == ["similarity"] else "grape_rank"


# What a shift's rewriter is judged by when it replaces the shipped one: composed queries are easy at R@10 from the
# reference caption alone, so there the first place counts.
HEADLINE = {"composed": "R@1"}


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
        "--grpo_args (folder grpo-rank-VARIANT, method grape_rank_VARIANT; with --reward_funcs similarity "
        "grpo-similarity-VARIANT, grpo_similarity_VARIANT) or self-distillation with "
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
    if args.variant:  # the main command stays the one that trained the stages; a variant's is kept under its method
        method = f"{variant_base(args)}_{args.variant}"
        results["_meta"].setdefault("variants", {})[method] = {"command": command, "shifts": args.shifts}
    else:
        results["_meta"]["command"] = command
    dest_root = out / "shipped" if args.quick else ASSETS
    curves = {s: run_shift(s, out / s, sizes, results, save, retriever, args, spec, dest_root) for s in args.shifts}
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
        variants = tuple(f"{method}_" for method in TRAINED)
        rows.update({m: v for m, v in results[shift].items() if m.startswith(variants)})
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
