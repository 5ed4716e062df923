"""The rewriter folder: its format and its one loader (`saving` writes it, with the remote code it ships).

A trained GRAPE rewriter is a folder (or Hub repo) holding either a full causal LM (`config.json` + weights) or a
PEFT adapter, its tokenizer (a vision-language rewriter's processor: see [`~grape_hf.rewriting.vision`]), and
`grape_rewriter.json` ([`RewriterConfig`]: the prompt it was trained with, the retriever and corpus, the training
settings, the evaluation numbers). An adapter saved here sits in `adapter/`
under a small top `config.json` of model type `grape_rewriter`: transformers looks for `custom_pipelines` in the top
`config.json`, and would load the base model's weights from the folder itself (not from the adapter's base) if that
config sat next to a top-level `adapter_config.json`.

This module, `pipeline.py`, `prompting.py`, `generation.py`, `vision.py` and `devices.py` (all in
`grape_hf/rewriting/`) are self-contained on purpose: they import only the standard library, torch and transformers
(and peft for an adapter), and each other, by relative imports between siblings (with `saving.py`, which writes a
folder: [`~grape_hf.rewriting.saving.add_pipeline_files`] copies them as flat files into a saved folder at save time,
as transformers' `custom_object_save` copies a model's module and its relative imports, so that `pipeline(model=folder,
trust_remote_code=True)` runs where grape_hf is not installed). Everything in grape_hf that reads a rewriter folder
goes through here, everything that writes one through `saving`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import AutoModelForCausalLM, AutoTokenizer, PretrainedConfig
from transformers.utils import cached_file

from .devices import resolve_dtype
from .prompting import check_template
from .vision import is_processor, is_vision_language, load_processor

REWRITER_CONFIG_NAME = "grape_rewriter.json"
PROMPTS_NAME = "grape_prompts.json"
ADAPTER_SUBFOLDER = "adapter"
POINTER_MODEL_TYPE = "grape_rewriter"
# The pipeline module's name inside a saved folder (its `custom_pipelines` and `auto_map` entries point here).
PIPELINE_MODULE = "grape_rewrite_pipeline"
# The key in `custom_pipelines`. It must differ from the task grape_hf registers ("grape-rewrite"): transformers
# refuses a task named in a folder's `custom_pipelines` unless `trust_remote_code=True`.
REMOTE_TASK = "grape-rewrite-remote"
_BASE_LOAD_KWARGS = (
    "dtype",
    "torch_dtype",
    "device_map",
    "token",
    "cache_dir",
    "local_files_only",
    "low_cpu_mem_usage",
    "attn_implementation",
    "quantization_config",
)
_HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "force_download")
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def read_json(source: str | Path | None, filename: str, **hub_kwargs) -> dict | None:
    """`filename` from a local folder or a Hub repo (cache first), or `None` when it is not there."""
    if not source:
        return None
    if Path(source).is_dir():
        path = Path(source) / filename
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    try:
        resolved = cached_file(
            str(source),
            filename,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            _raise_exceptions_for_gated_repo=False,
            **{k: v for k, v in hub_kwargs.items() if k in _HUB_KWARGS},
        )
    except (OSError, ValueError):  # not a repo id, or the Hub is unreachable
        return None
    return json.loads(Path(resolved).read_text(encoding="utf-8")) if resolved else None


@dataclass
class RewriterConfig:
    """What `grape_rewriter.json` holds. Every field but `prompt` is informational.

    Example:
    ```python
    >>> from grape_hf.rewriting.folder import RewriterConfig
    >>> RewriterConfig(prompt={"user": "Translate into English: {query}"}, reward="rank").reward
    'rank'
    ```
    """

    prompt: dict
    base_model: str | None = None
    shift: str | None = None
    retriever: str | None = None
    dataset: str | None = None
    corpus: str | None = None
    reward: str | None = None
    training: dict = field(default_factory=dict)
    evaluation: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / REWRITER_CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, data: dict) -> RewriterConfig:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    @classmethod
    def load(cls, source: str | Path, **hub_kwargs) -> RewriterConfig | None:
        """Read `grape_rewriter.json` from a folder or Hub repo; `None` for a plain model without one."""
        data = read_json(source, REWRITER_CONFIG_NAME, **hub_kwargs)
        return None if data is None else cls.from_dict(data)


def trained_prompt(rewriter_config: dict | None, source: Any, is_adapter: bool = False) -> dict | None:
    """The prompt a rewriter was trained with (`"prompt"` of its `grape_rewriter.json`), checked.

    `None` for a plain model without one, which then rewrites with a built-in prompt. A trained adapter
    (`is_adapter`) that does not state its prompt is refused: a built-in prompt would silently rewrite worse.

    Example:
    ```python
    >>> from grape_hf.rewriting.folder import trained_prompt
    >>> trained_prompt({"prompt": {"user": "Rewrite: {query}"}}, "my-rewriter")["user"]
    'Rewrite: {query}'
    ```
    """
    prompt = (rewriter_config or {}).get("prompt")
    if prompt is None:
        if is_adapter:
            name = REWRITER_CONFIG_NAME
            missing = f"has no {name}" if rewriter_config is None else f'says "prompt": null in {name}'
            raise ValueError(
                f"{str(source)!r} is a trained adapter but {missing}, so the prompt it was trained with is unknown "
                f"(a built-in prompt would rewrite badly, without a word). Restore {REWRITER_CONFIG_NAME} as training "
                "saved it, or choose the prompt yourself: pipeline(..., shift=...) or prompt=..., "
                "QueryRewriter.from_pretrained(..., template=...)."
            )
        return None
    return check_template(prompt, f'The "prompt" of {REWRITER_CONFIG_NAME} in {str(source)!r}')


def is_adapter_model(model: Any) -> bool:
    """Whether `model` is a PEFT adapter on a base model (as [`GRAPERewriterLoader`] loads an adapter folder)."""
    return hasattr(model, "grape_base_model") or hasattr(model, "peft_config")


class GRAPERewriterConfig(PretrainedConfig):
    """The top `config.json` of an adapter rewriter folder: where the adapter is, and which pipeline serves it.

    Args:
        adapter_subfolder (`str`, *optional*, defaults to `"adapter"`): Folder of `adapter_config.json`.
        base_model_name_or_path (`str`, *optional*): The adapter's base model (informational; the adapter's own
            `adapter_config.json` is what loading reads).
    """

    model_type = POINTER_MODEL_TYPE

    def __init__(self, adapter_subfolder: str = ADAPTER_SUBFOLDER, base_model_name_or_path: str | None = None, **kw):
        self.adapter_subfolder = adapter_subfolder
        self.base_model_name_or_path = base_model_name_or_path
        super().__init__(**kw)


def register_config() -> None:
    """Let `AutoConfig` (and so `AutoTokenizer`) read a rewriter folder's top `config.json` without remote code."""
    from transformers import AutoConfig

    AutoConfig.register(POINTER_MODEL_TYPE, GRAPERewriterConfig, exist_ok=True)


