"""The retriever interface: a frozen dual encoder with L2-normalised float32 outputs, computed in batches under
`torch.no_grad()`, that names itself (`fingerprint`, `identity`) and shows how its tokenizer sees a query
(`text_context_length`, `text_pieces`). The backends live in `backends`; `retrievers.load_retriever` picks one from a
spec string.
"""

from __future__ import annotations

import logging
import warnings
from abc import ABC, abstractmethod

import torch

from .identity import settings_hash, state_fingerprint

logger = logging.getLogger(__name__)


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
