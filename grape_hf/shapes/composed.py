"""Composed queries, as in CIRR: a reference scene plus an edit in words; the target is the edited scene.

Six kinds of edit, each naming the object it changes by the shortest description that is unique in the scene
("the circle", "the red circle", "the small red circle", else "the circle on the left"):

- `colour`: "make the circle green"
- `shape`: "turn the red circle into a square"
- `size`: "make the circle large"
- `add`: "add a small blue square on the right" (to a free position)
- `remove`: "remove the green triangle" (scenes of 2+ objects)
- `move`: "move the circle to the top" (to a free position)

The target is a new image (another `render_seed`), like CIRR's target photo: the edit gives what changes, the
reference caption what stays.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from .languages import LANGUAGE_TABLES
from .world import COLOURS, MAX_OBJECTS, SHAPES, SIZES, Scene, ShapeObject

EDIT_KINDS = ("colour", "shape", "size", "add", "remove", "move")
_POSITION_TARGETS = {
    "top": "the top",
    "left": "the left",
    "middle": "the middle",
    "right": "the right",
    "bottom": "the bottom",
}


@dataclass(frozen=True)
class Edit:
    """An edit of a reference scene: its kind, its wording, and the scene it leads to.

    Args:
        kind (`str`): One of `EDIT_KINDS`.
        text (`str`): The edit in words, e.g. `"make the circle green"`.
        target (`Scene`): The edited scene.
    """

    kind: str
    text: str
    target: Scene


def referring_expression(obj: ShapeObject, scene: Scene) -> str:
    """The shortest description of `obj` that no other object of `scene` fits.

    Example:
    ```python
    >>> from grape_hf.shapes import Scene, ShapeObject, referring_expression
    >>> a, b = ShapeObject("circle", "red", "small", "left"), ShapeObject("circle", "blue", "small", "right")
    >>> referring_expression(a, Scene((a, b)))
    'red circle'
    ```
    """
    others = [other for other in scene.objects if other != obj]
    candidates = [
        (obj.shape, lambda o: o.shape == obj.shape),
        (f"{obj.colour} {obj.shape}", lambda o: (o.shape, o.colour) == (obj.shape, obj.colour)),
        (
            f"{obj.size} {obj.colour} {obj.shape}",
            lambda o: (o.shape, o.colour, o.size) == (obj.shape, obj.colour, obj.size),
        ),
    ]
    for words, matches in candidates:
        if not any(matches(other) for other in others):
            return words
    return f"{obj.shape} {LANGUAGE_TABLES['en']['positions'][obj.position]}"


def _other(values: tuple[str, ...], current: str, rng: random.Random) -> str:
    return rng.choice([value for value in values if value != current])


def apply_random_edit(scene: Scene, rng: random.Random, kinds: tuple[str, ...] = EDIT_KINDS) -> Edit:
    """Draw an edit of `scene` among the `kinds` that apply to it and return it with its target scene.

    The target always differs from the reference, and gets a fresh `render_seed`.

    Example:
    ```python
    >>> import random
    >>> from grape_hf.shapes import Scene, ShapeObject, apply_random_edit
    >>> scene = Scene((ShapeObject("circle", "red", "small", "left"),))
    >>> edit = apply_random_edit(scene, random.Random(0), kinds=("colour",))
    >>> edit.text.startswith("make the circle "), edit.target.objects[0].colour != "red"
    (True, True)
    ```
    """
    unknown = [kind for kind in kinds if kind not in EDIT_KINDS]
    if unknown:
        raise ValueError(f"Unknown edit kinds {unknown}; choose among {list(EDIT_KINDS)}.")
    free = scene.free_positions()
    possible = [
        kind
        for kind in kinds
        if not (kind == "add" and len(scene.objects) >= MAX_OBJECTS)
        and not (kind == "remove" and len(scene.objects) < 2)
        and not (kind == "move" and not free)
    ]
    if not possible:
        raise ValueError(f"None of the edit kinds {list(kinds)} applies to the scene {scene.caption!r}.")
    kind = rng.choice(possible)
    objects = list(scene.objects)
    render_seed = rng.getrandbits(32)
    if kind == "add":
        new = ShapeObject(rng.choice(SHAPES), rng.choice(COLOURS), rng.choice(SIZES), rng.choice(free))
        target = Scene((*objects, new), render_seed=render_seed)
        return Edit(kind, f"add {new.phrase}", target)
    index = rng.randrange(len(objects))
    obj = objects[index]
    ref = referring_expression(obj, scene)
    if kind == "remove":
        del objects[index]
        text = f"remove the {ref}"
    elif kind == "colour":
        objects[index] = replace(obj, colour=_other(COLOURS, obj.colour, rng))
        text = f"make the {ref} {objects[index].colour}"
    elif kind == "shape":
        objects[index] = replace(obj, shape=_other(SHAPES, obj.shape, rng))
        text = f"turn the {ref} into a {objects[index].shape}"
    elif kind == "size":
        objects[index] = replace(obj, size=_other(SIZES, obj.size, rng))
        text = f"make the {ref} {objects[index].size}"
    else:  # move
        objects[index] = replace(obj, position=rng.choice(free))
        text = f"move the {ref} to {_POSITION_TARGETS[objects[index].position]}"
    return Edit(kind, text, Scene(tuple(objects), render_seed=render_seed))
