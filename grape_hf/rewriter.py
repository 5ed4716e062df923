"""The query rewriter: an LLM, its tokenizer and the prompt it was trained with.

A trained GRAPE rewriter is a self-describing folder: a full model or a PEFT adapter, the tokenizer, and
`grape_rewriter.json` (the prompt template, the retriever spec and corpus it was trained against, the training
settings and its evaluation numbers).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .models import resolve_model_path
from .prompts import PromptTemplate, get_prompt_template

logger = logging.getLogger(__name__)

REWRITER_CONFIG_NAME = "grape_rewriter.json"
_MODEL_FILES = ("config.json",)
_ADAPTER_FILES = ("adapter_config.json",)


def clean_rewrite(text: str) -> str:
    """Normalise a generated rewrite: strip whitespace and wrapping quotes, keep the first non-empty line."""
    text = text.strip()
    for line in text.splitlines():
        if line.strip():
            text = line.strip()
            break
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


@dataclass
class RewriterConfig:
    """What `grape_rewriter.json` holds. Every field but `prompt` is informational."""

    prompt: dict
    base_model: str | None = None
    shift: str | None = None
    retriever: str | None = None
    dataset: str | None = None
    corpus: str | None = None
    reward: str | None = None
    training: dict = field(default_factory=dict)
    evaluation: dict = field(default_factory=dict)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / REWRITER_CONFIG_NAME
        path.write_text(json.dumps(self.__dict__, indent=2, ensure_ascii=False) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> RewriterConfig | None:
        path = Path(folder) / REWRITER_CONFIG_NAME
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def load_rewriter_model(name_or_path: str, torch_dtype: torch.dtype | None = None, device: str | None = None):
    """Load a rewriter's model and tokenizer from a folder or Hub id holding a full model or a PEFT adapter.

    An adapter's base model is read from `adapter_config.json` and resolved with
    [`~grape_hf.models.resolve_model_path`] (offline, SmolLM2's Hub id maps to the local de-quantized copy).

    Returns:
        `tuple`: `(model, tokenizer, rewriter_config or None)`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = Path(name_or_path)
    if local.is_dir():
        has_model = all((local / f).is_file() for f in _MODEL_FILES)
        has_adapter = all((local / f).is_file() for f in _ADAPTER_FILES)
        if not (has_model or has_adapter):
            found = sorted(p.name for p in local.iterdir())[:20]
            raise ValueError(
                f"{name_or_path!r} is neither a model folder (expected {list(_MODEL_FILES)}) nor a PEFT adapter "
                f"folder (expected {list(_ADAPTER_FILES)}); it holds {found}."
            )
        config = RewriterConfig.load(local)
        adapter_subfolder = _pointer_adapter_subfolder(local)
        has_adapter = has_adapter or adapter_subfolder is not None
    else:
        # A rewriter published by grape_hf.hub keeps its adapter in adapter/ (see grape_hf.pipeline).
        adapter_subfolder = "adapter" if _hub_has_file(name_or_path, "adapter/" + _ADAPTER_FILES[0]) else None
        has_adapter = adapter_subfolder is not None or _hub_has_file(name_or_path, _ADAPTER_FILES[0])
        config = _hub_rewriter_config(name_or_path)
        resolved = resolve_model_path(name_or_path)
        local = Path(resolved)

    if has_adapter:
        from peft import PeftConfig, PeftModel

        adapter_kwargs = {"subfolder": adapter_subfolder} if adapter_subfolder else {}
        peft_config = PeftConfig.from_pretrained(str(local), **adapter_kwargs)
        base = resolve_model_path(peft_config.base_model_name_or_path)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype or torch.float32)
        model = PeftModel.from_pretrained(model, str(local), **adapter_kwargs)
        tokenizer_source = local if _hub_or_local_has(local, "tokenizer_config.json") else base
    else:
        model = AutoModelForCausalLM.from_pretrained(str(local), dtype=torch_dtype or torch.float32)
        tokenizer_source = local
    # A saved adapter folder's config.json maps to the pipeline's remote code; the tokenizer needs none, and grape_hf
    # never runs (or asks to run) remote code.
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_source), trust_remote_code=False)
    if device:
        model.to(device)
    model.eval()
    return model, tokenizer, config


def _pointer_adapter_subfolder(folder: Path) -> str | None:
    """The adapter's subfolder when `config.json` is grape_hf's pointer to it (model type `grape_rewriter`)."""
    path = folder / "config.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return data.get("adapter_subfolder", "adapter") if data.get("model_type") == "grape_rewriter" else None


def _hub_or_local_has(source: Path, filename: str) -> bool:
    return (source / filename).is_file() or (not source.exists() and _hub_has_file(str(source), filename))


