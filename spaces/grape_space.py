"""The logic behind the grape_hf Space (`spaces/app.py`), free of gradio so that scripts and tests can call it.

[`SpaceEngine`] loads the rewriters, the retrievers and their embedded corpora once, and answers
`search(track, query, reference=None, num_rewrites=1, k=8)` with a JSON-serialisable dict: the rewrite(s), the
top-k items for the original query and for the rewrite (or the reciprocal-rank fusion of several sampled rewrites),
the target's rank before and after when the query is one of the held-out queries, and what the retriever actually
reads of each query (its text context cuts long ones).

Two tracks:

- `images`: the shapes world of seed 1 (held out: `grape-shapes-clip` was trained on seed 0, the shipped rewriters
  on seed 2), ranked by `open_clip:grape-shapes-clip@grape-shapes`. A text query is `multilingual` (German, French,
  Spanish, Chinese) or, past the retriever's context, `long_form`; a reference image plus an edit is `composed`,
  searched in the composed corpus of seed 1 (each reference with its edited target and a hard negative).
- `captions`: Multi30k val (task2, German description 1 → English description 1 of the same image, all 1,014),
  ranked by `sentence-transformers:all-MiniLM-L6-v2`.

Environment variables (all optional; the defaults are shipped with grape_hf and run offline):

| variable | default |
|---|---|
| `GRAPE_SPACE_REWRITER_MULTILINGUAL` | the shipped `gemma3-270m-grape-shapes-multilingual` (Gemma 3 270M, rank-GRPO) |
| `GRAPE_SPACE_REWRITER_LONG_FORM` | the shipped `gemma3-270m-grape-shapes-long-form` (Gemma 3 270M, rank-GRPO) |
| `GRAPE_SPACE_REWRITER_COMPOSED` | the shipped `smollm2-135m-grape-shapes-composed` |
| `GRAPE_SPACE_REWRITER_CAPTIONS` | the shipped `gemma3-270m-grape-multi30k-de` (Gemma 3 270M, rank-GRPO) |
| `GRAPE_SPACE_IMAGE_RETRIEVER` | `open_clip:grape-shapes-clip@grape-shapes` |
| `GRAPE_SPACE_CAPTION_RETRIEVER` | `sentence-transformers:all-MiniLM-L6-v2` |
| `GRAPE_SPACE_CAPTIONS_DATA` | `../shared/data/multi30k` beside the repo; any `load_grape_dataset` source (*) |
| `GRAPE_SPACE_CAPTIONS_SPLIT` | `validation` |
| `GRAPE_SPACE_THREADS` | `1` (torch threads) |

(*) a Multi30k folder, a `save_to_disk` folder, or a Hub dataset id with `query`/`target_id` and a text corpus.

A rewriter is a folder or a Hub id that `pipeline("grape-rewrite", model=...)` opens.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from grape_hf.models import SMOLLM2_ID

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
TRACKS = ("images", "captions")
IMAGE_SHIFTS = ("multilingual", "long_form", "composed")
SHAPES_SEED = 1  # held out: the retriever trained on seed 0, the shipped shapes rewriters on seed 2
SHAPES_IMAGES = 1000
MAX_QUERY_CHARS = 2000  # longer queries are cut (with a warning): the rewriter's prompt would take minutes on a CPU
MAX_K = 20
MAX_REWRITES = 8
DISPLAY_SIZE = 128  # the shapes images are drawn at 64 px for the retriever and at this size for the page
NEW_TOKENS = {"multilingual": 32, "long_form": 32, "composed": 32, "captions": 48}


class SpaceInputError(ValueError):
    """A query the Space cannot answer; the message says what to change (the app shows it with `gr.Error`)."""


@dataclass
class SpaceSettings:
    """Which rewriters, retrievers and data the Space serves; see the module docstring for the variables."""

    rewriters: dict[str, str] = field(default_factory=dict)
    image_retriever: str = "open_clip:grape-shapes-clip@grape-shapes"
    caption_retriever: str = "sentence-transformers:all-MiniLM-L6-v2"
    captions_data: str = str(REPO_ROOT.parent / "shared" / "data" / "multi30k")
    captions_split: str = "validation"

    @classmethod
    def from_env(cls, environ=None) -> SpaceSettings:
        from grape_hf.rewriting.rewriter import shipped_rewriter_path

        env = os.environ if environ is None else environ
        defaults = {
            "multilingual": str(shipped_rewriter_path("gemma3-270m-grape-shapes-multilingual")),
            "long_form": str(shipped_rewriter_path("gemma3-270m-grape-shapes-long-form")),
            "composed": str(shipped_rewriter_path("smollm2-135m-grape-shapes-composed")),
            "captions": str(shipped_rewriter_path("gemma3-270m-grape-multi30k-de")),
        }
        rewriters = {name: env.get(f"GRAPE_SPACE_REWRITER_{name.upper()}", path) for name, path in defaults.items()}
        return cls(
            rewriters=rewriters,
            image_retriever=env.get("GRAPE_SPACE_IMAGE_RETRIEVER", cls.image_retriever),
            caption_retriever=env.get("GRAPE_SPACE_CAPTION_RETRIEVER", cls.caption_retriever),
            captions_data=env.get("GRAPE_SPACE_CAPTIONS_DATA", cls.captions_data),
            captions_split=env.get("GRAPE_SPACE_CAPTIONS_SPLIT", cls.captions_split),
        )


# --- what the retriever reads -----------------------------------------------------------------------------------


def retriever_view(retriever, text: str) -> dict:
    """What a retriever reads of `text`: its text context cuts long queries, and this says where.

    Returns:
        `dict`: `{"tokens": text tokens, "context": text tokens it reads, "cut": bool, "seen": the text it reads,
        "unseen": the rest}`. `seen + unseen == text`; a cut inside a word keeps the whole word in `seen`.

    Example:
    ```python
    >>> from grape_hf import load_retriever
    >>> clip = load_retriever("open_clip:grape-shapes-clip@grape-shapes", device="cpu")
    >>> view = retriever_view(clip, "a red circle " * 20)
    >>> view["context"], view["cut"], view["seen"].count("circle")
    (30, True, 10)
    ```
    """
    pieces, context = retriever.text_pieces(text), retriever.text_context_length
    if pieces is None or context is None:
        return {"tokens": None, "context": None, "cut": False, "seen": text, "unseen": ""}
    total, end = 0, None
    for _, piece_end, tokens in pieces:
        total += tokens
        if end is None and total >= context:
            end = piece_end
    if total <= context:
        return {"tokens": total, "context": context, "cut": False, "seen": text, "unseen": ""}
    return {"tokens": total, "context": context, "cut": True, "seen": text[:end], "unseen": text[end:]}


# --- held-out data ----------------------------------------------------------------------------------------------


def image_key(image) -> str:
    """A content hash of an image's RGB pixels, to recognise a corpus image that comes back as an upload."""
    rgb = image.convert("RGB")
    return hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()