def _identity(name: str) -> str:
    return name


def model_class(config: Any):
    """The auto class that loads a model of this config (a [`~transformers.PretrainedConfig`], its dict, or `None`):
    `AutoModelForImageTextToText` for a vision-language model, else `AutoModelForCausalLM`."""
    if is_vision_language(config):
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText
    return AutoModelForCausalLM


class GRAPERewriterLoader:
    """Loads a rewriter folder or Hub repo: a full causal LM, or a PEFT adapter on its base model.

    A loader, not a model class: `from_pretrained` returns the loaded model (a [`~peft.PeftModel`] for an adapter).
    transformers calls it through `auto_map` (remote code) or as the model class registered for `"grape-rewrite"`.

    Example:
    ```python
    >>> from grape_hf.rewriting.folder import GRAPERewriterLoader
    >>> model = GRAPERewriterLoader.from_pretrained("path/to/rewriter")  # doctest: +SKIP
    ```
    """

    config_class = GRAPERewriterConfig
    # grape_hf plugs in `grape_hf.models.resolve_model_path` (offline SmolLM2); alone, base ids are used as they are.
    resolve_base_model = staticmethod(_identity)

    @classmethod
    def register_for_auto_class(cls, auto_class: Any = "AutoModelForCausalLM") -> None:
        """Called by transformers' auto classes on remote code; nothing to record here."""

    @classmethod
    def adapter_location(cls, name_or_path: str, config: Any = None, **hub_kwargs) -> str | None:
        """`None` for a full model, else the adapter's subfolder (`""` when the adapter sits at the top)."""
        if config is None or isinstance(config, (str, Path)):
            config = read_json(str(name_or_path), "config.json", **hub_kwargs)
        config = config.to_dict() if isinstance(config, PretrainedConfig) else config
        if config is not None and config.get("model_type") == POINTER_MODEL_TYPE:
            return config.get("adapter_subfolder") or ADAPTER_SUBFOLDER
        if read_json(str(name_or_path), "adapter_config.json", **hub_kwargs) is not None:
            return ""
        if config is not None:
            return None
        found = sorted(p.name for p in Path(name_or_path).iterdir())[:20] if Path(name_or_path).is_dir() else None
        raise ValueError(
            f"{str(name_or_path)!r} is neither a model (expected config.json and its weights) nor a PEFT adapter "
            f"(expected adapter_config.json, or config.json of model type {POINTER_MODEL_TYPE!r} with the adapter in "
            f"{ADAPTER_SUBFOLDER}/)" + (f"; it holds {found}." if found is not None else "; nothing was found there.")
        )

    @classmethod
    def from_pretrained(cls, name_or_path: str, *model_args, config: Any = None, resolve_base_model=None, **kwargs):
        """Load the model; `resolve_base_model` (default: the class's) maps a base model id to a loadable path.

        `dtype` `"auto"` or unset means the device's fast precision ([`~grape_hf.rewriting.devices.resolve_dtype`]:
        bf16 where it is native, else fp32), not the checkpoint's; an explicit dtype is used as given.
        """
        resolve = resolve_base_model or cls.resolve_base_model
        if kwargs.get("torch_dtype") is None:
            kwargs.pop("torch_dtype", None)
            device = kwargs.get("device_map") if isinstance(kwargs.get("device_map"), str) else None
            kwargs["dtype"] = resolve_dtype(kwargs.get("dtype", "auto"), None if device == "auto" else device)
        name_or_path = str(name_or_path)
        if not Path(name_or_path).exists():
            name_or_path = resolve(name_or_path)  # a plain model's Hub id (offline: its local copy)
        hub = {k: v for k, v in kwargs.items() if k in _HUB_KWARGS and v is not None}
        subfolder = cls.adapter_location(name_or_path, config, **hub)
        if subfolder is None:
            model_kwargs = {k: v for k, v in kwargs.items() if k in _BASE_LOAD_KWARGS + _HUB_KWARGS}
            if config is None or isinstance(config, (str, Path)):
                config = read_json(name_or_path, "config.json", **hub)
            auto_class = model_class(config)
            if isinstance(config, dict):
                config = None  # read only to pick the class: from_pretrained reads it again
            model = auto_class.from_pretrained(
                name_or_path, *model_args, config=config, trust_remote_code=False, **model_kwargs
            )
        else:
            try:
                from peft import PeftConfig, PeftModel
            except ImportError as error:
                raise ImportError(f"{name_or_path!r} is a PEFT adapter; install peft to load it.") from error
            source = _adapter_dir(name_or_path, subfolder, hub)
            peft_config = PeftConfig.from_pretrained(source)
            base = resolve(peft_config.base_model_name_or_path)
            base_kwargs = {k: v for k, v in kwargs.items() if k in _BASE_LOAD_KWARGS}
            # The base model's own remote code is never run, nor asked about: the adapter names a plain base.
            base_config = read_json(base, "config.json", **hub)
            model = model_class(base_config).from_pretrained(base, trust_remote_code=False, **base_kwargs)
            model = PeftModel.from_pretrained(model, source)
            _check_adapter_complete(model, source)
            model.grape_base_model = base
        model.grape_rewriter_path = name_or_path
        return model.eval()


