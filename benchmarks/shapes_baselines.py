"""No-rewrite baselines of the shapes CLIP track: how much each shift costs `grape-shapes-clip`.

    python benchmarks/shapes_baselines.py

For each shift of `grape_hf.shapes` (multilingual, long-form, composed) the queries go to the shipped retriever
as they are, and the target image is ranked among a held-out corpus of 1,000 images (seed 1; the retriever was
trained on seed 0's stream). `in_distribution` is the same corpus queried with its canonical captions. Writes
`benchmarks/results/shapes_baselines.json` as shift -> method -> metric -> value (`_meta` holds the setup), on
every query of each shift; `benchmarks/shapes_grape.py` measures the rewriters on a seeded subset (`shapes.json`).

Methods: `no_rewrite` (the query as it is); `oracle` (the target's canonical caption: what a perfect rewriter
would write, the ceiling); for `composed`, also `reference_caption` (the reference image's
caption alone: it finds the reference, not the edited target) and `reference_and_edit` (caption and edit
joined, which a 32-token context mostly truncates).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from grape_hf import RankScorer, load_retriever
from grape_hf.evaluation import retrieval_metrics
from grape_hf.shapes import SHIFT_LANGUAGES, build_shift_dataset

SPEC = "open_clip:grape-shapes-clip@grape-shapes"
RESULTS = Path(__file__).parent / "results" / "shapes_baselines.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.perf_counter()
    retriever = load_retriever(SPEC, device="cpu")
    results: dict = {}
    counts: dict = {}
    for shift in ("in_distribution", "multilingual", "long_form", "composed"):
        data = build_shift_dataset(shift, num_images=args.num_images, seed=args.seed)
        queries, corpus = data["queries"], data["corpus"]
        scorer = RankScorer(retriever, corpus["image"], show_progress_bar=False)
        target_ids = queries["target_id"]
        runs = {"no_rewrite": queries["query"]}
        if shift != "in_distribution":
            captions = corpus["caption"]
            runs["oracle"] = [captions[i] for i in target_ids]
        if shift == "composed":
            runs["reference_caption"] = queries["reference"]
            runs["reference_and_edit"] = [f"{r}, then {q}" for r, q in zip(queries["reference"], queries["query"])]
        results[shift] = {}
        for method, texts in runs.items():
            ranks = scorer.ranks(texts, target_ids)
            results[shift][method] = retrieval_metrics(ranks)
            if shift == "multilingual":
                for language in SHIFT_LANGUAGES:
                    keep = torch.tensor([lang == language for lang in queries["language"]])
                    results.setdefault(f"multilingual/{language}", {})[method] = retrieval_metrics(ranks[keep])
        counts[shift] = len(queries)
        print(shift, json.dumps(results[shift]), flush=True)
    results["_meta"] = {
        "retriever": SPEC,
        "corpus_images": args.num_images,
        "seed": args.seed,
        "num_queries": counts,
        "direction": "text -> image",
        "command": "python benchmarks/shapes_baselines.py",
        "seconds": round(time.perf_counter() - start, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.output} in {results['_meta']['seconds']} s")


if __name__ == "__main__":
    main()