@dataclass
class Corpus:
    """A corpus, its embedded scorer, and the held-out queries whose target is known (text → corpus id)."""

    name: str
    items: list  # captions (texts); for images, the scene captions
    scorer: object
    scenes: list | None = None
    targets: dict = field(default_factory=dict)  # query (or (reference id, edit)) -> target id
    image_ids: dict = field(default_factory=dict)  # image_key -> corpus id (image corpora)

    def __len__(self) -> int:
        return len(self.items)


def shapes_rows(shift: str):
    """Seed 1's query rows and corpus scenes for a shapes shift (the held-out world of
    `benchmarks/shapes_grape.py`)."""
    from grape_hf.shapes import build_shift

    return build_shift(shift, num_images=SHAPES_IMAGES, seed=SHAPES_SEED)


class SpaceEngine:
    """Everything the Space serves, loaded once. `search` is the Space's one action (and its API endpoint).

    Args:
        settings ([`SpaceSettings`], *optional*): Defaults to [`SpaceSettings.from_env`].
        device (`str`, *optional*, defaults to `"cpu"`): Where the models run.
    """

    def __init__(self, settings: SpaceSettings | None = None, device: str = "cpu"):
        self.settings = settings or SpaceSettings.from_env()
        self.device = device
        self.timings: dict[str, float] = {}
        self.captions_error: str | None = None
        # One search at a time, whichever event (button, example, API) asks: the pipelines are not thread-safe.
        self._lock = threading.Lock()
        self._load()

    # ------------------------------------------------------------------ loading
    def _timed(self, name: str, start: float) -> None:
        self.timings[name] = round(time.time() - start, 2)
        logger.info("loaded %s in %.1f s", name, self.timings[name])

    def _load(self) -> None:
        import torch

        import grape_hf  # noqa: F401 - registers pipeline("grape-rewrite")
        from grape_hf import RankScorer, load_retriever
        from grape_hf.models import cache_home

        torch.set_grad_enabled(False)
        # One thread: on a small shared CPU two threads per generate step spin against each other (measured here:
        # 32 tokens in 3 s with one thread, 14-28 s with two while another job ran).
        torch.set_num_threads(int(os.environ.get("GRAPE_SPACE_THREADS", "1")))
        cache = cache_home() / "corpus_embeddings"
        start = time.time()
        self.image_retriever = load_retriever(self.settings.image_retriever, device=self.device)
        self.caption_retriever = load_retriever(self.settings.caption_retriever, device=self.device)
        self._timed("retrievers", start)

        start = time.time()
        plain_rows, scenes = shapes_rows("multilingual")
        long_rows, _ = shapes_rows("long_form")
        composed_rows, composed_scenes = shapes_rows("composed")
        images = [scene.render() for scene in scenes]
        composed_images = [scene.render() for scene in composed_scenes]
        self.shapes = Corpus(
            f"shapes world seed {SHAPES_SEED} ({len(scenes):,} images)",
            [scene.caption for scene in scenes],
            RankScorer(self.image_retriever, images, cache_dir=cache, show_progress_bar=False),
            scenes=scenes,
        )
        for row in plain_rows + long_rows:
            self.shapes.targets[row["query"]] = row["target_id"]
        for i, scene in enumerate(scenes):
            self.shapes.targets.setdefault(scene.caption, i)
        self.composed = Corpus(
            f"shapes world seed {SHAPES_SEED}, composed ({len(composed_scenes):,} images)",
            [scene.caption for scene in composed_scenes],
            RankScorer(self.image_retriever, composed_images, cache_dir=cache, show_progress_bar=False),
            scenes=composed_scenes,
        )
        self.composed.image_ids = {image_key(im): i for i, im in enumerate(composed_images)}
        for row in composed_rows:
            self.composed.targets[(row["reference_id"], row["query"])] = row["target_id"]
        self.rows = {"multilingual": plain_rows, "long_form": long_rows, "composed": composed_rows}
        self._timed("shapes corpora", start)

        start = time.time()
        self.captions = None
        try:
            self.captions = self._load_captions(cache)
        except Exception as err:  # noqa: BLE001 - the images track still works; the page says why this one is off
            self.captions_error = (
                f"The captions track is off: {type(err).__name__}: {err} Set GRAPE_SPACE_CAPTIONS_DATA to a Multi30k "
                "folder or a dataset with query/target_id and a text corpus."
            )
            logger.warning(self.captions_error)
        self._timed("captions corpus", start)

        start = time.time()
        self.rewriters = {name: self._load_rewriter(name, path) for name, path in self.settings.rewriters.items()}
        self._timed("rewriters", start)

    def _load_captions(self, cache) -> Corpus:
        from grape_hf import RankScorer
        from grape_hf.data import is_multi30k_dir, load_grape_dataset

        source = self.settings.captions_data
        kwargs = {"task": "task2", "query_index": 1, "corpus_index": 1} if is_multi30k_dir(source) else {}
        data = load_grape_dataset(source, split=self.settings.captions_split, **kwargs)
        corpus = [str(text) for text in data.corpus]
        scorer = RankScorer(self.caption_retriever, corpus, cache_dir=cache, show_progress_bar=False)
        captions = Corpus(f"{data.name or source} ({len(corpus):,} descriptions)", corpus, scorer)
        for query, target in zip(data.queries["query"], data.queries["target_id"]):
            captions.targets.setdefault(query, int(target))
        self.caption_rows = [
            {"query": q, "target_id": int(t)} for q, t in zip(data.queries["query"], data.queries["target_id"])
        ]
        return captions

    def _load_rewriter(self, name: str, path: str):
        from transformers import pipeline

        from grape_hf.models import resolve_model_path

        kwargs = (
            {"shift": "long_form"} if name == "long_form" and not Path(path, "grape_rewriter.json").is_file() else {}
        )
        is_folder = Path(path).is_dir()
        return pipeline(
            "grape-rewrite", model=path if is_folder else resolve_model_path(path), device=self.device, **kwargs
        )

    def rewriter_label(self, name: str) -> str:
        path = self.settings.rewriters[name]
        label = Path(path).name if Path(path).is_dir() else path
        if name == "long_form" and path == SMOLLM2_ID:
            label += " (prompt-only)"
        return label

    # ------------------------------------------------------------------ search
    def shift_for(self, track: str, query: str, reference) -> str:
        """Which kind of query this is: `captions`, or for images `composed`, `long_form` or `multilingual`."""
        if track == "captions":
            return "captions"
        if reference is not None:
            return "composed"
        return "long_form" if retriever_view(self.image_retriever, query)["cut"] else "multilingual"

    def check(self, track, query, reference, num_rewrites, k) -> tuple[str, list[str]]:
        """Validate the inputs; returns the (possibly cut) query and warnings, or raises [`SpaceInputError`]."""
        warnings = []
        if track not in TRACKS:
            raise SpaceInputError(f"Unknown track {track!r}; choose one of {list(TRACKS)}.")
        if track == "captions" and self.captions is None:
            raise SpaceInputError(self.captions_error or "The captions track is not loaded.")
        if not isinstance(query, str):
            raise SpaceInputError(f"The query must be text, got {type(query).__name__}.")
        if not query.strip():
            if reference is not None:
                raise SpaceInputError(
                    "A reference image needs an edit: type what to change in the query box (e.g. 'make the circle "
                    "blue'), or remove the image to search with text alone."
                )
            raise SpaceInputError("The query is empty: type a description (or pick an example below).")
        if reference is not None and track != "images":
            raise SpaceInputError("A reference image only works on the images track; remove it or switch track.")
        if len(query) > MAX_QUERY_CHARS:
            warnings.append(
                f"The query has {len(query):,} characters; only the first {MAX_QUERY_CHARS:,} were used "
                "(the rewriter's prompt would take minutes on this CPU)."
            )
            query = query[:MAX_QUERY_CHARS]
        if not isinstance(num_rewrites, int | float) or not 1 <= int(num_rewrites) <= MAX_REWRITES:
            raise SpaceInputError(f"num_rewrites must be 1-{MAX_REWRITES}, got {num_rewrites!r}.")
        if not isinstance(k, int | float) or not 1 <= int(k) <= MAX_K:
            raise SpaceInputError(f"k (results per list) must be 1-{MAX_K}, got {k!r}.")
        return query, warnings

    def read_reference(self, reference) -> tuple[int | None, str, str]:
        """The reference image's corpus id (when it is a corpus image), the caption the rewriter reads, and a note.

        An image of the composed corpus is recognised by its pixels; any other image is read as the caption of its
        nearest corpus image (by `grape-shapes-clip`'s image embedding).
        """
        reference = self.open_reference(reference)
        ref_id = self.composed.image_ids.get(image_key(reference))
        if ref_id is not None:
            return ref_id, self.composed.items[ref_id], "a corpus image: its caption"
        embedding = self.image_retriever.encode_image([reference])
        scores, ids = self.composed.scorer.search(embedding, k=1)
        nearest = int(ids[0, 0])
        note = f"not a corpus image: read as its nearest corpus image's caption (similarity {float(scores[0, 0]):.3f})"
        return None, self.composed.items[nearest], note

    @staticmethod
    def open_reference(reference):
        """The reference as an RGB PIL image (an uploaded file is opened), or a `SpaceInputError` saying what to
        upload."""
        from PIL import Image, UnidentifiedImageError

        if isinstance(reference, str | Path):
            try:
                with Image.open(reference) as opened:
                    opened.load()
                    reference = opened.convert("RGB")
            except (UnidentifiedImageError, OSError) as err:
                raise SpaceInputError(
                    f"The reference file {Path(reference).name!r} is not an image ({type(err).__name__}); upload a "
                    "PNG or JPEG."
                ) from err
        return reference

    def search(
        self, track: str, query: str, reference=None, num_rewrites: int = 1, k: int = 8, shift: str | None = None
    ) -> dict:
        """Rank the corpus for the query as written and as rewritten; see the module docstring.

        Args:
            track (`str`): `"images"` or `"captions"`.
            query (`str`): The query (for a reference image: the edit).
            reference (`str`, `Path` or `PIL.Image.Image`, *optional*): A reference image (images track).
            num_rewrites (`int`, *optional*, defaults to `1`): 1 rewrites greedily; more are sampled and fused with
                the original query by reciprocal-rank fusion.
            k (`int`, *optional*, defaults to `8`): Items per ranked list.
            shift (`str`, *optional*): Force `multilingual` or `long_form` for a text query on the images track.

        Returns:
            `dict`: `track`, `shift`, `query`, `reference` (caption read, note, corpus id), `rewriter`,
            `retriever`, `corpus`, `rewrites`, `fused`, `target` (`{"id", "caption"}` or `None`), `target_rank`
            (`{"original", "rewritten"}` or `None`), `original` and `rewritten` (lists of `{"rank", "id", "text",
            "score", "is_target"}`), `view` (what the retriever reads of the query and of the first rewrite),
            `seconds`, `warnings`.
        """
        from grape_hf import GRAPERetriever

        start = time.time()
        query, warnings = self.check(track, query, reference, num_rewrites, k)
        num_rewrites, k = int(num_rewrites), int(k)
        kind = self.shift_for(track, query, reference)
        if shift in ("multilingual", "long_form") and kind in ("multilingual", "long_form"):
            kind = shift
        corpus = {"captions": self.captions, "composed": self.composed}.get(kind, self.shapes)
        retriever = self.caption_retriever if track == "captions" else self.image_retriever
        reference_info, reference_caption, target = None, None, None
        # A vision-language composed rewriter reads the reference image itself; a text rewriter reads its caption.
        reads_images = getattr(self.rewriters[kind], "processor", None) is not None
        rewriter_reference = None
        if kind == "composed":
            ref_id, reference_caption, note = self.read_reference(reference)
            if reads_images:
                note = "read as an image by the vision-language rewriter"
            reference_info = {"id": ref_id, "caption": reference_caption, "note": note}
            target = self.composed.targets.get((ref_id, query.strip()))
            rewriter_reference = self.open_reference(reference) if reads_images else reference_caption
        else:
            target = corpus.targets.get(query.strip())

        generate = {"max_new_tokens": NEW_TOKENS[kind]}
        if num_rewrites > 1:
            generate.update(do_sample=True, temperature=1.0, top_p=0.95)
        # Full-depth rankings, so that the target's rank is exact before and after (also after fusion).
        engine = GRAPERetriever(self.rewriters[kind], corpus.scorer, depth=len(corpus))
        with self._lock:
            result = engine.search(
                query,
                k=len(corpus),
                reference=rewriter_reference,
                ensemble=num_rewrites if num_rewrites > 1 else 0,
                **generate,
            )
        after = result["ensemble"] if num_rewrites > 1 else result["rewritten"]

        def ranked(ranking: dict) -> list[dict]:
            return [
                {
                    "rank": r + 1,
                    "id": int(i),
                    "text": corpus.items[i],
                    "score": round(float(s), 4),
                    "is_target": target is not None and int(i) == target,
                }
                for r, (i, s) in enumerate(zip(ranking["ids"][:k], ranking["scores"][:k]))
            ]

        def rank_of(ranking: dict) -> int | None:
            return ranking["ids"].index(target) + 1 if target is not None and target in ranking["ids"] else None

        rewrites = [r for r in result["rewrites"]]
        if not any(r.strip() for r in rewrites):
            warnings.append("The rewriter returned an empty rewrite; the 'after' list ranks the empty text.")
        return {
            "track": track,
            "shift": kind,
            "query": query,
            "reference": reference_info,
            "rewriter": self.rewriter_label(kind),
            "retriever": retriever.spec,
            "corpus": corpus.name,
            "corpus_size": len(corpus),
            "rewrites": rewrites,
            "fused": num_rewrites > 1,
            "target": None if target is None else {"id": target, "caption": corpus.items[target]},
            "target_rank": None
            if target is None
            else {"original": rank_of(result["original"]), "rewritten": rank_of(after)},
            "original": ranked(result["original"]),
            "rewritten": ranked(after),
            "view": {"query": retriever_view(retriever, query), "rewrite": retriever_view(retriever, rewrites[0])},
            "seconds": round(time.time() - start, 2),
            "warnings": warnings,
        }

    # ------------------------------------------------------------------ display
    def display_image(self, result: dict, item: dict):
        """The item's image at display size, framed in green when it is the target (images track)."""
        from PIL import ImageOps

        scenes = (self.composed if result["shift"] == "composed" else self.shapes).scenes
        image = scenes[item["id"]].render(DISPLAY_SIZE)
        if item["is_target"]:
            image = ImageOps.expand(image.resize((DISPLAY_SIZE - 12,) * 2), border=6, fill=(20, 170, 60))
        return image

    def reference_image(self, ref_id: int, display: bool = True):
        """A composed-corpus image; at the corpus size (`display=False`) its upload is recognised by its pixels."""
        scene = self.composed.scenes[ref_id]
        return scene.render(DISPLAY_SIZE) if display else scene.render()
