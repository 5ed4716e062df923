"""The shapes world: a seeded synthetic image-caption world, the tiny CLIP trained on it, and shifted query sets.

No pretrained CLIP weights can be had offline, so grape_hf ships `grape-shapes-clip`, a 5.5M-parameter open_clip
model trained on this world (`open_clip:grape-shapes-clip@grape-shapes`), and builds GRAPE's distribution shifts
over it with exact ground truth.

Example:
```python
>>> from grape_hf.shapes import build_shift
>>> rows, corpus = build_shift("multilingual", num_images=3, seed=1, languages=("de",))
>>> rows[0]["query"], corpus[rows[0]["target_id"]].caption
('ein großes rotes Dreieck oben', 'a large red triangle at the top')
```
"""

from .composed import EDIT_KINDS, Edit, apply_random_edit, referring_expression
from .languages import LANGUAGE_TABLES, LANGUAGES, SHIFT_LANGUAGES, describe, describe_object
from .long_form import clip_piece_count, long_form_description
from .queries import SHIFTS, build_grape_task, build_shift, build_shift_dataset, corpus_dataset
from .world import (
    COLOURS,
    IMAGE_SIZE,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
    generate_scenes,
    render_scene,
    sample_scene,
)

__all__ = [
    "COLOURS",
    "EDIT_KINDS",
    "IMAGE_SIZE",
    "LANGUAGES",
    "LANGUAGE_TABLES",
    "POSITIONS",
    "SHAPES",
    "SHIFTS",
    "SHIFT_LANGUAGES",
    "SIZES",
    "Edit",
    "Scene",
    "ShapeObject",
    "apply_random_edit",
    "build_grape_task",
    "build_shift",
    "build_shift_dataset",
    "clip_piece_count",
    "corpus_dataset",
    "describe",
    "describe_object",
    "generate_scenes",
    "long_form_description",
    "referring_expression",
    "render_scene",
    "sample_scene",
]
