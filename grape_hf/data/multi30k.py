"""Multi30k as a GRAPE task: the layout of `../shared/data/multi30k` (`task1/`, `task2/` of gzip caption files),
where a caption in one language is the query and the same image's caption in another language is the target."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

from .base import GRAPEData, check_count

MULTI30K_SPLITS = {"train": "train", "validation": "val", "val": "val"}


def is_multi30k_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / "task1").is_dir() or (path / "task2").is_dir()


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
