"""The shapes world: seeded scenes of 1-3 coloured shapes, their 64-px images and one canonical English caption.

No pretrained CLIP can be downloaded offline, so grape_hf trains a tiny open_clip model on this world
(`benchmarks/train_shapes_clip.py`) and builds distribution shifts on top of it (`grape_hf.shapes.queries`).

A scene is a set of objects, each with a shape, a colour, a size and one of five positions (no two objects share a
position). Its caption lists the objects in reading order (top, left, middle, right, bottom) in one fixed grammar:

    caption := object | object " and " object | object ", " object " and " object
    object  := "a " size " " colour " " shape " " position
    e.g. "a small red circle on the left and a large blue square in the middle"

The image draws each object at its position's anchor with a little jitter in place, size and tint, over a light,
slightly noisy background; the caption does not depend on the jitter (`Scene.render_seed`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageDraw

from .languages import describe, describe_object
from .vocabulary import COLOURS, POSITIONS, SHAPES, SIZES

MAX_OBJECTS = 3
IMAGE_SIZE = 64

COLOUR_RGB = {
    "red": (215, 38, 38),
    "green": (40, 160, 60),
    "blue": (40, 80, 215),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (245, 130, 30),
}
# Anchor of each position, as fractions of the image side.
POSITION_ANCHORS = {
    "top": (0.5, 0.2),
    "left": (0.2, 0.5),
    "middle": (0.5, 0.5),
    "right": (0.8, 0.5),
    "bottom": (0.5, 0.8),
}
# Object extent as a fraction of the image side (11 and 18 px at 64 px).
SIZE_FRACTIONS = {"small": 0.17, "large": 0.28}
# How many objects a sampled scene has, and how often.
NUM_OBJECTS_WEIGHTS = {1: 0.2, 2: 0.4, 3: 0.4}

_SUPERSAMPLE = 4  # draw at 4x and downsample, for anti-aliased edges


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"Unknown {name} {value!r}: the shapes world knows {list(allowed)}.")


@dataclass(frozen=True, order=True)
class ShapeObject:
    """One object of a scene.

    Args:
        shape (`str`): One of `SHAPES`.
        colour (`str`): One of `COLOURS`.
        size (`str`): One of `SIZES`.
        position (`str`): One of `POSITIONS`.

    Example:
    ```python
    >>> from grape_hf.shapes import ShapeObject
    >>> ShapeObject("circle", "red", "small", "left").phrase
    'a small red circle on the left'
    ```
    """

    shape: str
    colour: str
    size: str
    position: str

    def __post_init__(self):
        _check("shape", self.shape, SHAPES)
        _check("colour", self.colour, COLOURS)
        _check("size", self.size, SIZES)
        _check("position", self.position, POSITIONS)

    @property
    def phrase(self) -> str:
        """The object's canonical English phrase, e.g. `"a large blue square at the top"`."""
        return describe_object(self, "en")


@dataclass(frozen=True)
class Scene:
    """A scene: 1-3 objects at distinct positions, plus the seed of the rendering jitter.

    Objects are kept in reading order of their positions, so two scenes with the same objects compare equal
    (`Scene.key`) whatever order they were given in.

    Args:
        objects (`tuple[ShapeObject, ...]`): The objects, 1 to `MAX_OBJECTS`, no two at the same position.
        render_seed (`int`, *optional*, defaults to `0`): Seeds the jitter and background of `render()`; it does
            not change the caption.

    Example:
    ```python
    >>> from grape_hf.shapes import Scene, ShapeObject
    >>> scene = Scene(
    ...     (ShapeObject("square", "blue", "large", "middle"), ShapeObject("circle", "red", "small", "left"))
    ... )
    >>> scene.caption
    'a small red circle on the left and a large blue square in the middle'
    >>> scene.render().size
    (64, 64)
    ```
    """

    objects: tuple[ShapeObject, ...]
    render_seed: int = field(default=0, compare=False)

    def __post_init__(self):
        objects = tuple(self.objects)
        if not 1 <= len(objects) <= MAX_OBJECTS:
            raise ValueError(f"A scene has 1 to {MAX_OBJECTS} objects; got {len(objects)}.")
        positions = [obj.position for obj in objects]
        if len(set(positions)) != len(positions):
            raise ValueError(f"Two objects of a scene share a position: {positions}. Give each its own position.")
        object.__setattr__(self, "objects", tuple(sorted(objects, key=lambda obj: POSITIONS.index(obj.position))))

    @property
    def key(self) -> tuple[ShapeObject, ...]:
        """What the caption describes: the objects, without the rendering seed."""
        return self.objects

    @property
    def caption(self) -> str:
        """The canonical English caption."""
        return describe(self, "en")

    def free_positions(self) -> list[str]:
        taken = {obj.position for obj in self.objects}
        return [position for position in POSITIONS if position not in taken]

    def object_at(self, position: str) -> ShapeObject | None:
        return next((obj for obj in self.objects if obj.position == position), None)

    def with_objects(self, objects) -> Scene:
        """A copy with other objects (and the same rendering seed)."""
        return replace(self, objects=tuple(objects))

    def render(self, image_size: int = IMAGE_SIZE) -> Image.Image:
        """Draw the scene; see `render_scene`."""
        return render_scene(self, image_size)


