"""Long-form queries: chatty descriptions of 100+ tokens with the attributes scattered.

CLIP reads the first 77 tokens of a query (`grape-shapes-clip` only 32) and drops the rest. A long-form query opens
with chatter that names no attribute, then gives each object's shape, colour, size and position in separate
sentences, in a random order, with more chatter in between; sometimes a fact comes back as an afterthought at the
end. Sizes and positions use everyday wording ("on the small side", "over on the left-hand side") that a rewriter
has to map back to the canonical caption.

The first `LONG_FORM_PREFIX_TOKENS` (77) pieces of a query hold at most one attribute fact, counted in CLIP's
pre-tokenizer pieces (every piece is at least one BPE token), so no 77-token CLIP, let alone the 32-token one, sees
enough of the scene to tell the image apart.
"""

from __future__ import annotations

import random

import regex

from .world import Scene, ShapeObject

LONG_FORM_PREFIX_TOKENS = 77
LONG_FORM_MIN_TOKENS = 100

# CLIP's pre-tokenizer (open_clip.tokenizer.SimpleTokenizer); a lower bound on its BPE token count.
_CLIP_PIECES = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)

# Filler that names no shape, colour, size or position (tests check this against ATTRIBUTE_WORDS).
CHATTER = (
    "I was looking at this picture the other day and I keep thinking about it.",
    "Honestly, it is one of those simple images that sticks with you for some reason.",
    "My friend sent it to me and asked me to help find it again, so here goes.",
    "I am not great at describing things, so please bear with me for a moment.",
    "The background is plain, a kind of pale greyish tone, with nothing special going on there.",
    "There is no text in it and there are no people, only a few simple shapes.",
    "It looks like something out of a children's book or an old puzzle game.",
    "I could be misremembering some of this, but I am fairly confident about most of it.",
    "It is hard to explain why, but the picture felt very calm and tidy to me.",
    "Sorry, this is taking longer than I expected it to.",
    "The edges looked slightly soft, as if the image had been resized at some point.",
    "I have seen a lot of pictures like this one, which is why I need your help.",
    "Let me try to go through it piece by piece, as carefully as I can.",
    "Anyway, I digress, so back to the picture itself.",
    "Where was I? Oh yes, the shapes.",
    "It reminded me of the flash cards we used in school a long time ago.",
    "I think it came from a data set that someone made for testing computer vision.",
    "Nothing in it moves, of course, it is just a still picture.",
    "The whole picture is fairly low resolution, if that helps at all.",
    "I wish I had saved it properly instead of losing it in my downloads folder.",
)
# Sentences that open an object; {ordinal} is "first", "second" or "third".
OBJECT_OPENERS = (
    "Now, the {ordinal} thing in the picture.",
    "Okay, so, about the {ordinal} object.",
    "Let me tell you about the {ordinal} one.",
    "Then there is the {ordinal} shape, which I remember well.",
)
ORDINALS = ("first", "second", "third")
# One fact per sentence; {value} is the wording of the attribute.
FACT_SENTENCES = {
    "shape": (
        "It was a {value}, I am fairly sure.",
        "If I remember correctly, it was shaped like a {value}.",
        "Its form? A {value}, definitely.",
    ),
    "colour": (
        "The colour was {value}.",
        "I would call its colour {value}, no doubt about it.",
        "It was painted {value}, as far as I can tell.",
    ),
    "size": ("It was {value}.", "Size-wise, it was {value}.", "I would say it was {value} compared to the frame."),
    "position": ("You could find it {value}.", "It sat {value}.", "It was placed {value}, I believe."),
}
AFTERTHOUGHTS = (
    "Oh, and I almost forgot to mention that the {ordinal} one was {clause}.",
    "One more thing: the {ordinal} one was {clause}.",
)
SIZE_WORDS = {
    "small": ("small", "quite small", "on the small side", "little"),
    "large": ("large", "quite big", "on the large side", "big"),
}
POSITION_WORDS = {
    "top": ("at the top", "up near the top", "at the top of the picture"),
    "left": ("on the left", "over on the left side", "on the left-hand side"),
    "middle": ("in the middle", "in the centre", "in the middle of the picture"),
    "right": ("on the right", "over on the right side", "on the right-hand side"),
    "bottom": ("at the bottom", "down near the bottom", "at the bottom of the picture"),
}
FACT_KINDS = ("shape", "colour", "size", "position")