def _adapter_dir(name_or_path: str, subfolder: str, hub_kwargs: dict) -> str:
    """A local folder holding the adapter: the folder itself, or its files fetched from the Hub (or its cache)."""
    if Path(name_or_path).is_dir():
        folder = Path(name_or_path) / subfolder
        if not (folder / "adapter_config.json").is_file() or not any((folder / w).is_file() for w in ADAPTER_WEIGHTS):
            found = sorted(p.name for p in folder.iterdir())[:20] if folder.is_dir() else "nothing"
            raise FileNotFoundError(
                f"The adapter folder {str(folder)!r} needs adapter_config.json and {ADAPTER_WEIGHTS[0]}; it holds "
                f"{found}. Copy the whole rewriter folder again (or save it again from training)."
            )
        return str(folder)
    # Fetched here rather than by peft, whose offline lookup of a subfolder's weights misses the cache (peft 0.21).
    location = {"subfolder": subfolder} if subfolder else {}
    config_file = cached_file(name_or_path, "adapter_config.json", **location, **hub_kwargs)
    for weights in ADAPTER_WEIGHTS:
        if cached_file(name_or_path, weights, **location, **hub_kwargs, _raise_exceptions_for_missing_entries=False):
            break
    else:
        raise FileNotFoundError(
            f"{name_or_path!r} has adapter_config.json{' in ' + subfolder if subfolder else ''} but no "
            f"{ADAPTER_WEIGHTS[0]} next to it; upload the adapter's weights again."
        )
    return str(Path(config_file).parent)


