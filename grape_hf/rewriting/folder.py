"""The rewriter folder: its format, its one loader, its prompt rendering and its one generation path.

A trained GRAPE rewriter is a folder (or Hub repo) holding either a full causal LM (`config.json` + weights) or a
PEFT adapter, its tokenizer, and `grape_rewriter.json` ([`RewriterConfig`]: the prompt it was trained with, the
retriever and corpus, the training settings, the evaluation numbers). An adapter saved here sits in `adapter/`
under a small top `config.json` of model type `grape_rewriter`: transformers looks for `custom_pipelines` in the top
`config.json`, and would load the base model's weights from the folder itself (not from the adapter's base) if that
config sat next to a top-level `adapter_config.json`.

This module, `grape_hf/rewriting/pipeline.py` and `grape_hf/rewriting/devices.py` are self-contained on purpose: they
import only the standard library, torch and transformers (and peft for an adapter), and each other.
[`add_pipeline_files`] copies the three into a saved folder at save time, as
transformers' `custom_object_save` copies a model's module and its relative imports, so that
`pipeline(model=folder, trust_remote_code=True)` runs where grape_hf is not installed. Everything in grape_hf that
reads or writes a rewriter folder, renders its prompt or generates rewrites goes through here.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    GenerationConfig,
    LogitsProcessorList,
    MinPLogitsWarper,
    PretrainedConfig,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.cache_utils import DynamicLayer
from transformers.utils import cached_file

from .devices import resolve_dtype

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


def render_messages(template: dict, query: str, reference: str | None = None) -> list[dict[str, str]]:
    """The chat messages for one query: the system turn, few-shot turns, then the user turn.

    `template` is `{"user": ..., "system": ..., "examples": [...]}`: `{query}` in the user turn becomes the query,
    `{reference}` the reference item's caption (composed queries); each example `{"query", "rewrite"}` becomes a user
    and an assistant turn.

    Example:
    ```python
    >>> from grape_hf.rewriting.folder import render_messages
    >>> render_messages({"user": "In English: {query}", "system": "Be brief."}, "Ein Hund")
    [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'In English: Ein Hund'}]
    ```
    """

    def render(text: str, ref: str | None) -> str:
        return template["user"].replace("{query}", text).replace("{reference}", ref or "")

    messages = [{"role": "system", "content": template["system"]}] if template.get("system") else []
    for example in template.get("examples") or []:
        messages.append({"role": "user", "content": render(example["query"], example.get("reference"))})
        messages.append({"role": "assistant", "content": example["rewrite"]})
    messages.append({"role": "user", "content": render(query, reference)})
    return messages


def render_prompt(tokenizer, template: dict, query: str, reference: str | None = None) -> str:
    """The prompt text the rewriter generates from (its chat template applied, the generation prompt added)."""
    messages = render_messages(template, query, reference)
    if tokenizer.chat_template is not None:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n\n".join(m["content"] for m in messages) + "\n\n"


def clean_rewrite(text: str) -> str:
    """Normalise a generated rewrite: strip whitespace and wrapping quotes, keep the first non-empty line.

    Example:
    ```python
    >>> from grape_hf.rewriting.folder import clean_rewrite
    >>> clean_rewrite('  "A dog runs."\\nHere is why...')
    'A dog runs.'
    ```
    """
    text = text.strip()
    for line in text.splitlines():
        if line.strip():
            text = line.strip()
            break
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


# Sampling settings the inverse-CDF path reproduces; a generation config using any other warper keeps `generate`'s
# own sampling.
_UNSUPPORTED_WARPERS = {"typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0}


class ScoreRecorder:
    """A pass-through logits processor that keeps the latest scores (for [`InverseCDFSampler`]'s log-probabilities)."""

    scores: torch.Tensor | None = None

    def __call__(self, input_ids, scores: torch.Tensor) -> torch.Tensor:
        self.scores = scores
        return scores


class InverseCDFSampler:
    """A logits processor that draws the next token from softmax(scores) and leaves only that token possible.

    Run it last, after the temperature/top-k/top-p warpers, inside a greedy `generate`: greedy decoding then picks
    exactly the drawn token. One uniform draw per row replaces `torch.multinomial`'s per-entry exponential draws.

    Example:
    ```python
    >>> import torch
    >>> from grape_hf.rewriting.folder import InverseCDFSampler
    >>> scores = torch.tensor([[0.0, float("-inf"), 0.0], [float("-inf"), 5.0, float("-inf")]])
    >>> out = InverseCDFSampler()(None, scores)
    >>> out.argmax(-1)[1].item(), bool(torch.isinf(out).sum(-1).eq(2).all())
    (1, True)
    ```
    """

    def __init__(self, recorder: ScoreRecorder | None = None):
        self.recorder = recorder
        self.logps: list[torch.Tensor] = []

    def __call__(self, input_ids, scores: torch.Tensor) -> torch.Tensor:
        # Unnormalised: exp(scores - max), summed up; the draw scales u by the total instead of normalising.
        shift = scores.amax(-1, keepdim=True).float()
        cdf = torch.sub(scores, shift, out=torch.empty_like(scores, dtype=torch.float32)).exp_()
        cdf = torch.cumsum(cdf, -1, out=cdf)
        total = cdf[:, -1:]
        # u in (0, total]: the leftmost index with cdf >= u always has a positive probability.
        u = (1.0 - torch.rand(cdf.size(0), 1, device=cdf.device)) * total
        tokens = torch.searchsorted(cdf, u).clamp_(max=scores.size(-1) - 1)
        if self.recorder is not None:  # log-probability of the drawn token under the recorded scores
            recorded = self.recorder.scores
            if recorded is scores:  # no warper after the recorder: reuse this step's normaliser
                logps = scores.gather(1, tokens).float() - shift - total.log()
            else:
                recorded = recorded.float()
                logps = recorded.gather(1, tokens) - recorded.logsumexp(-1, keepdim=True)
            self.logps.append(logps.squeeze(1))
        # A new tensor: `generate` may keep `scores` itself (output_logits).
        return torch.full_like(scores, float("-inf")).scatter_(1, tokens, 0.0)


def sampling_processors(generation_config):
    """The warpers `generate` would apply when sampling with `generation_config`, then the inverse-CDF draw, which
    records each drawn token's log-probability after temperature and before top-k/top-p/min-p (as TRL's GRPO loss
    computes it); None when the config uses a warper this path does not reproduce."""
    for name, neutral in _UNSUPPORTED_WARPERS.items():
        value = getattr(generation_config, name, None)
        if value is not None and value != neutral:
            return None
    processors = LogitsProcessorList()
    temperature = generation_config.temperature
    if temperature is not None and temperature != 1.0:
        processors.append(TemperatureLogitsWarper(temperature))
    recorder = ScoreRecorder()
    processors.append(recorder)
    if generation_config.top_k:
        processors.append(TopKLogitsWarper(generation_config.top_k))
    if generation_config.top_p is not None and generation_config.top_p < 1.0:
        processors.append(TopPLogitsWarper(generation_config.top_p))
    if getattr(generation_config, "min_p", None):
        processors.append(MinPLogitsWarper(generation_config.min_p))
    processors.append(InverseCDFSampler(recorder))
    return processors


def inverse_cdf_sampling(config: GenerationConfig) -> LogitsProcessorList | None:
    """When `config` samples with warpers [`sampling_processors`] reproduces, turn it into a greedy search and return
    the processors that sample inside it (pass them as `logits_processor`); otherwise None and `config` is
    unchanged."""
    processors = sampling_processors(config) if config.do_sample else None
    if processors is not None:
        config.do_sample = False
        config.temperature = config.top_p = config.top_k = config.min_p = None
    return processors


class ReservedLayer(DynamicLayer):
    """A [`~transformers.DynamicLayer`] that keeps room to grow: its keys and values are views into buffers with
    `reserve` spare positions, so a decoding step writes its token in place instead of concatenating (copying) the
    whole cache, as `DynamicLayer` does at every step.

    Anything that replaces the tensors (`batch_select_indices`, `batch_repeat_interleave`, `reorder_cache`) or fills
    the spare room makes the next update copy once into fresh buffers; `crop` keeps the buffers.

    Example:
    ```python
    >>> import torch
    >>> from grape_hf.rewriting.folder import ReservedLayer
    >>> layer = ReservedLayer(reserve=4)
    >>> keys, values = layer.update(torch.ones(2, 1, 3, 8), torch.ones(2, 1, 3, 8))
    >>> keys, values = layer.update(torch.zeros(2, 1, 1, 8), torch.zeros(2, 1, 1, 8))
    >>> keys.shape, layer.get_seq_length()
    (torch.Size([2, 1, 4, 8]), 4)
    ```
    """

    def __init__(self, reserve: int = 32):
        super().__init__()
        self.reserve = reserve
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def _room(self, new: int) -> bool:
        if self._buffers is None or self.keys.numel() == 0:
            return False
        key_buffer, value_buffer = self._buffers
        return (
            self.keys.data_ptr() == key_buffer.data_ptr()
            and self.values.data_ptr() == value_buffer.data_ptr()
            and self.keys.shape[:-2] == key_buffer.shape[:-2]
            and self.keys.shape[-2] + new <= key_buffer.shape[-2]
        )

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length, new = self.get_seq_length(), key_states.shape[-2]
        if not self._room(new):
            capacity = length + new + self.reserve
            self._buffers = tuple(
                states.new_empty((*states.shape[:-2], capacity, states.shape[-1]))
                for states in (key_states, value_states)
            )
            if length:
                self._buffers[0][..., :length, :] = self.keys
                self._buffers[1][..., :length, :] = self.values
        key_buffer, value_buffer = self._buffers
        key_buffer[..., length : length + new, :] = key_states
        value_buffer[..., length : length + new, :] = value_states
        self.keys, self.values = key_buffer[..., : length + new, :], value_buffer[..., : length + new, :]
        return self.keys, self.values


def prefill_prompts(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor) -> DynamicCache:
    """Prefill left-padded prompts but their last token, once each, into a cache whose batch rows are `rows`
    (indices into the prompts, repeats allowed): pass it to `generate` with the prompts of those rows. Its full
    attention layers are [`ReservedLayer`]s, so decoding appends in place."""
    cache = DynamicCache(config=model.config)
    cache.layers = [ReservedLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    positions = (attention_mask.long().cumsum(-1) - 1).masked_fill_(attention_mask == 0, 1)  # as generate's
    model(
        input_ids=input_ids[:, :-1],
        attention_mask=attention_mask[:, :-1],
        position_ids=positions[:, :-1],
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    cache.batch_select_indices(rows)
    return cache


@torch.no_grad()
def generate_rewrite_tokens(
    model,
    tokenizer,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    num_rewrites: int = 1,
    generation_config: GenerationConfig | None = None,
    **generate_kwargs,
) -> torch.Tensor:
    """The new tokens of `num_rewrites` rewrites per left-padded prompt (greedy for one, sampled for more).

    Several rewrites of a prompt share one forward of it (its KV cache is repeated), and sampling draws by inverse
    CDF ([`InverseCDFSampler`]) after the config's temperature/top-k/top-p/min-p warpers: the distribution
    `generate`'s sampling draws from, at less cost on a CPU.

    With [`decode_rewrites`], the one generation path of grape_hf: [`~grape_hf.rewriting.rewriter.QueryRewriter`], the
    `"grape-rewrite"` pipeline, the evaluation and the R@10 curve callback all come here.

    Returns:
        `torch.Tensor`: `(num_prompts, num_rewrites, new_length)` token ids.
    """
    config = GenerationConfig.from_dict((generation_config or model.generation_config).to_dict())
    do_sample = generate_kwargs.pop("do_sample", num_rewrites > 1)
    if not do_sample:  # plain greedy: drop the sampling settings a model's generation config may carry
        for key in ("temperature", "top_p", "top_k"):
            generate_kwargs.setdefault(key, None)
    generate_kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
    model_kwargs = config.update(do_sample=do_sample, num_return_sequences=num_rewrites, **generate_kwargs)
    if config.max_new_tokens is not None:
        config.max_length = None  # max_new_tokens wins; leaving both set only earns a warning
    num_prompts, prompt_length = input_ids.shape
    if num_rewrites > 1 and prompt_length > 1 and "past_key_values" not in model_kwargs:
        # Each prompt once: prefill it and repeat its cache for its rewrites (generate would repeat the prompt).
        rows = torch.arange(num_prompts, device=input_ids.device).repeat_interleave(num_rewrites)
        model_kwargs["past_key_values"] = prefill_prompts(model, input_ids, attention_mask, rows)
        input_ids, attention_mask = input_ids[rows], attention_mask[rows]
        config.num_return_sequences = 1
    if "logits_processor" not in model_kwargs:  # sample by inverse CDF inside a greedy search (InverseCDFSampler)
        processors = inverse_cdf_sampling(config)
        if processors is not None:
            model_kwargs["logits_processor"] = processors
    generated = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, generation_config=config, **model_kwargs
    )
    return generated[:, prompt_length:].reshape(num_prompts, num_rewrites, -1)


def decode_rewrites(tokenizer, new_tokens: torch.Tensor) -> list[list[str]]:
    """`(num_prompts, num_rewrites, length)` token ids -> per prompt, its cleaned rewrites ([`clean_rewrite`])."""
    texts = tokenizer.batch_decode(
        new_tokens.reshape(-1, new_tokens.shape[-1]), skip_special_tokens=True, clean_up_tokenization_spaces=False
    )
    per_prompt = new_tokens.shape[1]
    rewrites = [clean_rewrite(t) for t in texts]
    return [rewrites[i : i + per_prompt] for i in range(0, len(rewrites), per_prompt)]


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
            model = AutoModelForCausalLM.from_pretrained(name_or_path, *model_args, config=config, **model_kwargs)
        else:
            try:
                from peft import PeftConfig, PeftModel
            except ImportError as error:
                raise ImportError(f"{name_or_path!r} is a PEFT adapter; install peft to load it.") from error
            source = _adapter_dir(name_or_path, subfolder, hub)
            peft_config = PeftConfig.from_pretrained(source)
            base = resolve(peft_config.base_model_name_or_path)
            base_kwargs = {k: v for k, v in kwargs.items() if k in _BASE_LOAD_KWARGS}
            model = AutoModelForCausalLM.from_pretrained(base, **base_kwargs)
            model = PeftModel.from_pretrained(model, source)
            model.grape_base_model = base
        model.grape_rewriter_path = name_or_path
        return model.eval()


def _adapter_dir(name_or_path: str, subfolder: str, hub_kwargs: dict) -> str:
    """A local folder holding the adapter: the folder itself, or its files fetched from the Hub (or its cache)."""
    if Path(name_or_path).is_dir():
        return str(Path(name_or_path) / subfolder)
    # Fetched here rather than by peft, whose offline lookup of a subfolder's weights misses the cache (peft 0.21).
    location = {"subfolder": subfolder} if subfolder else {}
    config_file = cached_file(name_or_path, "adapter_config.json", **location, **hub_kwargs)
    for weights in ("adapter_model.safetensors", "adapter_model.bin"):
        if cached_file(name_or_path, weights, **location, **hub_kwargs, _raise_exceptions_for_missing_entries=False):
            break
    return str(Path(config_file).parent)


def load_rewriter(
    name_or_path: str | Path, resolve_base_model=None, **kwargs
) -> tuple[Any, Any, RewriterConfig | None]:
    """Load a rewriter folder, a Hub id, or a plain instruct model: `(model, tokenizer, rewriter_config or None)`.

    The one loader of grape_hf. `kwargs` go to `from_pretrained` (`dtype=`, `revision=`, ...). The tokenizer comes
    from the folder, or from the adapter's base model when the folder has none; grape_hf never runs (or asks to
    run) remote code to load it. `resolve_base_model` maps a base model's id to a loadable path (grape_hf passes its
    offline resolution); by default the loader's own is used.
    """
    model = GRAPERewriterLoader.from_pretrained(str(name_or_path), resolve_base_model=resolve_base_model, **kwargs)
    register_config()
    source = model.grape_rewriter_path
    hub = {k: v for k, v in kwargs.items() if k in _HUB_KWARGS and v is not None}
    if read_json(source, "tokenizer_config.json", **hub) is None:
        source = getattr(model, "grape_base_model", source)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, RewriterConfig.load(model.grape_rewriter_path, **hub)


def save_rewriter_folder(
    model,
    tokenizer,
    folder: str | Path,
    rewriter_config: RewriterConfig | dict | None = None,
    prompts: dict | None = None,
) -> Path:
    """Save a rewriter (full model or PEFT adapter), its tokenizer and metadata so that pipelines can load it.

    Args:
        model: The rewriter LM, or a [`~peft.PeftModel`] (saved as an adapter in `adapter/`).
        tokenizer: Its tokenizer.
        folder (`str` or `Path`): Where to write.
        rewriter_config ([`RewriterConfig`] or `dict`, *optional*): The `grape_rewriter.json` content.
        prompts (`dict`, *optional*): The built-in prompt kinds, copied so that `shift=` works without grape_hf.

    Returns:
        `Path`: The folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        model.save_pretrained(folder / ADAPTER_SUBFOLDER)
        base = next(iter(model.peft_config.values())).base_model_name_or_path
        add_pipeline_files(folder, adapter_subfolder=ADAPTER_SUBFOLDER, base_model=base, prompts=prompts)
    else:
        model.save_pretrained(folder)
        add_pipeline_files(folder, prompts=prompts)
    tokenizer.save_pretrained(folder)
    if rewriter_config is not None:
        if isinstance(rewriter_config, dict):
            rewriter_config = RewriterConfig.from_dict(rewriter_config)
        rewriter_config.save(folder)
    return folder


def remote_code_files() -> dict[str, Path]:
    """File name in a saved folder -> the module it is copied from (the pipeline, this module and what it imports)."""
    here = Path(__file__).parent
    return {
        f"{PIPELINE_MODULE}.py": here / "pipeline.py",
        f"{Path(__file__).stem}.py": Path(__file__),
        "devices.py": here / "devices.py",
    }


def add_pipeline_files(
    folder: str | Path,
    adapter_subfolder: str | None = None,
    base_model: str | None = None,
    prompts: dict | None = None,
) -> None:
    """Make a saved model or adapter folder loadable by remote code: copy the modules, declare them in `config.json`.

    For a full model, `custom_pipelines` is added to its `config.json`. For an adapter (in `adapter_subfolder`), the
    top `config.json` is a [`GRAPERewriterConfig`] whose `auto_map` names [`GRAPERewriterLoader`] as the loader.
    """
    folder = Path(folder)
    for name, source in remote_code_files().items():
        shutil.copyfile(source, folder / name)
    custom = {
        REMOTE_TASK: {
            "impl": f"{PIPELINE_MODULE}.GRAPERewritePipeline",
            "pt": ["AutoModelForCausalLM"],
            "type": "text",
        }
    }
    config_path = folder / "config.json"
    if adapter_subfolder is not None:
        config = GRAPERewriterConfig(adapter_subfolder=adapter_subfolder, base_model_name_or_path=base_model)
        module = Path(__file__).stem
        config.auto_map = {
            "AutoConfig": f"{module}.GRAPERewriterConfig",
            "AutoModelForCausalLM": f"{module}.GRAPERewriterLoader",
        }
        config.custom_pipelines = custom
        config.save_pretrained(folder)
    else:
        if not config_path.is_file():
            raise FileNotFoundError(f"{folder} has no config.json; save the model there first.")
        data = json.loads(config_path.read_text(encoding="utf-8"))
        data["custom_pipelines"] = custom
        config_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if prompts is not None:
        (folder / PROMPTS_NAME).write_text(json.dumps(prompts, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def refresh_remote_code(folder: str | Path) -> None:
    """Copy the current remote-code modules into a saved rewriter folder again (its weights and metadata stay)."""
    folder = Path(folder)
    config = read_json(folder, "config.json") or {}
    prompts = read_json(folder, PROMPTS_NAME)
    if config.get("model_type") == POINTER_MODEL_TYPE:
        add_pipeline_files(folder, config.get("adapter_subfolder"), config.get("base_model_name_or_path"), prompts)
    else:
        add_pipeline_files(folder, prompts=prompts)
