"""The `grape-hf` command line: `evaluate` rewriters on a dataset, `push` a trained rewriter to the Hub."""

from __future__ import annotations

import argparse
import sys


def _evaluate(args: argparse.Namespace) -> int:
    from .data import is_multi30k_dir, load_grape_dataset
    from .evaluation import evaluate_rewriters, markdown_table, save_results
    from .models import cache_home
    from .prompts import get_prompt_template
    from .retrievers import load_retriever
    from .rewriter import QueryRewriter
    from .scorer import CLIPRankScorer

    extra = {"max_images": args.max_images, "task": args.multi30k_task} if is_multi30k_dir(args.dataset) else {}
    data = load_grape_dataset(args.dataset, split=args.split, max_queries=args.max_samples, seed=args.seed, **extra)
    retriever = load_retriever(args.retriever)
    scorer = CLIPRankScorer(retriever, data.corpus, cache_dir=cache_home() / "corpus_embeddings")
    rewriters = {}
    for entry in args.rewriter or ["none"]:
        name, _, path = entry.rpartition("=")
        name = name or ("original query" if path == "none" else path)
        if path == "none":
            rewriters[name] = None
            continue
        template = (
            get_prompt_template(args.shift, args.prompt_template) if args.shift or args.prompt_template else None
        )
        rewriters[name] = QueryRewriter.from_pretrained(path, template=template, max_new_tokens=args.max_new_tokens)
    references = list(data.queries["reference"]) if "reference" in data.queries.column_names else None
    results, rewrites = evaluate_rewriters(
        scorer,
        list(data.queries["query"]),
        list(data.queries["target_id"]),
        rewriters,
        references=references,
        batch_size=args.batch_size,
    )
    title = f"{data.name}: {len(data.queries)} queries, corpus {len(scorer)} ({args.retriever})"
    print(title)
    print(markdown_table(results))
    if args.output_dir:
        paths = save_results(results, args.output_dir, name=args.name, title=title, rewrites=rewrites)
        print("Wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _push(args: argparse.Namespace) -> int:
    from .hub import push_rewriter

    url = push_rewriter(args.folder, args.repo_id, private=args.private, token=args.token)
    print(url)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grape-hf", description="GRAPE query rewriting for frozen retrievers.")
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("evaluate", help="R@1/5/10, MRR and nDCG@10 before and after rewriting.")
    ev.add_argument("--dataset", required=True, help="Multi30k folder, local dataset folder or Hub dataset id.")
    ev.add_argument("--split", default="validation")
    ev.add_argument("--retriever", default="sentence-transformers:all-MiniLM-L6-v2")
    ev.add_argument(
        "--rewriter",
        action="append",
        help="'none' (the original query), a model or rewriter folder / Hub id, or NAME=PATH; repeat to compare.",
    )
    ev.add_argument("--shift", default=None, help="Prompt for plain instruct models (default: multilingual).")
    ev.add_argument("--prompt_template", default=None)
    ev.add_argument("--max_samples", type=int, default=None, help="Queries kept (seeded subset).")
    ev.add_argument("--max_images", type=int, default=None, help="Multi30k: images kept (the corpus shrinks).")
    ev.add_argument("--multi30k_task", default="task2")
    ev.add_argument("--max_new_tokens", type=int, default=48)
    ev.add_argument("--batch_size", type=int, default=32)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--output_dir", default=None, help="Write <name>.md, .json and .png here.")
    ev.add_argument("--name", default="evaluation")
    ev.set_defaults(func=_evaluate)

    push = sub.add_parser("push", help="Upload a trained rewriter folder with its GRAPE model card.")
    push.add_argument("folder")
    push.add_argument("repo_id")
    push.add_argument("--private", action="store_true")
    push.add_argument("--token", default=None)
    push.set_defaults(func=_push)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
