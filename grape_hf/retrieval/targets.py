"""Target ids: which corpus items are right for each query, checked strictly before anything is ranked."""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence

import torch


def as_target_id(value, query_index: int) -> int:
    """One corpus id, strictly: ints (Python, NumPy or 0-d tensors) and whole floats; never strings or bools."""
    if isinstance(value, torch.Tensor) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bool) or (hasattr(value, "dtype") and str(getattr(value, "dtype", "")) == "bool"):
        raise ValueError(
            f"Query {query_index}'s target_id is the bool {value!r}; give the integer position of its corpus item."
        )
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and float(value).is_integer():
        return int(value)
    if isinstance(value, str | bytes):
        raise ValueError(
            f"Query {query_index}'s target_id is the string {value!r}; target ids must be integers (a string is "
            "never split into digits). Cast the column first, e.g. `dataset.cast_column('target_id', "
            "Value('int64'))`."
        )
    raise ValueError(
        f"Query {query_index}'s target_id {value!r} ({type(value).__name__}) is not a whole number; give the integer "
        "position of its corpus item (or a list of them)."
    )


def normalize_targets(target_ids, num_queries: int, corpus_size: int) -> list[list[int]]:
    """One list of distinct, in-range corpus ids per query, from one id or a list of them per query (any int-like).

    Example:
    ```python
    >>> from grape_hf.retrieval.targets import normalize_targets
    >>> normalize_targets([0, [2, 1, 2]], num_queries=2, corpus_size=3)
    [[0], [2, 1]]
    ```
    """
    if isinstance(target_ids, torch.Tensor):
        target_ids = target_ids.tolist()
    if isinstance(target_ids, str | bytes) or not isinstance(target_ids, Sequence | Iterable):
        target_ids = [target_ids]
    target_ids = list(target_ids)
    if len(target_ids) != num_queries:
        raise ValueError(
            f"Got {len(target_ids)} target ids for {num_queries} queries; pass one (or a list) per query."
        )
    out = []
    for qi, t in enumerate(target_ids):
        if isinstance(t, torch.Tensor):
            t = t.tolist()
        many = isinstance(t, Sequence | Iterable) and not isinstance(t, str | bytes)
        ids = [as_target_id(i, qi) for i in t] if many else [as_target_id(t, qi)]
        ids = list(dict.fromkeys(ids))  # a repeated id would be subtracted twice from the non-target mean
        if not ids:
            raise ValueError(f"Query {qi} has an empty list of target ids; give at least one relevant corpus id.")
        for i in ids:
            if not 0 <= i < corpus_size:
                raise ValueError(
                    f"target_id {i} is outside the corpus ({corpus_size} items); ids are 0-based positions in the "
                    "corpus."
                )
        out.append(ids)
    return out
