"""The paper's comparison on Multi30k German → English, starting from a prompted base model: Gemma 3 270M.

GRAPE (arXiv 2509.23370) improves a *prompted* LLM rewriter with rank-GRPO, with no translations as labels. This
script measures the rows of that comparison on all 1,014 Multi30k task2 val queries against all-MiniLM-L6-v2 over
the 1,014 English captions, and records each with R@1/5/10, MRR, nDCG@10 and its CPU minutes:

- `german_as_is`: the German query, no rewriting;
- `prompted`: Gemma 3 270M with the best of the base-model prompts in `PROMPTS`, chosen on `--select_queries`
  training queries (never on val), greedy, one line;
- `smollm2_shipped`: the shipped SmolLM2 rewriter (`smollm2-135m-grape-multi30k-de`), as a reference;
- any trained rewriter folder given with `--method NAME=FOLDER[@STARTED_FROM]` (e.g. the output of
  `recipes/gemma-3-270m/grpo/config_multi30k_de.yaml`), so the later stages join the same table;
- with `--recipe_eval NAME=FOLDER[@STARTED_FROM]`, the numbers a GRPO recipe's own before/after evaluation measured on
  the same 1,014 queries, retriever and corpus (`FOLDER/grape_rewriter.json`): `after` as NAME, and its starting
  rewriter (`zero_shot`/`start`) as STARTED_FROM, with the recipe's training wall minutes; nothing is run again;
- `prompted_<PROMPT>` for each `--prompt PROMPT` of `PROMPTS` (the prompted Gemma with that prompt, e.g. the one a
  training recipe starts from; the prompt `prompted` chose measures the `prompted` row again);
- with `--ship METHOD`, that row's folder is shipped as grape_hf's `gemma3-270m-grape-multi30k-de` (fp16 adapter, no
  tokenizer files: the base model's rebuilt tokenizer is used), its `grape_rewriter.json` holding the table's rows;
- with `--plot START,STAGE,STAGE...` (a chain of rows, each GRPO stage started from the one before; repeatable, one
  curve per chain, e.g. `rank` against `similarity` from the same start), the held-out R@10 of each chain against
  completions seen, and the training batches' similarities (the score-inflation monitor), in
  `results/multi30k_de_gemma_curves.png`;
- `oracle_best_of_8` with `--oracle FOLDER`: the best of 8 samples (temperature 1) per query of that policy, picked
  knowing the target (the room a policy could still learn);
- with `--paired A,B` (repeatable), an exact paired sign test of R@10 between two rows on the same queries
  (`grape_hf.metrics.paired_recall_test`), from the per-query ranks every row measured here keeps.

    python benchmarks/multi30k_de_gemma.py                       # german_as_is, prompted, smollm2_shipped
    python benchmarks/multi30k_de_gemma.py --only --method grape_rank=outputs/gemma-3-270m-grape-multi30k-de@prompted
    python benchmarks/multi30k_de_gemma.py --only --prompt multilingual_completion
    python benchmarks/multi30k_de_gemma.py --only --oracle outputs/gemma-3-270m-grape-multi30k-de

Writes (merging with what is there) `benchmarks/results/multi30k_de_gemma.json`:
`{"num_queries": 1014, "methods": {name: {"R@1": ..., "R@10": ..., "started_from": ..., "eval_cpu_minutes": ...}},
"paired": {"A vs B": {"wins": ..., "losses": ..., "p_value": ...}}}`, and each row's rank and rewrite per query in
`benchmarks/results/multi30k_de_gemma_per_query.json` (`{"methods": {name: {"ranks": [...], "rewrites": [...]}}}`).
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
PER_QUERY = RESULTS.with_name("multi30k_de_gemma_per_query.json")  # each row's rank and rewrite per val query
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
    parser.add_argument("--recipe_eval", action="append", default=[], help="NAME=FOLDER[@STARTED_FROM].")
    parser.add_argument("--prompt", action="append", default=[], choices=sorted(PROMPTS), help="A prompted_ row.")
    parser.add_argument("--oracle", default=None, help="FOLDER: oracle_best_of_8 of that policy.")
    parser.add_argument("--plot", action="append", default=[], help="START,STAGE,...: plot that chain of rows.")
    parser.add_argument("--ship", default=None, help="METHOD: ship its folder as gemma3-270m-grape-multi30k-de.")
    parser.add_argument("--paired", action="append", default=[], help="A,B: a paired R@10 test of two rows.")
    parser.add_argument("--only", action="store_true", help="Only the rows asked for (not the baselines).")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="Rewriter weights (`auto`: bf16 where the CPU runs it natively, else fp32). Rows keep theirs.",
    )
    args = parser.parse_args()

    import torch

    from grape_hf import RankScorer, load_retriever
    from grape_hf.data import load_multi30k
    from grape_hf.evaluation import evaluate_rewriters, markdown_table, query_ranks
    from grape_hf.metrics import paired_recall_test
    from grape_hf.rewriting.devices import cpu_description
    from grape_hf.rewriting.rewriter import QueryRewriter, shipped_rewriter_path
    from grape_hf.training.stages import stage_minutes as train_wall_minutes

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    tokens = args.max_new_tokens
    # Every rewriter of this run in one dtype; each row records it and the CPU it ran on, since greedy rewrites (so
    # a paired test) can differ between bf16 and fp32, and the CPU changes between sessions.
    from grape_hf.rewriting.devices import resolve_dtype

    dtype = resolve_dtype(args.dtype, "cpu")
    measured_on = {"cpu": cpu_description(), "dtype": str(dtype).removeprefix("torch.")}
    retriever = load_retriever("sentence-transformers:all-MiniLM-L6-v2", device="cpu")
    val = load_multi30k(MULTI30K, split="validation", max_queries=args.max_queries)
    scorer = RankScorer(retriever, val.corpus, show_progress_bar=False)
    queries, targets = list(val.queries["query"]), list(val.queries["target_id"])
    saved = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    methods, meta, paired = saved.get("methods", {}), saved.get("_meta", {}), saved.get("paired", {})
    held = json.loads(PER_QUERY.read_text()) if PER_QUERY.is_file() else {}
    per_query = held.get("methods", {})
    for path, counted in ((RESULTS, saved.get("num_queries")), (PER_QUERY, held.get("num_queries"))):
        if counted not in (None, len(queries)):
            raise SystemExit(
                f"{path} holds rows on {counted} queries, this run has {len(queries)}: rows on different query "
                "sets do not share a table. Move the file aside first (nothing was run)."
            )
    # Every --paired row must have per-query ranks once this run is done: check before running anything.
    planned = set(per_query) | {e.partition("=")[0] for e in args.method}
    planned |= {"oracle_best_of_8"} if args.oracle else set()
    planned |= {"prompted" if methods.get("prompted", {}).get("prompt") == p else f"prompted_{p}" for p in args.prompt}
    planned |= set() if args.only else {"german_as_is", "prompted", "smollm2_shipped"}
    for pair in args.paired:
        missing = [m for m in pair.split(",") if m not in planned]
        if len(pair.split(",")) != 2 or missing:
            raise SystemExit(
                f"--paired {pair!r}: give two rows as A,B, each with per-query ranks (measured here: "
                f"{sorted(per_query)}, or run in this call); missing {missing}. Nothing was run."
            )

    def keep_per_query(name: str, rewrites: list[str], ranks) -> None:
        per_query[name] = {"ranks": [int(r) for r in ranks], "rewrites": list(rewrites)}

    def run(name: str, rewriter, started_from: str | None, **extra) -> None:
        start = time.process_time()
        results, rewrites = evaluate_rewriters(scorer, queries, targets, {name: rewriter}, batch_size=args.batch_size)
        row = {**results[name], "started_from": started_from, "eval_cpu_minutes": cpu_minutes(start), **extra}
        row.update(measured_on)
        row["examples"] = [{"query": q, "rewrite": r} for q, r in zip(queries[:3], rewrites[name][:3])]
        methods[name] = row
        keep_per_query(name, rewrites[name], query_ranks(scorer, rewrites[name], targets))
        print(f"{name}: {json.dumps({k: v for k, v in row.items() if k != 'examples'})}", flush=True)

    if not args.only:
        run("german_as_is", None, None)
        # The prompt is chosen on training queries: the first --select_queries of the train split.
        train = load_multi30k(MULTI30K, split="train", max_images=1014, max_queries=args.select_queries)
        train_scorer = RankScorer(retriever, train.corpus, show_progress_bar=False)
        choice = {}
        for prompt in PROMPTS:
            rewriter = QueryRewriter.from_pretrained(
                GEMMA, template=template_for(prompt), max_new_tokens=tokens, dtype=dtype
            )
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
        rewriter = QueryRewriter.from_pretrained(
            GEMMA, template=template_for(best), max_new_tokens=tokens, dtype=dtype
        )
        run("prompted", rewriter, None, prompt=best, prompt_train_R10=choice)
        shipped = QueryRewriter.from_pretrained(
            str(shipped_rewriter_path("smollm2-135m-grape-multi30k-de")), dtype=dtype
        )
        run("smollm2_shipped", shipped, None)
    for entry in args.recipe_eval:
        name, _, folder = entry.partition("=")
        folder, _, started_from = folder.partition("@")
        config = json.loads((Path(folder) / "grape_rewriter.json").read_text(encoding="utf-8"))
        evaluation = config["evaluation"]
        if evaluation.get("num_queries") != len(queries) or evaluation.get("corpus_size") != len(scorer):
            raise SystemExit(f"{folder} was evaluated on {evaluation.get('num_queries')} queries, not {len(queries)}.")
        start = evaluation.get("zero_shot") or evaluation.get("start")
        if started_from and start and started_from not in methods:
            methods[started_from] = {**start, "started_from": None, "measured_by": f"{folder} (before training)"}
        methods[name] = {
            **evaluation["after"],
            "started_from": started_from or None,
            "train_wall_minutes": train_wall_minutes(folder),
            "measured_by": f"{folder} (after training)",
            "folder": folder,
        }
        print(f"{name}: {json.dumps(methods[name])}", flush=True)
    for prompt in args.prompt:
        rewriter = QueryRewriter.from_pretrained(
            GEMMA, template=template_for(prompt), max_new_tokens=tokens, dtype=dtype
        )
        chosen = methods.get("prompted", {})
        if chosen.get("prompt") == prompt:  # the prompt `prompted` chose on training queries: measure that row again
            run("prompted", rewriter, None, prompt=prompt, prompt_train_R10=chosen.get("prompt_train_R10"))
        else:
            run(f"prompted_{prompt}", rewriter, None, prompt=prompt)
    if args.oracle:
        from grape_hf.metrics import retrieval_metrics
        from grape_hf.training.stages import best_of_n, load_fast_rewriter

        start = time.process_time()
        rewriter = load_fast_rewriter(args.oracle, max_new_tokens=tokens, dtype=dtype)
        best, ranks = best_of_n(rewriter, scorer, queries, targets, n=8, batch_size=args.batch_size)
        row = {**retrieval_metrics(ranks), "started_from": None, "eval_cpu_minutes": cpu_minutes(start)}
        row.update(
            measured_on,
            policy=args.oracle,
            examples=[{"query": q, "rewrite": r} for q, r in zip(queries[:3], best[:3])],
        )
        methods["oracle_best_of_8"] = row
        keep_per_query("oracle_best_of_8", best, ranks)
        print(f"oracle_best_of_8: {json.dumps({k: v for k, v in row.items() if k != 'examples'})}", flush=True)
    for entry in args.method:
        name, _, folder = entry.partition("=")
        folder, _, started_from = folder.partition("@")
        rewriter = QueryRewriter.from_pretrained(folder, max_new_tokens=tokens, dtype=dtype)
        run(name, rewriter, started_from or None, folder=folder, train_wall_minutes=train_wall_minutes(folder))

    for pair in args.paired:
        a, _, b = pair.partition(",")
        paired[f"{a} vs {b}"] = paired_recall_test(per_query[a]["ranks"], per_query[b]["ranks"], k=10)
        print(f"{a} vs {b} (R@10, paired): {json.dumps(paired[f'{a} vs {b}'])}", flush=True)

    if args.ship:
        ship(args.ship, methods)
    if args.plot:
        plot_chains([chain.split(",") for chain in args.plot], methods)
    meta.update(cpu=cpu_description(), date=time.strftime("%Y-%m-%d"), retriever=retriever.spec, corpus=len(scorer))
    out = {"num_queries": len(queries), "_meta": meta, "methods": methods, "paired": paired}
    RESULTS.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    per_query_out = {"num_queries": len(queries), "queries": queries, "target_ids": [int(t) for t in targets]}
    PER_QUERY.write_text(json.dumps({**per_query_out, "methods": per_query}, ensure_ascii=False) + "\n")
    print(markdown_table({k: v for k, v in methods.items()}))


def plot_chains(chains: list[list[str]], methods: dict) -> Path | None:
    """One curve per chain of rows, labelled by its last: the start at 0 completions, each stage's R@10 after the
    completions it and the stages before it sampled (their `curves.json`), the training batches' similarities along
    the way."""
    from grape_hf.evaluation import plot_curves

    runs = {}
    for chain in chains:
        evals = {"completions": [0], "R@10": [methods[chain[0]]["R@10"]]}
        train: dict[str, list] = {"completions": [], "target_similarity": [], "nontarget_similarity": []}
        seen = 0
        for name in chain[1:]:
            curves_file = Path(methods[name].get("folder", "")) / "curves.json"
            if not curves_file.is_file():
                raise SystemExit(f"--plot {','.join(chain)}: {name} has no GRPO curves ({curves_file} is missing).")
            curves = json.loads(curves_file.read_text())["train"]
            for key in train:
                train[key] += [seen + c for c in curves[key]] if key == "completions" else curves[key]
            seen += curves["completions"][-1]
            evals["completions"].append(seen)
            evals["R@10"].append(methods[name]["R@10"])
        runs[" -> ".join(chain[1:])] = {"eval": evals, "train": train}
    path = RESULTS.with_name("multi30k_de_gemma_curves.png")
    title = f"Gemma 3 270M, Multi30k de->en, from {', '.join(sorted({c[0] for c in chains}))}"
    return plot_curves(runs, path, title=title, metric="R@10")


def ship(method: str, methods: dict) -> None:
    """Ship `method`'s rewriter folder inside grape_hf, its evaluation the rows of this table it is compared with."""
    from grape_hf.rewriting.rewriter import SHIPPED_REWRITERS_DIR
    from grape_hf.training.stages import ship_rewriter

    row = methods[method]
    if "folder" not in row:
        raise SystemExit(f"--ship {method!r}: that row names no rewriter folder; ship a trained method's row.")
    keep = ("R@1", "R@5", "R@10", "MRR", "nDCG@10", "mean_rank")
    compared = {"before": "german_as_is", "prompted": "prompted", "start": row.get("started_from")}
    evaluation = {key: {m: methods[name][m] for m in keep} for key, name in compared.items() if name in methods}
    evaluation["smollm2_shipped"] = {m: methods["smollm2_shipped"][m] for m in keep}
    evaluation.update(
        after={m: row[m] for m in keep},
        split="validation",
        dataset="multi30k/task2/val de->en",
        num_queries=1014,
        corpus_size=1014,
        method=method,
    )
    dest = SHIPPED_REWRITERS_DIR / "gemma3-270m-grape-multi30k-de"
    # No tokenizer files (32 MB): loading takes the base model's (rebuilt offline) tokenizer.
    dataset = "Multi30k task2 (German queries, English captions)"
    ship_rewriter(row["folder"], dest, evaluation, keep_tokenizer=False, dataset=dataset)
    print(f"shipped {method} as {dest}", flush=True)


if __name__ == "__main__":
    main()