def sample_scene(rng: random.Random, num_objects: int | None = None) -> Scene:
    """Draw one scene: the number of objects from `NUM_OBJECTS_WEIGHTS` (unless given), distinct positions, and
    uniform shape, colour and size per object."""
    if num_objects is None:
        num_objects = rng.choices(list(NUM_OBJECTS_WEIGHTS), weights=list(NUM_OBJECTS_WEIGHTS.values()))[0]
    positions = rng.sample(POSITIONS, num_objects)
    objects = [
        ShapeObject(rng.choice(SHAPES), rng.choice(COLOURS), rng.choice(SIZES), position) for position in positions
    ]
    return Scene(tuple(objects), render_seed=rng.getrandbits(32))


def generate_scenes(num_scenes: int, seed: int = 0, unique: bool = True, exclude=()) -> list[Scene]:
    """Draw `num_scenes` scenes from `seed`; the same arguments always give the same scenes.

    Args:
        num_scenes (`int`): How many scenes.
        seed (`int`, *optional*, defaults to `0`): Seed of the draw.
        unique (`bool`, *optional*, defaults to `True`): Whether every scene must have its own caption (a corpus
            needs this so that a caption names exactly one image).
        exclude (iterable of `Scene.key`, *optional*): Scene keys not to draw (e.g. those already in a corpus).

    Example:
    ```python
    >>> from grape_hf.shapes import generate_scenes
    >>> [scene.caption for scene in generate_scenes(2, seed=0)] == [s.caption for s in generate_scenes(2, seed=0)]
    True
    ```
    """
    rng = random.Random(seed)
    seen = set(exclude)
    scenes = []
    attempts = 0
    while len(scenes) < num_scenes:
        attempts += 1
        if attempts > 50 * num_scenes + 1000:
            raise ValueError(
                f"Could not draw {num_scenes} distinct scenes (got {len(scenes)}); ask for fewer, or pass "
                "unique=False."
            )
        scene = sample_scene(rng)
        if unique:
            if scene.key in seen:
                continue
            seen.add(scene.key)
        scenes.append(scene)
    return scenes


def _shape_polygon(shape: str, cx: float, cy: float, extent: float) -> list[tuple[float, float]] | None:
    half = extent / 2
    if shape == "triangle":
        return [(cx, cy - half), (cx + half, cy + half * 0.8), (cx - half, cy + half * 0.8)]
    if shape == "diamond":
        return [(cx, cy - half), (cx + half, cy), (cx, cy + half), (cx - half, cy)]
    return None


def render_scene(scene: Scene, image_size: int = IMAGE_SIZE) -> Image.Image:
    """Draw a scene as an RGB image of `image_size` pixels a side.

    The drawing is a pure function of the scene (objects and `render_seed`): same scene, same pixels.

    Example:
    ```python
    >>> from grape_hf.shapes import generate_scenes, render_scene
    >>> scene = generate_scenes(1, seed=3)[0]
    >>> render_scene(scene).tobytes() == render_scene(scene).tobytes()
    True
    ```
    """
    rng = random.Random(scene.render_seed)
    side = image_size * _SUPERSAMPLE
    base = rng.randint(200, 240)
    background = tuple(min(255, base + rng.randint(-10, 10)) for _ in range(3))
    canvas = Image.new("RGB", (side, side), background)
    draw = ImageDraw.Draw(canvas)
    for obj in scene.objects:
        ax, ay = POSITION_ANCHORS[obj.position]
        cx = (ax + rng.uniform(-0.025, 0.025)) * side
        cy = (ay + rng.uniform(-0.025, 0.025)) * side
        extent = SIZE_FRACTIONS[obj.size] * rng.uniform(0.93, 1.07) * side
        colour = tuple(min(255, max(0, c + rng.randint(-12, 12))) for c in COLOUR_RGB[obj.colour])
        half = extent / 2
        if obj.shape == "circle":
            draw.ellipse([cx - half, cy - half, cx + half, cy + half], fill=colour)
        elif obj.shape == "square":
            side_half = half * 0.85  # a square of the same extent looks bigger than a circle
            draw.rectangle([cx - side_half, cy - side_half, cx + side_half, cy + side_half], fill=colour)
        elif obj.shape == "cross":
            arm = half / 3
            draw.rectangle([cx - half, cy - arm, cx + half, cy + arm], fill=colour)
            draw.rectangle([cx - arm, cy - half, cx + arm, cy + half], fill=colour)
        else:
            draw.polygon(_shape_polygon(obj.shape, cx, cy, extent), fill=colour)
    image = canvas.resize((image_size, image_size), Image.Resampling.LANCZOS)
    noise = np.random.default_rng(scene.render_seed).normal(0.0, 3.0, size=(image_size, image_size, 3))
    pixels = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)