def clip_piece_count(text: str) -> int:
    """How many pieces CLIP's pre-tokenizer splits `text` into: a lower bound on its CLIP token count."""
    return len(_CLIP_PIECES.findall(text.lower()))


def _fact_value(obj: ShapeObject, kind: str, rng: random.Random) -> str:
    if kind == "size":
        return rng.choice(SIZE_WORDS[obj.size])
    if kind == "position":
        return rng.choice(POSITION_WORDS[obj.position])
    return getattr(obj, kind)


def _afterthought_clause(kind: str, value: str) -> str:
    return f"a {value}" if kind == "shape" else value


def _facts_in_window(sentences: list[tuple[str, int]], window: int) -> int:
    """Facts in the sentences that start inside the first `window` pieces (a cut sentence may still leak one)."""
    start, facts = 0, 0
    for sentence, count in sentences:
        if start >= window:
            break
        facts += count
        start += clip_piece_count(sentence)
    return facts


def long_form_sentences(scene: Scene, rng: random.Random) -> list[tuple[str, int]]:
    """The description as `(sentence, number of attribute facts in it)` pairs, for inspection and tests."""
    chatter = list(CHATTER)
    rng.shuffle(chatter)
    intro_pool, chatter = chatter[:8], chatter[8:]
    body: list[tuple[str, int]] = []
    afterthoughts: list[tuple[str, int]] = []
    for index, obj in enumerate(scene.objects):
        ordinal = ORDINALS[index]
        body.append((rng.choice(OBJECT_OPENERS).format(ordinal=ordinal), 0))
        kinds = list(FACT_KINDS)
        rng.shuffle(kinds)
        if rng.random() < 0.3:
            kind = kinds.pop()
            clause = _afterthought_clause(kind, _fact_value(obj, kind, rng))
            afterthoughts.append((rng.choice(AFTERTHOUGHTS).format(ordinal=ordinal, clause=clause), 1))
        for kind in kinds:
            body.append((rng.choice(FACT_SENTENCES[kind]).format(value=_fact_value(obj, kind, rng)), 1))
            if chatter and rng.random() < 0.35:
                body.append((chatter.pop(), 0))
    # Open with chatter until the 77-piece window holds at most one fact (eight sentences are always enough).
    intro = [(intro_pool.pop(), 0), (intro_pool.pop(), 0)]
    while _facts_in_window(intro + body, LONG_FORM_PREFIX_TOKENS) > 1:
        intro.append((intro_pool.pop(), 0))
    sentences = intro + body + afterthoughts
    sentences.append((chatter.pop(), 0))
    while chatter and sum(clip_piece_count(s) for s, _ in sentences) < LONG_FORM_MIN_TOKENS + 10:
        sentences.append((chatter.pop(), 0))
    return sentences


def long_form_description(scene: Scene, rng: random.Random | int = 0) -> str:
    """A chatty, 100+ token description of `scene` whose first 77 tokens hold at most one attribute.

    Args:
        scene (`Scene`): The scene to describe.
        rng (`random.Random` or `int`, *optional*, defaults to `0`): The randomness (or its seed) for the wording.

    Example:
    ```python
    >>> from grape_hf.shapes import Scene, ShapeObject, long_form_description
    >>> scene = Scene((ShapeObject("circle", "red", "small", "left"),))
    >>> text = long_form_description(scene, rng=0)
    >>> "circle" in text and "red" in text and len(text.split()) > 77
    True
    ```
    """
    if not isinstance(rng, random.Random):
        rng = random.Random(rng)
    return " ".join(sentence for sentence, _ in long_form_sentences(scene, rng))
