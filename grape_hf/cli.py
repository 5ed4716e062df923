"""The `grape-hf` command line: `evaluate` rewriters on a dataset, build a FAISS `index`, build a `shapes-task`,
`push` a trained rewriter to the Hub."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


class UsageError(Exception):
    """A bad argument found while running (a dataset that cannot be loaded, an unknown split or retriever): shown
    as a one-line usage error (exit code 2), not a traceback."""


def _usage(flag: str | None, fn, *args, **kwargs):
    """Run `fn`, reporting a ValueError or OSError (the dataset or model is missing or wrong) as a usage error."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, OSError) as err:
        raise UsageError(f"{flag}: {err}" if flag else str(err)) from err


def _check_count(flag: str, value: int | None, least: int = 1) -> None:
    if value is not None and value < least:
        what = "a positive number" if least == 1 else f"a number >= {least}"
        raise ValueError(f"{flag} must be {what}, got {value}.")


def _check_retriever_spec(spec: str) -> None:
    from .retrieval.retrievers import parse_retriever_spec

    parse_retriever_spec(spec)


def _rewriter_entries(entries: list[str] | None) -> dict[str, str]:
    """`--rewriter` values as name -> path, refusing a name given twice (the second used to replace the first)."""
    named: dict[str, str] = {}
    for entry in entries or ["none"]:
        name, _, path = entry.rpartition("=")
        name = name or ("original query" if path == "none" else path)
        if name in named:
            raise ValueError(
                f"--rewriter name {name!r} is given twice ({named[name]!r} and {path!r}); name them apart with "
                f"NAME=PATH, e.g. --rewriter first={named[name]} --rewriter second={path}."
            )
        named[name] = path
    return named


def _check_writable_dir(flag: str, folder: str | Path) -> None:
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{flag} {str(folder)!r} is a file, not a folder; give a folder to write into.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ValueError(f"{flag} {str(folder)!r} is not writable ({err}); give a writable folder.") from err


def _check_evaluate(args: argparse.Namespace) -> None:
    """Everything that can be checked before the (long) embedding and rewriting, so no result is lost to it."""
    from .evaluation import check_result_paths
    from .models import cache_home
    from .retrieval.cache import check_cache_dir

    _rewriter_entries(args.rewriter)
    _check_retriever_spec(args.retriever)
    for flag, value in (("--max_samples", args.max_samples), ("--max_images", args.max_images)):
        _check_count(flag, value)
    for flag, value in (("--batch_size", args.batch_size), ("--max_new_tokens", args.max_new_tokens)):
        _check_count(flag, value)
    if args.output_dir:
        _check_writable_dir("--output_dir", args.output_dir)
        check_result_paths(args.output_dir, args.name)
    # Reading a valid cache needs no write access; the scorer refuses an unwritable folder before embedding.
    check_cache_dir(args.cache_dir or cache_home() / "corpus_embeddings", writable=False)


