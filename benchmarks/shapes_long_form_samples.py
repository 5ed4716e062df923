"""What rank-filtered self-distillation has to pick from on long-form shape queries.

    python benchmarks/shapes_long_form_samples.py kept outputs/shapes_grape/long_form/distill-lf2/round-*
    python benchmarks/shapes_long_form_samples.py probe outputs/shapes_grape/long_form/distill --queries 48

`kept` reads the rows each round kept (`kept.jsonl`) and counts, against the training targets' captions, the share of
the target's attribute words (colour, shape, size, position) in the kept rewrites, the rewrites with none of them, the
rewrites with a wrong one, and the chatty ones (more than 15 words). No model runs.

`probe` samples 8 rewrites of the first `--queries` training queries with a rewriter at temperatures 0.5 and 0.8,
each with top-p 1.0 and 0.9, ranks the target among the 1,000 training images for each, and reports the best of 8
(R@1, R@10), how often it beats the greedy rewrite, and the samples' median rank (~3 min per setting here).

Both read the task `benchmarks/shapes_grape.py` saved (`--task`). Each writes its part of
benchmarks/results/shapes_long_form_samples.json.
"""

import argparse
import json
import os
import re
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).parent / "results" / "shapes_long_form_samples.json"
TASK = "outputs/shapes_grape/long_form/data"


def kept(rounds: list[str], task: str) -> dict:
    from datasets import load_from_disk

    from grape_hf.shapes import COLOURS, POSITIONS, SHAPES, SIZES

    vocabulary = {*COLOURS, *SHAPES, *SIZES, *POSITIONS}
    train = load_from_disk(task)["train"]
    caption = dict(zip(train["query"], train["target_caption"]))
    results = {}
    for folder in rounds:
        rows = [json.loads(line) for line in open(Path(folder) / "kept.jsonl", encoding="utf-8")]
        share, none, wrong, chatty = [], 0, 0, 0
        for row in rows:
            target = {w for w in re.findall(r"[a-z]+", caption[row["query"]].lower()) if w in vocabulary}
            words = set(re.findall(r"[a-z]+", row["rewrite"].lower()))
            share.append(len(target & words) / len(target))
            none += not target & words
            wrong += bool((words & vocabulary) - target)
            chatty += len(row["rewrite"].split()) > 15
        stats = json.loads((Path(folder) / "stats.json").read_text())
        results[folder] = {
            "kept": len(rows),
            "queries": stats["queries"],
            "train_oracle_R@10": stats["oracle_R@10"],
            "share_of_target_words": round(sum(share) / len(rows), 3),
            "with_no_target_word": none,
            "with_a_wrong_word": wrong,
            "longer_than_15_words": chatty,
        }
        print(folder, json.dumps(results[folder]), flush=True)
    return results


def probe(rewriter_path: str, task: str, num_queries: int) -> dict:
    import torch
    from datasets import load_from_disk

    from grape_hf import CLIPRankScorer, QueryRewriter, load_retriever
    from grape_hf.models import cache_home

    data = load_from_disk(task)
    train = data["train"].select(range(num_queries))
    retriever = load_retriever("open_clip:grape-shapes-clip@grape-shapes", device="cpu")
    scorer = CLIPRankScorer(retriever, list(data["train_corpus"]["image"]),
                            cache_dir=cache_home() / "corpus_embeddings", show_progress_bar=False)  # fmt: skip
    rewriter = QueryRewriter.from_pretrained(rewriter_path, dtype=torch.bfloat16, max_new_tokens=32)
    if hasattr(rewriter.model, "merge_and_unload"):
        rewriter.model = rewriter.model.merge_and_unload()  # merged bf16 weights: the fast path
    queries, targets = list(train["query"]), list(train["target_id"])
    greedy = scorer.ranks([r[0] for r in rewriter.rewrite(queries, batch_size=16)], targets)
    results = {"rewriter": rewriter_path, "queries": num_queries,
               "greedy_R@10": round(float((greedy <= 10).float().mean()), 3)}  # fmt: skip
    for temperature in (0.5, 0.8):
        for top_p in (1.0, 0.9):
            start = time.time()
            samples = rewriter.rewrite(queries, num_rewrites=8, batch_size=8, do_sample=True,
                                       temperature=temperature, top_k=0, top_p=top_p)  # fmt: skip
            ranks = scorer.ranks([s for group in samples for s in group], [t for t in targets for _ in range(8)])
            ranks = ranks.view(num_queries, 8)
            best = ranks.min(dim=1).values
            results[f"T{temperature}_top_p{top_p}"] = {
                "best_of_8_R@1": round(float((best <= 1).float().mean()), 3),
                "best_of_8_R@10": round(float((best <= 10).float().mean()), 3),
                "best_beats_greedy": round(float((best < greedy).float().mean()), 3),
                "median_sample_rank": float(ranks.float().median()),
                "seconds": round(time.time() - start),
            }
            print(temperature, top_p, json.dumps(results[f"T{temperature}_top_p{top_p}"]), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("kept", "probe"))
    parser.add_argument("paths", nargs="+", help="kept: round folders; probe: one rewriter folder.")
    parser.add_argument("--task", default=TASK, help=f"The long-form task folder (default {TASK}).")
    parser.add_argument("--queries", type=int, default=48, help="probe: training queries to sample (default 48).")
    args = parser.parse_args()
    if not Path(args.task).is_dir():
        parser.error(f"--task {args.task}: no such folder; run benchmarks/shapes_grape.py --shifts long_form first.")
    if args.mode == "probe" and len(args.paths) != 1:
        parser.error(f"probe takes one rewriter folder, got {len(args.paths)}: {args.paths}.")
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    if args.mode == "kept":
        results["kept"] = kept(args.paths, args.task)
    else:
        results["probe"] = probe(args.paths[0], args.task, args.queries)
    results.setdefault("_meta", {})[args.mode] = "python benchmarks/shapes_long_form_samples.py " + " ".join(
        [args.mode, *args.paths]
    )
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
