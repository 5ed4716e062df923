"""Does the shipped Gemma rewriter, trained on German Multi30k only, keep the prompted base model's other languages?

Issue 26's second bar: loaded through `pipeline("grape-rewrite")`, `gemma3-270m-grape-multi30k-de` may lose at most 2
points of R@10 against the prompted Gemma 3 270M (the same multilingual completion prompt, untrained) on languages it
was not trained on: the shape world's fr/es/zh text queries, against `grape-shapes-clip` over the rendered held-out
corpus (German too, for reference). Greedy, one line per rewrite, both through the pipeline.

    python benchmarks/shapes_languages_gemma.py

Writes `benchmarks/results/shapes_languages_gemma.json`: `{"num_queries": ..., "corpus": ..., "methods": {name:
{language: {"R@1": ..., "R@10": ..., ...}}}, "R@10_drop": {language: prompted - shipped}}`.
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
RESULTS = REPO / "benchmarks" / "results" / "shapes_languages_gemma.json"
RETRIEVER = "open_clip:grape-shapes-clip@grape-shapes"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval_images", type=int, default=1000, help="Held-out corpus size.")
    parser.add_argument("--eval_queries", type=int, default=400, help="Queries over the four languages.")
    parser.add_argument("--batch_size", type=int, default=25)
    args = parser.parse_args()

    import torch
    from transformers import pipeline

    import grape_hf  # noqa: F401 - registers "grape-rewrite"
    from grape_hf import RankScorer, load_retriever
    from grape_hf.metrics import retrieval_metrics
    from grape_hf.models import GEMMA3_270M_ID, resolve_model_path
    from grape_hf.rewriting.devices import cpu_description
    from grape_hf.rewriting.prompts import get_prompt_template
    from grape_hf.rewriting.rewriter import shipped_rewriter_path
    from grape_hf.shapes import build_grape_task

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    task = build_grape_task(
        "multilingual", train_images=24, eval_images=args.eval_images, eval_queries=args.eval_queries
    )
    val, corpus = task["validation"], task["validation_corpus"]
    scorer = RankScorer(load_retriever(RETRIEVER, device="cpu"), list(corpus["image"]), show_progress_bar=False)
    queries, targets, languages = list(val["query"]), list(val["target_id"]), list(val["language"])
    prompt = get_prompt_template("multilingual", prompt_format="completion").to_dict()
    rewriters = {
        "as_is": None,
        "prompted": lambda: pipeline("grape-rewrite", model=resolve_model_path(GEMMA3_270M_ID), prompt=prompt),
        "shipped": lambda: pipeline(
            "grape-rewrite", model=str(shipped_rewriter_path("gemma3-270m-grape-multi30k-de"))
        ),
    }
    methods, examples, seconds = {}, {}, {}
    for name, build in rewriters.items():
        start = time.time()
        if build is None:
            texts = queries
        else:
            pipe = build()
            outs = pipe(queries, batch_size=args.batch_size, max_new_tokens=32, do_sample=False)
            texts = [out["rewrite"] for out in outs]
        seconds[name] = round(time.time() - start, 1)
        ranks = scorer.ranks(texts, targets)
        methods[name] = {"all": retrieval_metrics(ranks)}
        for language in sorted(set(languages)):
            keep = torch.tensor([lang == language for lang in languages])
            methods[name][language] = {**retrieval_metrics(ranks[keep]), "num_queries": int(keep.sum())}
        examples[name] = {lang: next(t for t, lg in zip(texts, languages) if lg == lang) for lang in set(languages)}
        print(name, seconds[name], "s", json.dumps({k: v["R@10"] for k, v in methods[name].items()}), flush=True)
    drop = {
        lang: round(methods["prompted"][lang]["R@10"] - methods["shipped"][lang]["R@10"], 4)
        for lang in methods["shipped"]
    }
    out = {
        "num_queries": len(queries),
        "corpus": len(corpus),
        "retriever": RETRIEVER,
        "cpu": cpu_description(),
        "date": time.strftime("%Y-%m-%d"),
        "seconds": seconds,
        "methods": methods,
        "R@10_drop": drop,
        "examples": examples,
    }
    RESULTS.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    print("R@10 drop (prompted - shipped):", drop)


if __name__ == "__main__":
    main()
