"""What a GRAPE task is: queries with the id of their right corpus item, and the corpus itself."""

from __future__ import annotations

from dataclasses import dataclass, field


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


def check_count(name: str, value: int | None, what: str) -> None:
    """Refuse a subset size that is not a positive whole number (`None` keeps everything)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive number of {what} (or None for all), got {value!r}.")
