"""The word-level probe: which of the target's attribute words (shape, colour, size, position) a rewrite names.

The tiny CLIP knows one English word per attribute, so a rewrite retrieves its target only if it names those
words; a prompted LLM writes synonyms ("violet", "rhombus") or drops facts. The probe counts, per attribute word,
how often rewrites name it when the target's caption has it (`recall`) and when it has not (`false`), per
language or other group: what the retriever's ranking can teach, word by word.

Example:
```python
>>> from grape_hf.shapes.word_probe import attribute_words, word_recall
>>> sorted(attribute_words("A small violet Circle at the top"))
['circle', 'small', 'top']
>>> probe = word_recall([["a small purple circle"]], ["a small red circle at the top"], ["fr"])
>>> probe["fr"]["red"], probe["all"]["circle"]
({'recall': 0.0, 'false': 0.0}, {'recall': 1.0, 'false': 0.0})
```
"""

from __future__ import annotations

import re
from collections import defaultdict

from .vocabulary import COLOURS, POSITIONS, SHAPES, SIZES

ATTRIBUTE_WORDS = frozenset({*COLOURS, *SHAPES, *SIZES, *POSITIONS})
"""Every word a shapes caption uses for an attribute."""

__all__ = ["ATTRIBUTE_WORDS", "attribute_words", "visible_facts", "word_recall"]


def attribute_words(text: str) -> set[str]:
    """The attribute words (of [`ATTRIBUTE_WORDS`]) a text names, lower-cased."""
    return {word for word in re.findall(r"[a-z]+", text.lower()) if word in ATTRIBUTE_WORDS}


def word_recall(samples: list[list[str]], captions: list[str], groups: list[str] | None = None) -> dict:
    """Per group (e.g. a language) and over `all`, per attribute word: the share of rewrites naming the word among
    those whose target caption has it (`recall`), and among those whose caption has not (`false`).

    Args:
        samples (`list[list[str]]`): The rewrites of each query (one for greedy, several for samples).
        captions (`list[str]`): Each query's target caption.
        groups (`list[str]`, *optional*): Each query's group; without it only `all` is reported.

    Returns:
        `dict`: group -> word -> `{"recall": ..., "false": ...}`, for the words some target caption has.
    """
    if len(samples) != len(captions) or (groups is not None and len(groups) != len(captions)):
        raise ValueError(
            f"word_recall needs one entry per query: {len(samples)} sample lists, {len(captions)} captions"
            + (f", {len(groups)} groups." if groups is not None else ".")
        )
    counts = defaultdict(lambda: defaultdict(lambda: [0, 0, 0, 0]))  # named, should; named falsely, should not
    for group_samples, caption, group in zip(samples, captions, groups or ["all"] * len(captions)):
        target = attribute_words(caption)
        for sample in group_samples:
            said = attribute_words(sample)
            for key in {group, "all"}:
                for word in ATTRIBUTE_WORDS:
                    c = counts[key][word]
                    if word in target:
                        c[0] += word in said
                        c[1] += 1
                    else:
                        c[2] += word in said
                        c[3] += 1
    return {
        key: {
            word: {"recall": round(c[0] / c[1], 3), "false": round(c[2] / max(c[3], 1), 3)}
            for word, c in sorted(per_word.items())
            if c[1]
        }
        for key, per_word in sorted(counts.items())
    }


def visible_facts(texts: list[str], captions: list[str], tokenizer, context: int = 32) -> dict:
    """What a CLIP text tower reads of each text (its first `context` tokens, start and end included): the mean share
    of the target caption's attribute words found there (`visible_facts`), and the texts' mean length in tokens
    (`clip_tokens`). `tokenizer` is the retriever's (open_clip's `SimpleTokenizer`: `encode` and `decode`)."""
    shares, lengths = [], []
    for text, caption in zip(texts, captions):
        ids = tokenizer.encode(text)
        lengths.append(len(ids) + 2)
        seen = set(tokenizer.decode(ids[: context - 2]).split())
        facts = [word for word in caption.split() if word in ATTRIBUTE_WORDS]
        shares.append(sum(word in seen for word in facts) / max(len(facts), 1))
    return {
        "visible_facts": round(sum(shares) / max(len(shares), 1), 4),
        "clip_tokens": round(sum(lengths) / max(len(lengths), 1), 1),
    }
