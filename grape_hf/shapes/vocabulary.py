"""The shapes world's vocabulary: what a scene can hold, in the order captions read.

Its own module (as open_clip keeps shared constants in `constants.py`) so that the world and the caption languages
both import it and neither imports the other's module at run time.
"""

from __future__ import annotations

from typing import Protocol

SHAPES = ("circle", "square", "triangle", "cross", "diamond")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES = ("small", "large")
# Reading order: captions list objects in this order.
POSITIONS = ("top", "left", "middle", "right", "bottom")


class ObjectLike(Protocol):
    """What describing an object reads: a `ShapeObject`, or anything with these four fields."""

    shape: str
    colour: str
    size: str
    position: str


class SceneLike(Protocol):
    """What describing a scene reads: a `Scene`, or anything with its objects in reading order."""

    @property
    def objects(self) -> tuple[ObjectLike, ...]: ...
