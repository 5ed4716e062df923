"""Query sets with exact ground truth over a shapes corpus: in-distribution, and three shifts.

- `in_distribution`: each image's canonical English caption (what the retriever was trained on).
- `multilingual`: the caption in German, French, Spanish and Chinese (one query per image and language).
- `long_form`: a chatty 100+ token description whose start names (almost) nothing (`long_form.py`).
- `composed`: a reference image's caption plus an edit; the target is the edited scene (`composed.py`). The
  corpus holds, for each query, the reference, the target and `composed_negatives` other edits of the reference as
  hard negatives: the edit always changes what is retrieved, and the more neighbours, the less copying the
  reference caption earns.

Every corpus caption is unique, so `target_id` is the one right answer.
"""

from __future__ import annotations

import random

from .composed import apply_random_edit
from .languages import SHIFT_LANGUAGES, describe
from .long_form import long_form_description
from .world import IMAGE_SIZE, Scene, generate_scenes, sample_scene

SHIFTS = ("in_distribution", "multilingual", "long_form", "composed")


def _check_shift(shift: str) -> None:
    if shift not in SHIFTS:
        raise ValueError(f"Unknown shapes shift {shift!r}; choose one of {list(SHIFTS)}.")


def _composed(num_images: int, num_queries: int, seed: int, negatives: int = 1) -> tuple[list[dict], list[Scene]]:
    per_query = 2 + negatives
    if per_query * num_queries > num_images:
        raise ValueError(
            f"A composed corpus holds {per_query} images per query (reference, target, {negatives} other edit(s) of "
            f"the reference): {num_queries} queries need at least {per_query * num_queries} images, not "
            f"{num_images}. Lower num_queries or raise num_images."
        )
    rng = random.Random(f"composed-{seed}")
    scenes: list[Scene] = []
    seen: set = set()
    pairs = []
    while len(pairs) < num_queries:
        reference = sample_scene(rng)
        edit = apply_random_edit(reference, rng)
        others = [apply_random_edit(reference, rng).target for _ in range(negatives)]
        keys = [reference.key, edit.target.key, *(other.key for other in others)]
        if len(set(keys)) < len(keys) or seen.intersection(keys):
            continue
        seen.update(keys)
        pairs.append((len(scenes), len(scenes) + 1, edit))
        scenes += [reference, edit.target, *others]
    scenes += generate_scenes(num_images - len(scenes), seed=rng.getrandbits(32), exclude=seen)
    # Shuffle so that a target's id says nothing about its reference's.
    order = list(range(len(scenes)))
    rng.shuffle(order)
    new_id = {old: new for new, old in enumerate(order)}
    corpus = [scenes[old] for old in order]
    rows = [
        {
            "query": edit.text,
            "target_id": new_id[target],
            "shift": "composed",
            "reference_id": new_id[reference],
            "reference": corpus[new_id[reference]].caption,
            "edit_kind": edit.kind,
        }
        for reference, target, edit in pairs
    ]
    return rows, corpus


