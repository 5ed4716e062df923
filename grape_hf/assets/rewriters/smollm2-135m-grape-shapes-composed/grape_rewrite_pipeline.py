"""`pipeline("grape-rewrite")`: rewrite search queries with a trained GRAPE rewriter.

This module is self-contained on purpose: it imports only the standard library, torch and transformers (and peft
when the rewriter is a PEFT adapter). [`save_rewriter_folder`] copies it verbatim into a rewriter folder as
`grape_rewrite_pipeline.py` and points the folder's `config.json` at it (`custom_pipelines`), so that
`pipeline(model=folder, trust_remote_code=True)` works where grape_hf is not installed. grape_hf itself never sets
`trust_remote_code`: importing it registers the task `"grape-rewrite"` and plugs in its offline model resolution and
built-in prompts through [`register_pipeline`].

A rewriter folder holds either a full model (`config.json` + weights) or a PEFT adapter. An adapter folder written
here keeps the adapter in `adapter/` and a small `config.json` of model type `grape_rewriter` at the top: transformers
looks for `custom_pipelines` in the top `config.json`, and would load the base model's weights from the folder itself
(not from the adapter's base) if that config sat next to a top-level `adapter_config.json`.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, Pipeline, PretrainedConfig
from transformers.utils import cached_file

TASK = "grape-rewrite"
# The key in `custom_pipelines`. It must differ from TASK: transformers refuses a task named in a folder's
# `custom_pipelines` unless `trust_remote_code=True`, and grape_hf's registered "grape-rewrite" needs no remote code.
REMOTE_TASK = "grape-rewrite-remote"
MODULE_NAME = "grape_rewrite_pipeline"
REWRITER_CONFIG_NAME = "grape_rewriter.json"
PROMPTS_NAME = "grape_prompts.json"
ADAPTER_SUBFOLDER = "adapter"
POINTER_MODEL_TYPE = "grape_rewriter"
DEFAULT_SHIFT = "multilingual"
DEFAULT_BATCH_SIZE = 16
_BASE_LOAD_KWARGS = ("dtype", "torch_dtype", "device_map", "token", "cache_dir", "local_files_only",
                     "low_cpu_mem_usage", "attn_implementation", "quantization_config")  # fmt: skip
_HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "force_download")


def clean_rewrite(text: str) -> str:
    """Strip whitespace and wrapping quotes, keep the first non-empty line (as `grape_hf.rewriter.clean_rewrite`)."""
    text = text.strip()
    for line in text.splitlines():
        if line.strip():
            text = line.strip()
            break
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def _read_json(source: str | None, filename: str, **hub_kwargs) -> dict | None:
    """`filename` from a local folder or a Hub repo (cache first), or `None` when it is not there."""
    if not source:
        return None
    if Path(source).is_dir():
        path = Path(source) / filename
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    try:
        resolved = cached_file(
            source,
            filename,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            _raise_exceptions_for_gated_repo=False,
            **{k: v for k, v in hub_kwargs.items() if k in _HUB_KWARGS},
        )
    except (OSError, ValueError):  # not a repo id, or the Hub is unreachable
        return None
    return json.loads(Path(resolved).read_text(encoding="utf-8")) if resolved else None


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


def _identity(name: str) -> str:
    return name


class GRAPERewriterForCausalLM:
    """Loads a rewriter folder or Hub repo: a full causal LM, or a PEFT adapter on its base model.

    Not a model class: `from_pretrained` returns the loaded model (a [`~peft.PeftModel`] for an adapter). transformers
    calls it through `auto_map` (remote code) or as the model class registered for `"grape-rewrite"`.

    Example:
    ```python
    >>> from grape_hf.pipeline import GRAPERewriterForCausalLM
    >>> model = GRAPERewriterForCausalLM.from_pretrained("path/to/rewriter")  # doctest: +SKIP
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
            config = _read_json(str(name_or_path), "config.json", **hub_kwargs)
        config = config.to_dict() if isinstance(config, PretrainedConfig) else config
        if config is not None and config.get("model_type") == POINTER_MODEL_TYPE:
            return config.get("adapter_subfolder") or ADAPTER_SUBFOLDER
        if _read_json(str(name_or_path), "adapter_config.json", **hub_kwargs) is not None:
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
    def from_pretrained(cls, name_or_path: str, *model_args, config: Any = None, **kwargs):
        name_or_path = str(name_or_path)
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
            base = cls.resolve_base_model(peft_config.base_model_name_or_path)
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


class GRAPERewritePipeline(Pipeline):
    """Rewrite queries for a frozen retriever with a GRAPE rewriter (batched, left-padded generation).

    Each query becomes `{"query": original, "rewrites": [...], "rewrite": first, "prompt": rendered prompt}`; an empty
    or blank query is returned unchanged with `"empty": True` and nothing is generated.

    The prompt is the one the rewriter was trained with (its `grape_rewriter.json`) unless `shift=` picks a built-in
    kind (`"multilingual"`, `"long_form"`, `"composed"`) or `prompt=` gives one (`{"user": ..., "system": ...,
    "examples": [...]}`, the user turn containing `{query}`, and `{reference}` for composed queries, which then need
    `reference=`; few-shot `examples` are `{"query", "rewrite"}` dicts rendered as earlier turns).

    Example:
    ```python
    >>> import grape_hf  # registers "grape-rewrite"
    >>> from transformers import pipeline
    >>> from grape_hf.models import resolve_model_path
    >>> path = resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct")  # offline: the local copy
    >>> rewriter = pipeline("grape-rewrite", model=path, device="cpu")
    >>> out = rewriter(["Ein Hund rennt über eine Wiese.", " "], max_new_tokens=16)
    >>> sorted(out[0])
    ['prompt', 'query', 'rewrite', 'rewrites']
    >>> out[1]
    {'query': ' ', 'rewrites': [' '], 'rewrite': ' ', 'prompt': None, 'empty': True}
    ```
    """

    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False
    _pipeline_calls_generate = True
    _default_generation_config = GenerationConfig(max_new_tokens=48)
    # grape_hf plugs in its `prompts.json`; a saved folder brings its own copy (`grape_prompts.json`).
    builtin_prompts_file: str | None = None

    def __init__(self, *args, rewriter_config: dict | None = None, **kwargs):
        # Read before super().__init__, which resolves the call parameters (and so the prompt) once.
        model = kwargs.get("model", args[0] if args else None)
        source = getattr(model, "grape_rewriter_path", None) or getattr(model, "name_or_path", None)
        self.rewriter_config = (
            rewriter_config if rewriter_config is not None else _read_json(source, REWRITER_CONFIG_NAME)
        )
        self.builtin_prompts = _read_json(source, PROMPTS_NAME) or self._packaged_prompts()
        super().__init__(*args, **kwargs)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"
        if self._batch_size is None:
            self._batch_size = DEFAULT_BATCH_SIZE

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: Any = None, **kwargs) -> GRAPERewritePipeline:
        """Load a rewriter folder or Hub id, also ones `pipeline()` cannot open.

        Unlike `pipeline("grape-rewrite", model=...)`, this loads a bare PEFT adapter whose base model transformers
        cannot find (grape_hf resolves SmolLM2-135M-Instruct offline) and explains a folder that holds neither a model
        nor an adapter. `kwargs` go to the pipeline (e.g. `shift=`, `max_new_tokens=`).
        """
        model = GRAPERewriterForCausalLM.from_pretrained(name_or_path)
        tokenizer_source = str(name_or_path)
        if _read_json(tokenizer_source, "tokenizer_config.json") is None:
            tokenizer_source = getattr(model, "grape_base_model", tokenizer_source)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, trust_remote_code=False)
        return cls(model=model, tokenizer=tokenizer, task=TASK, device=device, **kwargs)

    def _packaged_prompts(self) -> dict | None:
        if self.builtin_prompts_file and Path(self.builtin_prompts_file).is_file():
            return json.loads(Path(self.builtin_prompts_file).read_text(encoding="utf-8"))
        return None

    def template(self, shift: str | None = None, prompt: str | dict | None = None) -> dict:
        """The prompt used: `{"user": ..., "system": ..., "shift": ...}` (see the class docstring for the order)."""
        if prompt is not None:
            template = {"user": prompt} if isinstance(prompt, str) else dict(prompt)
            if not isinstance(template.get("user"), str):
                raise ValueError(f"prompt= must be a user turn or a dict with a 'user' string; got {prompt!r}.")
        else:
            trained = (self.rewriter_config or {}).get("prompt")
            if trained and (shift is None or shift == trained.get("shift")):
                template = dict(trained)
            else:
                shift = shift or DEFAULT_SHIFT
                builtin = self.builtin_prompts or {}
                if shift not in builtin:
                    raise ValueError(
                        f"Unknown shift kind {shift!r}; choose one of {sorted(builtin)}."
                        if builtin
                        else f"No built-in prompts are available for shift={shift!r}; pass prompt= instead."
                    )
                template = {"shift": shift, **builtin[shift]}
        if "{query}" not in template["user"]:
            raise ValueError(f"The prompt's user turn must contain '{{query}}'; got {template['user']!r}.")
        return template

    def _sanitize_parameters(self, shift=None, prompt=None, num_rewrites=None, **generate_kwargs):
        preprocess, forward = {}, dict(generate_kwargs)
        if shift is not None or prompt is not None or not self._preprocess_params_ready():
            preprocess["template"] = self.template(shift, prompt)
        if num_rewrites is not None:
            if not isinstance(num_rewrites, int) or num_rewrites < 1:
                raise ValueError(f"num_rewrites must be a positive integer, got {num_rewrites!r}.")
            if num_rewrites > 1 and forward.get("do_sample") is False and forward.get("num_beams", 1) < num_rewrites:
                raise ValueError(f"num_rewrites={num_rewrites} needs sampling; drop do_sample=False or use beams.")
            forward["num_rewrites"] = num_rewrites
        return preprocess, forward, {}

    def _preprocess_params_ready(self) -> bool:
        # During __init__ the default template is resolved; later calls reuse it unless shift/prompt is given.
        return "template" in getattr(self, "_preprocess_params", {})

    def __call__(self, queries: str | list[str], reference: str | list[str] | None = None, **kwargs):
        """Rewrite one query or a list of them.

        Args:
            queries (`str` or `list[str]`): The queries.
            reference (`str` or `list[str]`, *optional*): The reference item's caption per query (composed queries).
            shift (`str`, *optional*): A built-in prompt kind instead of the trained prompt.
            prompt (`str` or `dict`, *optional*): A prompt of your own.
            num_rewrites (`int`, *optional*, defaults to `1`): Rewrites per query; more than one are sampled.
            batch_size (`int`, *optional*, defaults to `16`): Queries generated together (left padding).
            **generate_kwargs: Generation settings (`max_new_tokens`, `temperature`, `top_p`, `do_sample`, ...).

        Returns:
            `dict` for a string, `list[dict]` for a list: `{"query", "rewrites", "rewrite", "prompt"}` (and
            `"empty": True` for a blank query, returned unchanged).
        """
        single = isinstance(queries, str)
        batch = [queries] if single else queries
        if not isinstance(batch, (list, tuple)):
            raise TypeError(f"queries must be a string or a list of strings, got {type(queries).__name__}.")
        for i, query in enumerate(batch):
            if not isinstance(query, str):
                raise TypeError(f"Query {i} is a {type(query).__name__} ({query!r:.60}), not a string.")
        references = self._references(reference, len(batch), single)
        call_kwargs = {k: v for k, v in kwargs.items() if k not in ("batch_size", "num_workers")}
        template = {**self._preprocess_params, **self._sanitize_parameters(**call_kwargs)[0]}["template"]
        needs_reference = "{reference}" in template["user"]
        results: list[dict | None] = [None] * len(batch)
        todo = []
        for i, (query, ref) in enumerate(zip(batch, references)):
            if not query.strip():
                results[i] = {"query": query, "rewrites": [query], "rewrite": query, "prompt": None, "empty": True}
            elif needs_reference and not isinstance(ref, str):
                raise ValueError(
                    f"The {template.get('shift') or 'given'} prompt needs a reference caption for query {i} "
                    f"({query!r:.60}); pass reference= (a string per query)."
                )
            else:
                todo.append(i)
        if todo:
            inputs = [{"query": batch[i], "reference": references[i]} for i in todo]
            for i, out in zip(todo, super().__call__(inputs, **kwargs)):
                results[i] = out
        return results[0] if single else results

    @staticmethod
    def _references(reference, n: int, single: bool) -> list[str | None]:
        if reference is None:
            return [None] * n
        refs = [reference] if single and isinstance(reference, str) else reference
        if not isinstance(refs, (list, tuple)) or len(refs) != n:
            raise ValueError(f"reference= must give one caption per query ({n}); got {reference!r:.80}.")
        return list(refs)

    def preprocess(self, inputs: dict, template: dict | None = None) -> dict:
        template = template or self.template()

        def render(query: str, reference: str | None) -> str:
            return template["user"].replace("{query}", query).replace("{reference}", reference or "")

        # As grape_hf.prompts.PromptTemplate.build_messages: system, few-shot turns, then the query.
        messages = [{"role": "system", "content": template["system"]}] if template.get("system") else []
        for example in template.get("examples") or []:
            messages.append({"role": "user", "content": render(example["query"], example.get("reference"))})
            messages.append({"role": "assistant", "content": example["rewrite"]})
        messages.append({"role": "user", "content": render(inputs["query"], inputs["reference"])})
        if self.tokenizer.chat_template is not None:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = "\n\n".join(m["content"] for m in messages) + "\n\n"
        encoded = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "query": inputs["query"],
                "prompt": text}  # fmt: skip

    def _forward(self, model_inputs: dict, num_rewrites: int = 1, **generate_kwargs) -> dict:
        input_ids, attention_mask = model_inputs["input_ids"], model_inputs["attention_mask"]
        config = copy.deepcopy(generate_kwargs.pop("generation_config", None) or self.generation_config)
        do_sample = generate_kwargs.pop("do_sample", num_rewrites > 1)
        if not do_sample:  # plain greedy: drop the sampling settings a model's generation config may carry
            for key in ("temperature", "top_p", "top_k"):
                generate_kwargs.setdefault(key, None)
        generate_kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        model_kwargs = config.update(do_sample=do_sample, num_return_sequences=num_rewrites, **generate_kwargs)
        if config.max_new_tokens is not None:
            config.max_length = None  # max_new_tokens wins; leaving both set only earns a warning
        generated = self.model.generate(
            input_ids=input_ids, attention_mask=attention_mask, generation_config=config, **model_kwargs
        )
        new_tokens = generated[:, input_ids.shape[1] :]
        # (batch * num_rewrites, length) -> (batch, num_rewrites, length), so batches unroll per query
        new_tokens = new_tokens.reshape(input_ids.shape[0], num_rewrites, -1)
        return {"new_tokens": new_tokens, "query": model_inputs["query"], "prompt": model_inputs["prompt"]}

    def postprocess(self, model_outputs: dict) -> dict:
        texts = self.tokenizer.batch_decode(
            model_outputs["new_tokens"][0], skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        rewrites = [clean_rewrite(t) for t in texts]
        return {"query": model_outputs["query"], "rewrites": rewrites, "rewrite": rewrites[0],
                "prompt": model_outputs["prompt"]}  # fmt: skip

    def save_pretrained(self, save_directory: str | Path, **kwargs) -> Path:
        """Write a rewriter folder that both `pipeline("grape-rewrite")` and remote code load (see the module doc)."""
        return save_rewriter_folder(
            self.model,
            self.tokenizer,
            save_directory,
            rewriter_config=self.rewriter_config,
            prompts=self.builtin_prompts,
        )


def save_rewriter_folder(
    model, tokenizer, folder: str | Path, rewriter_config: dict | None = None, prompts: dict | None = None
) -> Path:
    """Save a rewriter (full model or PEFT adapter), its tokenizer and metadata so that pipelines can load it.

    Args:
        model: The rewriter LM, or a [`~peft.PeftModel`] (saved as an adapter in `adapter/`).
        tokenizer: Its tokenizer.
        folder (`str` or `Path`): Where to write.
        rewriter_config (`dict`, *optional*): The `grape_rewriter.json` content (prompt, training, evaluation, ...).
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
        text = json.dumps(rewriter_config, indent=2, ensure_ascii=False) + "\n"
        (folder / REWRITER_CONFIG_NAME).write_text(text, encoding="utf-8")
    return folder


def add_pipeline_files(
    folder: str | Path,
    adapter_subfolder: str | None = None,
    base_model: str | None = None,
    prompts: dict | None = None,
) -> None:
    """Make a saved model or adapter folder loadable by remote code: copy this module, declare it in `config.json`.

    For a full model, `custom_pipelines` is added to its `config.json`. For an adapter (in `adapter_subfolder`), the
    top `config.json` is a [`GRAPERewriterConfig`] whose `auto_map` names [`GRAPERewriterForCausalLM`] as the loader.
    """
    folder = Path(folder)
    shutil.copyfile(Path(__file__), folder / f"{MODULE_NAME}.py")
    custom = {
        REMOTE_TASK: {"impl": f"{MODULE_NAME}.GRAPERewritePipeline", "pt": ["AutoModelForCausalLM"], "type": "text"}
    }
    config_path = folder / "config.json"
    if adapter_subfolder is not None:
        config = GRAPERewriterConfig(adapter_subfolder=adapter_subfolder, base_model_name_or_path=base_model)
        config.auto_map = {
            "AutoConfig": f"{MODULE_NAME}.GRAPERewriterConfig",
            "AutoModelForCausalLM": f"{MODULE_NAME}.GRAPERewriterForCausalLM",
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


def register_pipeline(resolve_base_model=None, prompts_file: str | Path | None = None) -> None:
    """Register `"grape-rewrite"` with transformers (grape_hf does this when it is imported).

    Args:
        resolve_base_model (`Callable[[str], str]`, *optional*): Maps an adapter's base model id to a loadable path.
        prompts_file (`str` or `Path`, *optional*): JSON of the built-in prompt kinds, for `shift=`.
    """
    from transformers import AutoConfig
    from transformers.pipelines import PIPELINE_REGISTRY

    if resolve_base_model is not None:
        GRAPERewriterForCausalLM.resolve_base_model = staticmethod(resolve_base_model)
    if prompts_file is not None:
        GRAPERewritePipeline.builtin_prompts_file = str(prompts_file)
    AutoConfig.register(POINTER_MODEL_TYPE, GRAPERewriterConfig, exist_ok=True)
    if TASK not in PIPELINE_REGISTRY.get_supported_tasks():
        PIPELINE_REGISTRY.register_pipeline(
            TASK, pipeline_class=GRAPERewritePipeline, pt_model=GRAPERewriterForCausalLM, type="text"
        )