def _hub_has_file(repo_id: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(repo_id, filename)
        if isinstance(cached, str):
            return True
        from huggingface_hub import file_exists

        return file_exists(repo_id, filename)
    except Exception:  # noqa: BLE001 - no network: treat as absent
        return False


def _hub_rewriter_config(repo_id: str) -> RewriterConfig | None:
    try:
        from huggingface_hub import hf_hub_download

        return RewriterConfig.load(Path(hf_hub_download(repo_id, REWRITER_CONFIG_NAME)).parent)
    except Exception:  # noqa: BLE001 - a plain model without GRAPE metadata
        return None


class QueryRewriter:
    """Batched query rewriting with a causal LM through its chat template.

    Args:
        model ([`~transformers.PreTrainedModel`]): The rewriter LM (a PEFT model works too).
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]): Its tokenizer; left padding is used for generation.
        template ([`~grape_hf.prompts.PromptTemplate`], *optional*): The prompt; defaults to the multilingual one.
        max_new_tokens (`int`, *optional*, defaults to `48`): Length of a rewrite.

    Example:
    ```python
    >>> from grape_hf.rewriter import QueryRewriter
    >>> rewriter = QueryRewriter.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")  # doctest: +SKIP
    >>> rewriter.rewrite(["Ein Hund rennt über eine Wiese."])  # doctest: +SKIP
    [['A dog runs across a meadow.']]
    ```
    """

    def __init__(self, model, tokenizer, template: PromptTemplate | None = None, max_new_tokens: int = 48):
        self.model = model
        self.tokenizer = tokenizer
        self.template = template or get_prompt_template("multilingual")
        self.max_new_tokens = max_new_tokens
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @classmethod
    def from_pretrained(cls, name_or_path: str, template: PromptTemplate | None = None, **kwargs) -> QueryRewriter:
        """Load a trained rewriter folder, a Hub id, or a plain instruct model (prompt-only rewriting)."""
        model, tokenizer, config = load_rewriter_model(name_or_path, device=kwargs.pop("device", None))
        if template is None and config is not None:
            template = PromptTemplate.from_dict(config.prompt)
        return cls(model, tokenizer, template=template, **kwargs)

    def prompts(self, queries: list[str], references: list[str] | None = None) -> list[str]:
        """The rendered prompts (chat template applied, generation prompt added)."""
        refs = references if references is not None else [None] * len(queries)
        return [
            self.tokenizer.apply_chat_template(
                self.template.build_messages(q, r), tokenize=False, add_generation_prompt=True
            )
            for q, r in zip(queries, refs)
        ]

    @torch.no_grad()
    def rewrite(
        self,
        queries: list[str],
        references: list[str] | None = None,
        num_rewrites: int = 1,
        batch_size: int = 16,
        do_sample: bool | None = None,
        **generation_kwargs,
    ) -> list[list[str]]:
        """Rewrite each query; returns `num_rewrites` rewrites per query (greedy unless sampling)."""
        if do_sample is None:
            do_sample = num_rewrites > 1
        texts = self.prompts(queries, references)
        max_new_tokens = generation_kwargs.pop("max_new_tokens", self.max_new_tokens)
        device = next(self.model.parameters()).device
        outputs: list[list[str]] = []
        old_side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"
        try:
            for start in range(0, len(texts), batch_size):
                batch = self.tokenizer(
                    texts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
                ).to(device)
                generated = self.model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=do_sample,
                    num_return_sequences=num_rewrites,
                    pad_token_id=self.tokenizer.pad_token_id,
                    **({"top_k": None, "top_p": None, "temperature": None} if not do_sample else {}),
                    **generation_kwargs,
                )
                new_tokens = generated[:, batch["input_ids"].shape[1] :]
                decoded = [clean_rewrite(t) for t in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
                for i in range(0, len(decoded), num_rewrites):
                    outputs.append(decoded[i : i + num_rewrites])
        finally:
            self.tokenizer.padding_side = old_side
        return outputs


SHIPPED_REWRITERS_DIR = Path(__file__).parent / "assets" / "rewriters"


def shipped_rewriters() -> list[str]:
    """Names of the trained rewriters shipped inside grape_hf (offline defaults)."""
    if not SHIPPED_REWRITERS_DIR.is_dir():
        return []
    return sorted(p.name for p in SHIPPED_REWRITERS_DIR.iterdir() if (p / REWRITER_CONFIG_NAME).is_file())


def shipped_rewriter_path(name: str = "smollm2-135m-grape-multi30k-de") -> Path:
    """The folder of a rewriter shipped with grape_hf, for `pipeline("grape-rewrite", model=...)`.

    Example:
    ```python
    >>> from grape_hf.rewriter import shipped_rewriter_path
    >>> from transformers import pipeline
    >>> rewriter = pipeline("grape-rewrite", model=shipped_rewriter_path())  # doctest: +SKIP
    ```
    """
    path = SHIPPED_REWRITERS_DIR / name
    if not (path / REWRITER_CONFIG_NAME).is_file():
        raise ValueError(f"No shipped rewriter named {name!r}; grape_hf ships {shipped_rewriters()}.")
    return path
