"""What rank-filtered self-distillation has to pick from on the shapes shifts (long-form, multilingual).

    python benchmarks/shapes_samples.py kept outputs/shapes_grape/long_form/distill-lf2/round-*
    python benchmarks/shapes_samples.py probe outputs/shapes_grape/long_form/distill --queries 48
    python benchmarks/shapes_samples.py kept outputs/shapes_grape/multilingual/distill-r1z/round-* \
        --task outputs/shapes_grape/multilingual/data
    python benchmarks/shapes_samples.py probe HuggingFaceTB/SmolLM2-135M-Instruct \
        --task outputs/shapes_grape/multilingual/data --queries 96 --temperatures 1.0 --top_ps 1.0

`kept` reads the rows each round kept (`kept.jsonl`) and counts, against the training targets' captions, the share of
the target's attribute words (colour, shape, size, position) in the kept rewrites, the rewrites with none of them, the
rewrites with a wrong one, and the chatty ones (more than 15 words). No model runs.

`probe` samples 8 rewrites of the first `--queries` training queries (multilingual: as many of each language) with a
rewriter (a rewriter folder, or the base model with a few-shot prompt: `--prompt`, by default `prompt.json` beside the
task) at each temperature and top-p, and ranks the target among the training images for each. It reports the best
of 8 (R@1, R@10), how often it beats the greedy rewrite, the samples' median rank (~3 min per setting on long-form
here), and how often the samples hold each of the target's attribute words (per language on multilingual).

Both read the task `benchmarks/shapes_grape.py` saved (`--task`; its folder name is the shift). Each writes its part
of benchmarks/results/shapes_samples.json (shift → `kept` → round folder, or `probe` → rewriter → numbers).
"""

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).parent / "results" / "shapes_samples.json"
TASK = "outputs/shapes_grape/long_form/data"

from grape_hf.shapes.word_probe import attribute_words, word_recall  # noqa: E402 - after the offline switch


def kept(rounds: list[str], task: str) -> dict:
    from datasets import load_from_disk

    train = load_from_disk(task)["train"]
    caption = dict(zip(train["query"], train["target_caption"]))
    language = dict(zip(train["query"], train["language"])) if "language" in train.column_names else {}
    results = {}
    for folder in rounds:
        rows = [json.loads(line) for line in open(Path(folder) / "kept.jsonl", encoding="utf-8")]
        share, none, wrong, chatty = [], 0, 0, 0
        per_language = defaultdict(int)
        for row in rows:
            target = attribute_words(caption[row["query"]])
            said = attribute_words(row["rewrite"])
            share.append(len(target & said) / len(target))
            none += not target & said
            wrong += bool(said - target)
            chatty += len(row["rewrite"].split()) > 15
            if language:
                per_language[language[row["query"]]] += 1
        stats = json.loads((Path(folder) / "stats.json").read_text())
        results[folder] = {
            "kept": len(rows),
            "queries": stats["queries"],
            "train_oracle_R@1": stats["oracle_R@1"],
            "train_oracle_R@10": stats["oracle_R@10"],
            "share_of_target_words": round(sum(share) / max(len(rows), 1), 3),
            "with_no_target_word": none,
            "with_a_wrong_word": wrong,
            "longer_than_15_words": chatty,
            **({"kept_per_language": dict(sorted(per_language.items()))} if language else {}),
        }
        print(folder, json.dumps(results[folder]), flush=True)
    return results


