"""Loading GRAPE data: queries with the id of their right corpus item, and the corpus itself.

Two sources:

- a Multi30k folder (the layout of `../shared/data/multi30k`: `task1/`, `task2/` of gzip caption files), where a
  caption in one language is the query and the same image's caption in another language is the target;
- any `datasets` source (a local folder saved with `save_to_disk`, data files, or a Hub dataset id) holding a
  query split with `query` and `target_id` columns and a corpus split with a `text` (or `image`) column.
"""

from __future__ import annotations

import gzip
import random
from dataclasses import dataclass, field
from pathlib import Path

MULTI30K_SPLITS = {"train": "train", "validation": "val", "val": "val"}


@dataclass
class GRAPEData:
    """Queries and the corpus they are ranked against.

    Attributes:
        queries (`datasets.Dataset`): At least the columns `query` and `target_id` (and `reference` for composed
            queries).
        corpus (`list`): Corpus items (texts or PIL images); `target_id` indexes it.
        name (`str`): Where the data came from, for model cards and logs.
    """

    queries: object
    corpus: list
    name: str = ""
    info: dict = field(default_factory=dict)


def is_multi30k_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / "task1").is_dir() or (path / "task2").is_dir()


def check_count(name: str, value: int | None, what: str) -> None:
    """Refuse a subset size that is not a positive whole number (`None` keeps everything)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive number of {what} (or None for all), got {value!r}.")


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise ValueError(f"Multi30k file {path} is missing; is {path.parents[1]} a Multi30k folder?")
    with gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def load_multi30k(
    path: str | Path,
    split: str = "train",
    task: str = "task2",
    query_lang: str = "de",
    corpus_lang: str = "en",
    query_index: int = 1,
    corpus_index: int = 1,
    max_images: int | None = None,
    max_queries: int | None = None,
    seed: int = 0,
) -> GRAPEData:
    """Build a GRAPE task from Multi30k: each image's `query_lang` caption is a query whose target is the same
    image's `corpus_lang` caption; the corpus holds one `corpus_lang` caption per image.

    Args:
        path (`str` or `Path`): The Multi30k folder (e.g. `../shared/data/multi30k`).
        split (`str`, *optional*, defaults to `"train"`): `"train"` or `"validation"` (`"val"`).
        task (`str`, *optional*, defaults to `"task2"`): `"task1"` (German is a professional translation of the
            English) or `"task2"` (five independent descriptions per language).
        query_index, corpus_index (`int`, *optional*, default to `1`): Which of task2's five descriptions (1-5).
        max_images (`int`, *optional*): Keep a seeded random subset of images (the corpus shrinks with it).
        max_queries (`int`, *optional*): Keep a seeded random subset of the queries (the corpus stays whole).
        seed (`int`, *optional*, defaults to `0`): Seed of both subsets.

    Example:
    ```python
    >>> from grape_hf.data import load_multi30k
    >>> data = load_multi30k("../shared/data/multi30k", split="validation", max_images=100)  # doctest: +SKIP
    >>> len(data.corpus), data.queries.column_names  # doctest: +SKIP
    (100, ['query', 'target_id', 'image_file'])
    ```
    """
    from datasets import Dataset

    path = Path(path)
    check_count("max_images", max_images, "images")
    check_count("max_queries", max_queries, "queries")
    if split not in MULTI30K_SPLITS:
        raise ValueError(f"Unknown Multi30k split {split!r}; choose one of {sorted(MULTI30K_SPLITS)}.")
    name = MULTI30K_SPLITS[split]
    if task == "task1":
        queries = _read_lines(path / "task1" / f"{name}.{query_lang}.gz")
        corpus = _read_lines(path / "task1" / f"{name}.{corpus_lang}.gz")
        images = _read_lines(path / "task1" / f"{name}.txt")
    elif task == "task2":
        for index in (query_index, corpus_index):
            if not 1 <= index <= 5:
                raise ValueError(f"task2 has descriptions 1-5 per image; got index {index}.")
        queries = _read_lines(path / "task2" / f"{name}.{query_index}.{query_lang}.gz")
        corpus = _read_lines(path / "task2" / f"{name}.{corpus_index}.{corpus_lang}.gz")
        images = _read_lines(path / "task2" / f"{name}_images.txt")
    else:
        raise ValueError(f"Unknown Multi30k task {task!r}; choose 'task1' or 'task2'.")
    if not len(queries) == len(corpus) == len(images):
        raise ValueError(f"Multi30k files of {path}/{task} {name} disagree in length.")
    rng = random.Random(seed)
    keep = list(range(len(images)))
    if max_images is not None and max_images < len(keep):
        keep = sorted(rng.sample(keep, max_images))
    corpus = [corpus[i].strip() for i in keep]
    # Not "image": TRL reads a column of that name as the prompt's picture.
    rows = {
        "query": [queries[i].strip() for i in keep],
        "target_id": list(range(len(keep))),
        "image_file": [images[i] for i in keep],
    }
    dataset = Dataset.from_dict(rows)
    if max_queries is not None and max_queries < len(dataset):
        dataset = dataset.select(sorted(rng.sample(range(len(dataset)), max_queries)))
    info = {
        "task": task,
        "split": split,
        "query_lang": query_lang,
        "corpus_lang": corpus_lang,
        "num_images": len(corpus),
        "num_queries": len(dataset),
    }
    label = f"multi30k/{task}/{name} {query_lang}->{corpus_lang}"
    return GRAPEData(queries=dataset, corpus=corpus, name=label, info=info)


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
