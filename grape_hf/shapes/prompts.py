"""The shapes shifts' few-shot prompts: demonstrations drawn from a task's training world, and the prompt texts the
shape world needs beyond the built-in ones (`grape_hf.rewriting.prompts`).

Demonstrations pair a training query with its target's canonical caption as the rewrite: scenes of few objects (short
prompts), one per language (multilingual) or edit kind (composed). SmolLM2-135M does not find the caption style
zero-shot (long-form rewrites are chatter without one), and given one it often copies it verbatim; two that differ
curb that. Long-form queries are ~300 tokens, so they get one, of one object.

Example:
```python
>>> from grape_hf.shapes import build_grape_task
>>> from grape_hf.shapes.prompts import few_shot_examples
>>> task = build_grape_task("multilingual", train_images=40, eval_images=40, eval_queries=4)
>>> shots = few_shot_examples("multilingual", task["train"])
>>> len(shots), sorted(shots[0])
(2, ['query', 'rewrite'])
```
"""

from __future__ import annotations

import random

__all__ = ["LONG_FORM_COMPLETION", "MULTILINGUAL_CHAT", "SHOTS", "few_shot_examples"]

SHOTS = {"multilingual": (2, 2), "long_form": (1, 1), "composed": (2, 2)}
"""Shift → (demonstrations, objects in each demonstration's scene)."""

MULTILINGUAL_CHAT = {
    "system": "You rewrite search queries for an English image-caption search engine.",
    "user": "Translate this image description into English, as a short image caption. Reply with the English "
    "description only.\n\n{query}",
}
"""The chat prompt of the multilingual shift: the built-in one names German, the shapes queries come in four."""

LONG_FORM_COMPLETION = (
    "Summarise each long description as one short image caption of at most 16 words that keeps every object, colour, "
    "size and position."
)
"""The plain-text long-form instruction: it asks for a length CLIP's 32-token text window holds."""


def few_shot_examples(shift: str, train_rows, seed: str | None = None) -> list[dict]:
    """The shift's demonstrations (`SHOTS`) from `train_rows` (a task's `train` split): `{"query", "rewrite"}` (plus
    `"reference"` for composed), seeded by the shift's name, distinct in language or edit kind."""
    if shift not in SHOTS:
        raise ValueError(f"No few-shot prompt for the shapes shift {shift!r}; choose one of {sorted(SHOTS)}.")
    count, objects = SHOTS[shift]
    rows = [row for row in train_rows if len(row["target_caption"].replace(" and ", ", ").split(", ")) == objects]
    random.Random(seed or f"shapes-grape-shots-{shift}").shuffle(rows)
    key = {"multilingual": "language", "composed": "edit_kind"}.get(shift)
    examples, seen = [], set()
    for row in rows:
        if len(examples) < count and not (key and row[key] in seen):
            seen.add(row.get(key))
            example = {"query": row["query"], "rewrite": row["target_caption"]}
            examples.append({**example, "reference": row["reference"]} if shift == "composed" else example)
    return examples