def build_shift(
    shift: str,
    num_images: int = 1000,
    seed: int = 1,
    num_queries: int | None = None,
    languages: tuple[str, ...] = SHIFT_LANGUAGES,
    composed_negatives: int = 1,
) -> tuple[list[dict], list[Scene]]:
    """The queries (as rows) and the corpus scenes of a shift, in plain Python; `build_shift_dataset` wraps it.

    Args:
        shift (`str`): One of `SHIFTS`: `in_distribution`, `multilingual`, `long_form`, `composed`.
        num_images (`int`, *optional*, defaults to `1000`): Corpus size.
        seed (`int`, *optional*, defaults to `1`): Seed of the corpus and the queries.
        `benchmarks/train_shapes_clip.py`
            trains on seed 0's stream; evaluate on other seeds.
        num_queries (`int`, *optional*): Queries per language (multilingual) or in all. Defaults to one per image,
            and to `num_images // (3 + composed_negatives)` for `composed`.
        languages (`tuple[str, ...]`, *optional*, defaults to `("de", "fr", "es", "zh")`): Languages of the
            multilingual shift.
        composed_negatives (`int`, *optional*, defaults to `1`): Other edits of each composed query's reference
            that the corpus holds besides the target.

    Returns:
        `tuple[list[dict], list[Scene]]`: rows with `query`, `target_id` (index into the corpus) and `shift` (plus
        `language` for multilingual; `reference_id`, `reference` and `edit_kind` for composed), and the corpus.

    Example:
    ```python
    >>> from grape_hf.shapes import build_shift
    >>> rows, corpus = build_shift("multilingual", num_images=10, seed=1, languages=("de",))
    >>> rows[0]["language"], len(rows), len(corpus)
    ('de', 10, 10)
    ```
    """
    _check_shift(shift)
    if shift == "composed":
        count = num_images // (3 + composed_negatives) if num_queries is None else num_queries
        return _composed(num_images, count, seed, composed_negatives)
    corpus = generate_scenes(num_images, seed=seed)
    count = num_images if num_queries is None else num_queries
    if count > num_images:
        raise ValueError(f"num_queries={count} is more than the corpus ({num_images} images) has captions for.")
    rng = random.Random(f"{shift}-{seed}")
    targets = sorted(rng.sample(range(num_images), count)) if count < num_images else list(range(num_images))
    if shift == "in_distribution":
        return [{"query": corpus[i].caption, "target_id": i, "shift": shift} for i in targets], corpus
    if shift == "long_form":
        return [
            {"query": long_form_description(corpus[i], rng), "target_id": i, "shift": shift} for i in targets
        ], corpus
    return [
        {"query": describe(corpus[i], language), "target_id": i, "shift": shift, "language": language}
        for language in languages
        for i in targets
    ], corpus


def corpus_dataset(scenes: list[Scene], image_size: int = IMAGE_SIZE):
    """A `datasets.Dataset` of the rendered corpus: columns `id`, `image` (PIL) and `caption`."""
    from datasets import Dataset, Features, Image, Value

    features = Features({"id": Value("int64"), "image": Image(), "caption": Value("string")})
    return Dataset.from_dict(
        {
            "id": list(range(len(scenes))),
            "image": [scene.render(image_size) for scene in scenes],
            "caption": [scene.caption for scene in scenes],
        },
        features=features,
    )


def build_shift_dataset(
    shift: str,
    num_images: int = 1000,
    seed: int = 1,
    num_queries: int | None = None,
    languages: tuple[str, ...] = SHIFT_LANGUAGES,
    image_size: int = IMAGE_SIZE,
):
    """A shapes query set with exact ground truth, as a `datasets.DatasetDict` with two splits.

    - `queries`: `query`, `target_id` (index into `corpus`), `shift`; plus `language` (multilingual), or
      `reference_id`, `reference` (the reference image's caption) and `edit_kind` (composed).
    - `corpus`: `id`, `image` (a PIL image), `caption` (the canonical English caption).

    Args: as in `build_shift`, plus `image_size` (`int`, *optional*, defaults to `64`).

    Example:
    ```python
    >>> from grape_hf.shapes import build_shift_dataset
    >>> data = build_shift_dataset("composed", num_images=12, seed=1)
    >>> row = data["queries"][0]
    >>> sorted(row)
    ['edit_kind', 'query', 'reference', 'reference_id', 'shift', 'target_id']
    >>> data["corpus"][row["reference_id"]]["caption"] == row["reference"]
    True
    ```
    """
    from datasets import Dataset, DatasetDict

    rows, scenes = build_shift(shift, num_images, seed, num_queries, languages)
    queries = Dataset.from_dict({column: [row[column] for row in rows] for column in rows[0]})
    return DatasetDict({"queries": queries, "corpus": corpus_dataset(scenes, image_size)})


