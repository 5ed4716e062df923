"""The paper's comparison on Multi30k German → English, starting from a prompted base model: Gemma 3 270M.

GRAPE (arXiv 2509.23370) improves a *prompted* LLM rewriter with rank-GRPO, with no translations as labels. This
script measures the rows of that comparison on all 1,014 Multi30k task2 val queries against all-MiniLM-L6-v2 over
the 1,014 English captions, and records each with R@1/5/10, MRR, nDCG@10 and its CPU minutes:

- `german_as_is`: the German query, no rewriting;
- `prompted`: Gemma 3 270M with the best of the base-model prompts in `PROMPTS`, chosen on `--select_queries`
  training queries (never on val), greedy, one line;
- `smollm2_shipped`: the shipped SmolLM2 rewriter (`smollm2-135m-grape-multi30k-de`), as a reference;
- any trained rewriter folder given with `--method NAME=FOLDER[@STARTED_FROM]` (e.g. the output of
  `recipes/gemma-3-270m/grpo/config_multi30k_de.yaml`), so the later stages join the same table.

    python benchmarks/multi30k_de_gemma.py                       # german_as_is, prompted, smollm2_shipped
    python benchmarks/multi30k_de_gemma.py --only --method grape_rank=outputs/gemma-3-270m-grape-multi30k-de@prompted

Writes (merging with what is there) `benchmarks/results/multi30k_de_gemma.json`:
`{"num_queries": 1014, "methods": {name: {"R@1": ..., "R@10": ..., "started_from": ..., "eval_cpu_minutes": ...}}}`.
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
RESULTS = REPO / "benchmarks" / "results" / "multi30k_de_gemma.json"
GEMMA = "google/gemma-3-270m"
# Base-model prompts tried for `prompted` (chosen on training queries): the shipped multilingual completion prompt,
# and the German-named 2-shot prompt.
PROMPTS = {
    "multilingual_completion": None,  # get_prompt_template("multilingual", prompt_format="completion")
    "german_2shot": {
        "system": "Translate German to English.",
        "user": "German: {query}\nEnglish:",
        "examples": [
            {"query": "Ein Hund läuft über eine Wiese.", "rewrite": "A dog runs across a meadow."},
            {"query": "Zwei Männer spielen Fußball.", "rewrite": "Two men play soccer."},
        ],
    },
}


def cpu_minutes(start: float) -> float:
    return round((time.process_time() - start) / 60, 2)


def template_for(name: str):
    from grape_hf.rewriting.prompts import get_prompt_template

    return get_prompt_template("multilingual", PROMPTS[name], prompt_format="completion")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max_queries", type=int, default=None, help="Val queries (default: all 1,014).")
    parser.add_argument("--select_queries", type=int, default=100, help="Training queries that pick the prompt.")
    parser.add_argument("--batch_size", type=int, default=25)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--method", action="append", default=[], help="NAME=FOLDER[@STARTED_FROM], a rewriter.")
    parser.add_argument("--only", action="store_true", help="Only the --method rows (not the baselines).")
    args = parser.parse_args()

    import torch

    from grape_hf import RankScorer, load_retriever
    from grape_hf.data import load_multi30k
    from grape_hf.evaluation import evaluate_rewriters, markdown_table
    from grape_hf.rewriting.devices import cpu_description
    from grape_hf.rewriting.rewriter import QueryRewriter, shipped_rewriter_path

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    tokens = args.max_new_tokens  # dtype "auto" throughout: bf16 where the CPU runs it natively, else fp32
    retriever = load_retriever("sentence-transformers:all-MiniLM-L6-v2", device="cpu")
    val = load_multi30k(MULTI30K, split="validation", max_queries=args.max_queries)
    scorer = RankScorer(retriever, val.corpus, show_progress_bar=False)
    queries, targets = list(val.queries["query"]), list(val.queries["target_id"])
    saved = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    methods, meta = saved.get("methods", {}), saved.get("_meta", {})

    def run(name: str, rewriter, started_from: str | None, **extra) -> None:
        start = time.process_time()
        results, rewrites = evaluate_rewriters(scorer, queries, targets, {name: rewriter}, batch_size=args.batch_size)
        row = {**results[name], "started_from": started_from, "eval_cpu_minutes": cpu_minutes(start), **extra}
        row["examples"] = [{"query": q, "rewrite": r} for q, r in zip(queries[:3], rewrites[name][:3])]
        methods[name] = row
        print(f"{name}: {json.dumps({k: v for k, v in row.items() if k != 'examples'})}", flush=True)

    if not args.only:
        run("german_as_is", None, None)
        # The prompt is chosen on training queries: the first --select_queries of the train split.
        train = load_multi30k(MULTI30K, split="train", max_images=1014, max_queries=args.select_queries)
        train_scorer = RankScorer(retriever, train.corpus, show_progress_bar=False)
        choice = {}
        for prompt in PROMPTS:
            rewriter = QueryRewriter.from_pretrained(GEMMA, template=template_for(prompt), max_new_tokens=tokens)
            results, _ = evaluate_rewriters(
                train_scorer,
                list(train.queries["query"]),
                list(train.queries["target_id"]),
                {prompt: rewriter},
                batch_size=args.batch_size,
            )
            choice[prompt] = results[prompt]["R@10"]
            print(f"prompt {prompt}: train R@10 {choice[prompt]:.3f}", flush=True)
        best = max(choice, key=choice.get)
        rewriter = QueryRewriter.from_pretrained(GEMMA, template=template_for(best), max_new_tokens=tokens)
        run("prompted", rewriter, None, prompt=best, prompt_train_R10=choice)
        shipped = QueryRewriter.from_pretrained(str(shipped_rewriter_path("smollm2-135m-grape-multi30k-de")))
        run("smollm2_shipped", shipped, None)
    for entry in args.method:
        name, _, folder = entry.partition("=")
        folder, _, started_from = folder.partition("@")
        rewriter = QueryRewriter.from_pretrained(folder, max_new_tokens=tokens)
        run(name, rewriter, started_from or None, folder=folder)

    meta.update(cpu=cpu_description(), date=time.strftime("%Y-%m-%d"), retriever=retriever.spec, corpus=len(scorer))
    out = {"num_queries": len(queries), "_meta": meta, "methods": methods}
    RESULTS.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    print(markdown_table({k: v for k, v in methods.items()}))


if __name__ == "__main__":
    main()