def probe(
    rewriter_path: str, task: str, num_queries: int, temperatures, top_ps, prompt: Path, dtype: str = "auto"
) -> dict:
    from datasets import load_from_disk

    from grape_hf import RankScorer, load_retriever
    from grape_hf.models import cache_home
    from grape_hf.rewriting.prompts import get_prompt_template
    from grape_hf.training.stages import load_fast_rewriter

    data = load_from_disk(task)
    train = data["train"]
    if "language" in train.column_names:  # the split runs language by language: take the first of each, in turn
        column = train["language"]
        languages = sorted(set(column))
        firsts = {g: [i for i, x in enumerate(column) if x == g] for g in languages}
        train = train.select([firsts[g][k] for k in range(num_queries // len(languages)) for g in languages])
        num_queries = len(train)
    else:
        train = train.select(range(num_queries))
    retriever = load_retriever("open_clip:grape-shapes-clip@grape-shapes", device="cpu")
    scorer = RankScorer(
        retriever,
        list(data["train_corpus"]["image"]),
        cache_dir=cache_home() / "corpus_embeddings",
        show_progress_bar=False,
    )
    template = None
    if not Path(rewriter_path).is_dir() and prompt.is_file():  # the base model: the few-shot prompt given
        template = get_prompt_template(template=str(prompt))
    # merged weights in `dtype` (SmolLM2's probes ran in bf16 on an AMX CPU; "auto": bf16 only where native)
    rewriter = load_fast_rewriter(rewriter_path, template=template, dtype=dtype, max_new_tokens=32)
    queries, targets, captions = list(train["query"]), list(train["target_id"]), list(train["target_caption"])
    groups = list(train["language"]) if "language" in train.column_names else ["all"] * num_queries
    greedy = scorer.ranks([r[0] for r in rewriter.rewrite(queries, batch_size=16)], targets)
    results = {
        "rewriter": rewriter_path,
        "queries": num_queries,
        "greedy_R@10": round(float((greedy <= 10).float().mean()), 3),
    }
    for temperature in temperatures:
        for top_p in top_ps:
            start = time.time()
            samples = rewriter.rewrite(
                queries, num_rewrites=8, batch_size=8, do_sample=True, temperature=temperature, top_k=0, top_p=top_p
            )
            ranks = scorer.ranks([s for group in samples for s in group], [t for t in targets for _ in range(8)])
            ranks = ranks.view(num_queries, 8)
            best = ranks.min(dim=1).values
            setting = {
                "best_of_8_R@1": round(float((best <= 1).float().mean()), 3),
                "best_of_8_R@10": round(float((best <= 10).float().mean()), 3),
                "best_beats_greedy": round(float((best < greedy).float().mean()), 3),
                "median_sample_rank": float(ranks.float().median()),
                "seconds": round(time.time() - start),
            }
            if len(set(groups)) > 1:
                setting["best_of_8_R@10_per_language"] = {
                    g: round(float((best[[x == g for x in groups]] <= 10).float().mean()), 3)
                    for g in sorted(set(groups))
                }
            setting["word_recall"] = word_recall(samples, captions, groups)
            results[f"T{temperature}_top_p{top_p}"] = setting
            print(temperature, top_p, json.dumps({k: v for k, v in setting.items() if k != "word_recall"}), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("kept", "probe"))
    parser.add_argument("paths", nargs="+", help="kept: round folders; probe: one rewriter folder or the base model.")
    parser.add_argument("--task", default=TASK, help=f"The shift's task folder (default {TASK}).")
    parser.add_argument("--queries", type=int, default=48, help="probe: training queries to sample (default 48).")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.5, 0.8], help="probe (default 0.5 0.8).")
    parser.add_argument(
        "--prompt",
        default=None,
        help="probe, with the base model: its few-shot prompt (default: prompt.json beside --task).",
    )
    parser.add_argument("--dtype", default="auto", help="probe: the rewriter's dtype (default auto).")
    parser.add_argument("--top_ps", type=float, nargs="+", default=[1.0, 0.9], help="probe (default 1.0 0.9).")
    args = parser.parse_args()
    if not Path(args.task).is_dir():
        parser.error(f"--task {args.task}: no such folder; run benchmarks/shapes_grape.py for that shift first.")
    if args.mode == "probe" and len(args.paths) != 1:
        parser.error(f"probe takes one rewriter folder, got {len(args.paths)}: {args.paths}.")
    shift = Path(args.task).parent.name
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    done = results.setdefault(shift, {})
    if args.mode == "kept":
        done.setdefault("kept", {}).update(kept(args.paths, args.task))
    else:
        prompt = Path(args.prompt or Path(args.task).parent / "prompt.json")
        name = args.paths[0] if Path(args.paths[0]).is_dir() else f"{args.paths[0]} with {prompt}"
        done.setdefault("probe", {})[name] = probe(
            args.paths[0], args.task, args.queries, args.temperatures, args.top_ps, prompt, args.dtype
        )
    command = " ".join(["python benchmarks/shapes_samples.py", *sys.argv[1:]])
    meta = done.setdefault("_meta", {})
    if args.mode == "kept":
        meta["kept"] = command
    else:
        meta.setdefault("probe", {})[name] = command
    RESULTS.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