def build_grape_task(
    shift: str,
    train_images: int = 1000,
    eval_images: int = 1000,
    eval_queries: int | None = 200,
    train_seed: int = 2,
    eval_seed: int = 1,
    image_size: int = IMAGE_SIZE,
    composed_negatives: int = 1,
    reference_images: bool = False,
):
    """A shift as a GRAPE training task: the `datasets.DatasetDict` that `load_grape_dataset`, the recipes and
    `--dataset_name` read (save it with `save_to_disk`).

    - `train` / `train_corpus`: the queries and rendered corpus of the world of `train_seed`, minus the queries whose
      target caption is in the evaluation corpus (no held-out scene is a training target);
    - `validation` / `validation_corpus`: a seeded subset of `eval_queries` queries over `eval_seed`'s corpus
      (multilingual: the same images in each language). `benchmarks/train_shapes_clip.py` trains the retriever on
      seed 0, so the defaults hold out both worlds from it.

    Query splits carry `query`, `target_id` and `target_caption` (plus the shift's own columns: `language`, or
    `reference`, `reference_id` and `edit_kind`); corpus splits `id`, `image` and `caption`. `composed_negatives`:
    other edits of each reference in both corpora (see [`build_shift`]). `reference_images` (composed): also a
    `reference_image` column, the reference scene rendered, for a vision-language rewriter (`reference_column:
    reference_image`).

    Example:
    ```python
    >>> from grape_hf.shapes import build_grape_task
    >>> task = build_grape_task("composed", train_images=24, eval_images=24, eval_queries=4)
    >>> sorted(task), task["validation"].num_rows, len(task["validation_corpus"])
    (['train', 'train_corpus', 'validation', 'validation_corpus'], 4, 24)
    ```
    """
    from datasets import Dataset, DatasetDict

    _check_shift(shift)
    rows, scenes = build_shift(shift, num_images=eval_images, seed=eval_seed, composed_negatives=composed_negatives)
    if eval_queries is not None:
        rng = random.Random(f"grape-task-eval-{shift}-{eval_seed}")
        if shift == "multilingual":
            keep = set(rng.sample(range(eval_images), min(eval_images, max(1, eval_queries // len(SHIFT_LANGUAGES)))))
            rows = [row for row in rows if row["target_id"] in keep]
        else:
            rows = [rows[i] for i in sorted(rng.sample(range(len(rows)), min(eval_queries, len(rows))))]
    held_out = {scene.caption for scene in scenes}
    train_rows, train_scenes = build_shift(
        shift, num_images=train_images, seed=train_seed, composed_negatives=composed_negatives
    )
    train_rows = [row for row in train_rows if train_scenes[row["target_id"]].caption not in held_out]
    if not train_rows:
        raise ValueError(f"No {shift} training query is left with {train_images} train images; raise train_images.")

    if reference_images and shift != "composed":
        raise ValueError(
            f"reference_images=True is for the composed shift (a reference image plus an edit), not {shift!r}."
        )

    def queries(rows: list[dict], corpus: list[Scene]) -> Dataset:
        rows = [{**row, "target_caption": corpus[row["target_id"]].caption} for row in rows]
        data = Dataset.from_dict({column: [row[column] for row in rows] for column in rows[0]})
        if not reference_images:
            return data
        from datasets import Features, Image, concatenate_datasets

        images = [corpus[row["reference_id"]].render(image_size) for row in rows]
        column = Dataset.from_dict({"reference_image": images}, features=Features({"reference_image": Image()}))
        return concatenate_datasets([data, column], axis=1)

    return DatasetDict(
        {
            "train": queries(train_rows, train_scenes),
            "train_corpus": corpus_dataset(train_scenes, image_size),
            "validation": queries(rows, scenes),
            "validation_corpus": corpus_dataset(scenes, image_size),
        }
    )
