"""`load_grape_dataset`: queries and their corpus from a Multi30k folder, a local `datasets` folder or files, or a Hub
dataset id."""

from __future__ import annotations

import random
from pathlib import Path

from .base import GRAPEData, check_count
from .multi30k import is_multi30k_dir, load_multi30k


def load_grape_dataset(
    name_or_path: str,
    split: str = "train",
    corpus_split: str | None = None,
    query_column: str = "query",
    target_column: str = "target_id",
    corpus_column: str | None = None,
    max_queries: int | None = None,
    seed: int = 0,
    **multi30k_kwargs,
) -> GRAPEData:
    """Load queries and their corpus from a Multi30k folder, a local `datasets` folder/files, or a Hub dataset id.

    Args:
        name_or_path (`str`): A Multi30k folder, a folder saved with `DatasetDict.save_to_disk`, or a Hub id.
        split (`str`, *optional*, defaults to `"train"`): The query split.
        corpus_split (`str`, *optional*): The corpus split; defaults to `f"{split}_corpus"`, then `"corpus"`.
        query_column, target_column (`str`): Column names in the query split.
        corpus_column (`str`, *optional*): The corpus column; defaults to `"text"`, else `"image"`.
        max_queries (`int`, *optional*): Keep a seeded random subset of queries.
        multi30k_kwargs: Passed to [`load_multi30k`] for a Multi30k folder (`task`, `query_lang`, `max_images`, ...).
    """
    check_count("max_queries", max_queries, "queries")
    if is_multi30k_dir(name_or_path):
        return load_multi30k(name_or_path, split=split, max_queries=max_queries, seed=seed, **multi30k_kwargs)
    if multi30k_kwargs:
        raise ValueError(
            f"{sorted(multi30k_kwargs)} only apply to a Multi30k folder, and {name_or_path!r} is not one."
        )
    import datasets

    path = Path(name_or_path)
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        dataset_dict = datasets.load_from_disk(str(path))
    else:
        try:
            dataset_dict = datasets.load_dataset(name_or_path)
        except OSError as err:  # FileNotFoundError, DatasetNotFoundError, ConnectionError (offline)
            raise ValueError(
                f"Cannot load the dataset {name_or_path!r}: it is not a Multi30k folder nor a folder saved with "
                f"`save_to_disk`, and `datasets.load_dataset` failed ({err}). Check the path or the Hub id."
            ) from err
    if not isinstance(dataset_dict, datasets.DatasetDict):
        raise ValueError(f"{name_or_path!r} holds a single split; GRAPE needs a query split and a corpus split.")
    if split not in dataset_dict:
        raise ValueError(f"{name_or_path!r} has no split {split!r}; it has {list(dataset_dict)}.")
    candidates = [corpus_split] if corpus_split else [f"{split}_corpus", "corpus"]
    found = next((c for c in candidates if c in dataset_dict), None)
    if found is None:
        raise ValueError(
            f"{name_or_path!r} has no corpus split (looked for {candidates}); it has {list(dataset_dict)}."
        )
    queries = dataset_dict[split]
    for column in (query_column, target_column):
        if column not in queries.column_names:
            raise ValueError(f"The {split!r} split has no column {column!r}; it has {queries.column_names}.")
    if query_column != "query":
        queries = queries.rename_column(query_column, "query")
    if target_column != "target_id":
        queries = queries.rename_column(target_column, "target_id")
    corpus_ds = dataset_dict[found]
    column = corpus_column or ("text" if "text" in corpus_ds.column_names else "image")
    if column not in corpus_ds.column_names:
        raise ValueError(f"The corpus split {found!r} has no column {column!r}; it has {corpus_ds.column_names}.")
    if max_queries is not None and max_queries < len(queries):
        queries = queries.select(sorted(random.Random(seed).sample(range(len(queries)), max_queries)))
    return GRAPEData(queries=queries, corpus=list(corpus_ds[column]), name=f"{name_or_path}:{split}")