def _evaluate(args: argparse.Namespace) -> int:
    from .data import is_multi30k_dir, load_grape_dataset
    from .evaluation import evaluate_rewriters, markdown_table, save_results
    from .models import cache_home
    from .retrieval.retrievers import load_retriever
    from .retrieval.scorer import RankScorer
    from .rewriting.prompts import get_prompt_template
    from .rewriting.rewriter import QueryRewriter

    extra = {"max_images": args.max_images, "task": args.multi30k_task} if is_multi30k_dir(args.dataset) else {}
    data = _usage(
        "--dataset", load_grape_dataset, args.dataset, split=args.split, max_queries=args.max_samples, seed=args.seed,
        **extra,
    )  # fmt: skip
    retriever = _usage("--retriever", load_retriever, args.retriever)
    cache_dir = args.cache_dir or cache_home() / "corpus_embeddings"
    scorer = _usage(None, RankScorer, retriever, data.corpus, cache_dir=cache_dir)
    rewriters = {}
    for name, path in _rewriter_entries(args.rewriter).items():
        if path == "none":
            rewriters[name] = None
            continue
        template = (
            get_prompt_template(args.shift or "multilingual", args.prompt_template, args.prompt_format)
            if args.shift or args.prompt_template or args.prompt_format
            else None
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


def _check_index_build(args: argparse.Namespace) -> None:
    from .retrieval.cache import check_cache_dir
    from .retrieval.index import _faiss

    _check_retriever_spec(args.retriever)
    _check_count("--max_images", args.max_images)
    _check_count("--recall_queries", args.recall_queries, least=0)
    _check_count("--flat_limit", args.flat_limit, least=0)
    _check_writable_dir("--output_dir", args.output_dir)
    if args.cache_dir:
        check_cache_dir(args.cache_dir, writable=False)
    try:
        _faiss()
    except ImportError as err:
        raise ValueError(str(err)) from err


def _index_build(args: argparse.Namespace) -> int:
    from .data import is_multi30k_dir, load_grape_dataset
    from .models import cache_home
    from .retrieval.index import CorpusIndex
    from .retrieval.retrievers import load_retriever
    from .retrieval.scorer import RankScorer

    extra = {"max_images": args.max_images, "task": args.multi30k_task} if is_multi30k_dir(args.dataset) else {}
    data = _usage("--dataset", load_grape_dataset, args.dataset, split=args.split, **extra)
    retriever = _usage("--retriever", load_retriever, args.retriever)
    cache_dir = args.cache_dir or cache_home() / "corpus_embeddings"
    scorer = _usage(None, RankScorer, retriever, data.corpus, cache_dir=cache_dir)
    index = CorpusIndex.build(
        scorer.corpus_embeddings,
        scorer.identity,
        kind=args.kind,
        flat_limit=args.flat_limit,
        approximate=args.approximate,
    )
    # Recall@10 of the index against exact search, on the split's own queries (none: not measured).
    queries = scorer.embed_queries(list(data.queries["query"])[: args.recall_queries])
    if len(queries):
        _, exact_ids = scorer.search(queries, k=10)
        index.info["recall@10_vs_exact"] = index.recall_at_k(queries, exact_ids, k=10)
    index.info["recall_queries"] = len(queries)
    index.save(args.output_dir)
    recall = (
        f"recall@10 against exact search on {len(queries)} queries: {index.info['recall@10_vs_exact']:.4f}"
        if len(queries)
        else "recall not measured (--recall_queries 0)"
    )
    print(f"{index.kind} index of {len(index)} items ({args.retriever}) written to {args.output_dir}; {recall}")
    return 0


def _check_shapes_task(args: argparse.Namespace) -> None:
    from .shapes import SHIFTS

    if args.shift not in SHIFTS:
        raise ValueError(f"--shift {args.shift!r} is not a shapes shift; choose one of {list(SHIFTS)}.")
    if args.reference_images and args.shift != "composed":
        raise ValueError(
            f"--reference_images is for --shift composed (a reference image plus an edit), not {args.shift!r}."
        )
    folder = Path(args.output_dir)
    if folder.exists() and any(folder.iterdir()) and not args.overwrite:
        raise ValueError(f"--output_dir {str(folder)!r} is not empty; pass --overwrite or give a new folder.")
    _check_writable_dir("--output_dir", folder)


def _shapes_task(args: argparse.Namespace) -> int:
    from .shapes import build_grape_task

    task = build_grape_task(
        args.shift,
        train_images=args.train_images,
        eval_images=args.eval_images,
        eval_queries=args.eval_queries,
        train_seed=args.train_seed,
        eval_seed=args.eval_seed,
        composed_negatives=args.composed_negatives,
        reference_images=args.reference_images,
    )
    task.save_to_disk(args.output_dir)
    print(f"{args.output_dir}: " + ", ".join(f"{name} {len(split)}" for name, split in task.items()))
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
    ev.add_argument(
        "--prompt_format",
        default=None,
        choices=["chat", "completion"],
        help="'completion' for base models (e.g. google/gemma-3-270m): the shift's plain-text few-shot prompt.",
    )
    ev.add_argument("--max_samples", type=int, default=None, help="Queries kept (seeded subset).")
    ev.add_argument("--max_images", type=int, default=None, help="Multi30k: images kept (the corpus shrinks).")
    ev.add_argument("--multi30k_task", default="task2")
    ev.add_argument("--max_new_tokens", type=int, default=48)
    ev.add_argument("--batch_size", type=int, default=32)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--output_dir", default=None, help="Write <name>.md, .json and .png here.")
    ev.add_argument("--name", default="evaluation")
    ev.add_argument("--cache_dir", default=None, help="Corpus embedding cache (default: grape_hf's cache folder).")
    ev.set_defaults(func=_evaluate, check=_check_evaluate)

    index = sub.add_parser("index", help="FAISS indexes for serving large corpora.")
    index_sub = index.add_subparsers(dest="index_command", required=True)
    build = index_sub.add_parser(
        "build", help="Embed a corpus and write its FAISS index with the retriever's identity."
    )
    build.add_argument("--dataset", required=True, help="Multi30k folder, local dataset folder or Hub dataset id.")
    build.add_argument("--split", default="validation", help="The split whose corpus is indexed.")
    build.add_argument("--retriever", default="sentence-transformers:all-MiniLM-L6-v2")
    build.add_argument("--output_dir", required=True, help="Folder for index.faiss, index.safetensors, index.json.")
    build.add_argument("--kind", default="auto", choices=["auto", "flat", "ivf", "hnsw"])
    build.add_argument("--flat_limit", type=int, default=100_000, help="auto: exact (flat) up to this many items.")
    build.add_argument("--approximate", default="hnsw", choices=["hnsw", "ivf"], help="auto: the kind above it.")
    build.add_argument("--recall_queries", type=int, default=1000, help="Queries used to measure recall@10.")
    build.add_argument("--max_images", type=int, default=None, help="Multi30k: images kept (the corpus shrinks).")
    build.add_argument("--multi30k_task", default="task2")
    build.add_argument("--cache_dir", default=None)
    build.set_defaults(func=_index_build, check=_check_index_build)

    shapes = sub.add_parser(
        "shapes-task", help="Save a shapes shift as a GRAPE dataset (train/validation queries and rendered corpora)."
    )
    shapes.add_argument("--shift", required=True, help="composed, multilingual, long_form or in_distribution.")
    shapes.add_argument("--output_dir", required=True, help="Folder for `save_to_disk`; pass it as --dataset_name.")
    shapes.add_argument("--train_images", type=int, default=1000)
    shapes.add_argument("--eval_images", type=int, default=1000)
    shapes.add_argument("--eval_queries", type=int, default=200, help="Held-out queries (seeded subset).")
    shapes.add_argument("--train_seed", type=int, default=2)
    shapes.add_argument("--eval_seed", type=int, default=1)
    shapes.add_argument(
        "--composed_negatives", type=int, default=1, help="composed: other edits of each reference in the corpus."
    )
    shapes.add_argument(
        "--reference_images",
        action="store_true",
        help="composed: add each query's reference image (column reference_image), for a vision-language rewriter.",
    )
    shapes.add_argument("--overwrite", action="store_true")
    shapes.set_defaults(func=_shapes_task, check=_check_shapes_task)

    push = sub.add_parser("push", help="Upload a trained rewriter folder with its GRAPE model card.")
    push.add_argument("folder")
    push.add_argument("repo_id")
    push.add_argument("--private", action="store_true")
    push.add_argument("--token", default=None)
    push.set_defaults(func=_push)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check = getattr(args, "check", None)
    if check is not None:
        try:
            check(args)
        except ValueError as err:
            parser.error(f"{args.command}: {err}")
    try:
        return args.func(args)
    except UsageError as err:
        parser.error(f"{args.command}: {err}")


if __name__ == "__main__":
    sys.exit(main())