def _check_adapter_complete(model: Any, source: str) -> None:
    """Refuse an adapter file missing tensors that its `adapter_config.json` asks for: PEFT only warns, and the
    missing LoRA layers then act as the base model."""
    import torch
    from peft import get_peft_model_state_dict

    expected = set(get_peft_model_state_dict(model))
    path = Path(source) / ADAPTER_WEIGHTS[0]
    if path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as weights:
            found = set(weights.keys())
    else:
        found = set(torch.load(Path(source) / ADAPTER_WEIGHTS[1], map_location="cpu", weights_only=True))
    missing = sorted(expected - found)
    if missing:
        raise ValueError(
            f"The adapter in {source!r} holds {len(expected) - len(missing)} of the {len(expected)} tensors its "
            f"adapter_config.json asks for (missing e.g. {missing[:2]}); loaded, those layers would act as the base "
            "model. The weights file is incomplete or belongs to another adapter: copy or save the folder again."
        )


def load_rewriter(
    name_or_path: str | Path, resolve_base_model=None, **kwargs
) -> tuple[Any, Any, RewriterConfig | None]:
    """Load a rewriter folder, a Hub id, or a plain instruct model: `(model, tokenizer, rewriter_config or None)`.

    The one loader of grape_hf. `kwargs` go to `from_pretrained` (`dtype=`, `revision=`, ...). The tokenizer (for a
    vision-language rewriter its processor, in the same place) comes from the folder, or from the adapter's base model
    when the folder has none; grape_hf never runs (or asks to
    run) remote code to load it. `resolve_base_model` maps a base model's id to a loadable path (grape_hf passes its
    offline resolution); by default the loader's own is used.
    """
    model = GRAPERewriterLoader.from_pretrained(str(name_or_path), resolve_base_model=resolve_base_model, **kwargs)
    register_config()
    source = model.grape_rewriter_path
    hub = {k: v for k, v in kwargs.items() if k in _HUB_KWARGS and v is not None}
    if read_json(source, "tokenizer_config.json", **hub) is None:
        source = getattr(model, "grape_base_model", source)
    config = RewriterConfig.load(model.grape_rewriter_path, **hub)
    if is_vision_language(model.config):
        return model, load_processor(source), config
    return model, load_tokenizer(source), config


def load_tokenizer(source: str | Path):
    """A rewriter's tokenizer, never through remote code, with a pad token ([`with_pad_token`])."""
    return with_pad_token(AutoTokenizer.from_pretrained(str(source), trust_remote_code=False))


def with_pad_token(tokenizer):
    """`tokenizer` (or a processor, whose tokenizer it changes), given its end-of-sequence token as the pad token when
    it has none: batched generation and the trainers pad with it."""
    text = tokenizer.tokenizer if is_processor(tokenizer) else tokenizer
    if text.pad_token is None:
        text.pad_token = text.eos_token
    return tokenizer
