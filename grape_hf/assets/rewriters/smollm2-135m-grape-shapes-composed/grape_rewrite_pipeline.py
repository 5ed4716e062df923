"""`pipeline("grape-rewrite")`: rewrite search queries with a trained GRAPE rewriter.

Self-contained like [`~grape_hf.rewriting.folder`] (the folder format and loader),
[`~grape_hf.rewriting.prompting`] and [`~grape_hf.rewriting.generation`], which it uses:
[`~grape_hf.rewriting.saving.add_pipeline_files`] copies them all into a saved rewriter folder, so that
`pipeline(model=folder, trust_remote_code=True)` works where grape_hf is not installed. grape_hf itself never sets
`trust_remote_code`: importing it registers the task `"grape-rewrite"` and plugs in its offline model resolution and
built-in prompts through [`register_pipeline`].
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from transformers import GenerationConfig, Pipeline

from .folder import (
    POINTER_MODEL_TYPE,
    PROMPTS_NAME,
    REWRITER_CONFIG_NAME,
    GRAPERewriterConfig,
    GRAPERewriterLoader,
    is_adapter_model,
    load_rewriter,
    load_tokenizer,
    read_json,
    trained_prompt,
    with_pad_token,
)
from .generation import check_context, decode_rewrites, generate_rewrite_tokens
from .prompting import (
    adds_special_tokens,
    check_template,
    is_blank,
    needs_reference,
    render_image_messages,
    render_prompt,
    template_format,
)
from .saving import save_rewriter_folder
from .vision import check_images, encode_image_prompts, is_processor, is_vision_language, load_processor

logger = logging.getLogger(__name__)

TASK = "grape-rewrite"
DEFAULT_SHIFT = "multilingual"
DEFAULT_BATCH_SIZE = 16
# What preprocess passes along besides the model's inputs.
_TEXT_FIELDS = ("query", "prompt", "stop_at_newline")


class GRAPERewritePipeline(Pipeline):
    """Rewrite queries for a frozen retriever with a GRAPE rewriter (batched, left-padded generation).

    Each query becomes `{"query": original, "rewrites": [...], "rewrite": first, "prompt": rendered prompt}`; an empty
    or blank query is returned unchanged with `"empty": True` and nothing is generated.

    The prompt is the one the rewriter was trained with (its `grape_rewriter.json`) unless `shift=` picks a built-in
    kind (`"multilingual"`, `"long_form"`, `"composed"`) or `prompt=` gives one (`{"user": ..., "system": ...,
    "examples": [...]}`, the user turn containing `{query}`, and `{reference}` for composed queries, which then need
    `reference=`; few-shot `examples` are `{"query", "rewrite"}` dicts rendered as earlier turns).

    A vision-language rewriter (a folder whose model has a `vision_config`, e.g. one trained by GRPO on CIRR) takes
    the reference *image*: `rewriter("make the dog black", reference=image)`; its processor is loaded with it.

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

    # Soft: a shipped adapter folder may leave the tokenizer to its base model (Gemma's is 32 MB); see __init__.
    _load_tokenizer = None
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
            rewriter_config if rewriter_config is not None else read_json(source, REWRITER_CONFIG_NAME)
        )
        self.builtin_prompts = read_json(source, PROMPTS_NAME) or self._packaged_prompts()
        if kwargs.get("tokenizer") is None and len(args) < 2:
            # As load_rewriter: the folder's tokenizer, else the adapter's base model's.
            base = getattr(model, "grape_base_model", None)
            if base is None:
                raise ValueError(f"{source!r} holds no tokenizer and names no base model; pass tokenizer=.")
            kwargs["tokenizer"] = load_tokenizer(base)
        processor = kwargs.pop("processor", None)
        if is_processor(kwargs.get("tokenizer")):  # load_rewriter's processor, in the tokenizer's place
            processor = kwargs["tokenizer"]
            kwargs["tokenizer"] = processor.tokenizer
        super().__init__(*args, **kwargs)
        self.processor = None
        if is_vision_language(getattr(self.model, "config", None)):  # the reference is an image, read by its processor
            has_own = read_json(source, "tokenizer_config.json") is not None
            self.processor = processor or load_processor(source if has_own else model.grape_base_model)
            self.tokenizer = self.processor.tokenizer
            # Batching collates pixel values through the pipeline's image processor (same-size images: stacked).
            self.image_processor = getattr(self.processor, "image_processor", None)
        with_pad_token(self.tokenizer)
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
        model, tokenizer, _ = load_rewriter(name_or_path)
        return cls(model=model, tokenizer=tokenizer, task=TASK, device=device, **kwargs)

    def _packaged_prompts(self) -> dict | None:
        if self.builtin_prompts_file and Path(self.builtin_prompts_file).is_file():
            return json.loads(Path(self.builtin_prompts_file).read_text(encoding="utf-8"))
        return None

    def template(
        self, shift: str | None = None, prompt: str | dict | None = None, prompt_format: str | None = None
    ) -> dict:
        """The prompt used: `{"user": ..., "system": ..., "shift": ..., "format": ...}` (see the class docstring for
        the order). A built-in kind comes in the format of the rewriter's trained prompt unless `prompt_format=`
        (`"chat"` or `"completion"`) says otherwise."""
        source = getattr(self.model, "grape_rewriter_path", None) or getattr(self.model, "name_or_path", None)
        chosen = prompt is not None or shift is not None
        trained = trained_prompt(self.rewriter_config, source, is_adapter=is_adapter_model(self.model) and not chosen)
        if prompt_format is None:
            prompt_format = template_format(trained) if trained else "chat"
        if prompt is not None:
            template = {"user": prompt} if isinstance(prompt, str) else prompt
            template = dict(check_template(template, "prompt="))
            template.setdefault("format", prompt_format)
        else:
            if trained and (shift is None or shift == trained.get("shift")):
                template = dict(trained)
            else:
                if shift is None:
                    logger.warning(
                        "%s has no %s: rewriting with the built-in %r prompt. Pass shift= or prompt= to choose one.",
                        source,
                        REWRITER_CONFIG_NAME,
                        DEFAULT_SHIFT,
                    )
                shift = shift or DEFAULT_SHIFT
                builtin = self.builtin_prompts or {}
                if shift not in builtin:
                    raise ValueError(
                        f"Unknown shift kind {shift!r}; choose one of {sorted(builtin)}."
                        if builtin
                        else f"No built-in prompts are available for shift={shift!r}; pass prompt= instead."
                    )
                kind = builtin[shift]
                if prompt_format == "completion":
                    if "completion" not in kind:
                        raise ValueError(f"The built-in {shift!r} prompt has no completion format; pass prompt=.")
                    kind = kind["completion"]
                template = {"shift": shift, **{k: v for k, v in kind.items() if k != "completion"}}
                template["format"] = prompt_format
        return check_template(template)

    def _sanitize_parameters(self, shift=None, prompt=None, prompt_format=None, num_rewrites=None, **generate_kwargs):
        preprocess, forward = {}, dict(generate_kwargs)
        if shift is not None or prompt is not None or prompt_format is not None or not self._preprocess_params_ready():
            preprocess["template"] = self.template(shift, prompt, prompt_format)
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
            reference (`str` or `list[str]`, *optional*): The reference item's caption per query (composed queries);
                for a vision-language rewriter the reference image (a PIL image, or a list with one per query).
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
        if self.processor is not None:
            references = check_images(reference, batch)
        else:
            references = self._references(reference, len(batch), single)
        call_kwargs = {k: v for k, v in kwargs.items() if k not in ("batch_size", "num_workers")}
        template = {**self._preprocess_params, **self._sanitize_parameters(**call_kwargs)[0]}["template"]
        composed = needs_reference(template) and self.processor is None
        if not composed and reference is not None and self.processor is None:
            raise ValueError(
                f"reference= was given, but the {template.get('shift') or 'given'} prompt has no '{{reference}}' "
                "slot, so it would be ignored. Use a composed prompt (shift='composed', or prompt= with "
                "'{reference}') or drop reference=."
            )
        results: list[dict | None] = [None] * len(batch)
        todo = []
        for i, (query, ref) in enumerate(zip(batch, references)):
            if is_blank(query):
                results[i] = {"query": query, "rewrites": [query], "rewrite": query, "prompt": None, "empty": True}
            elif composed and not isinstance(ref, str):
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
        if self.processor is not None:  # the edit with its reference image, through the processor's chat template
            query, image = inputs["query"], inputs["reference"]
            encoded = encode_image_prompts(self.processor, template, [query], [image])
            messages = render_image_messages(template, query, image)
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            dtype = getattr(self.model, "dtype", None)
            return {**encoded.to(dtype=dtype), "query": query, "prompt": text, "stop_at_newline": False}

        text = render_prompt(self.tokenizer, template, inputs["query"], inputs["reference"])
        # As TRL tokenizes the same prompt in training: a chat template writes its own BOS, plain text gets the
        # tokenizer's.
        encoded = self.tokenizer(text, return_tensors="pt", add_special_tokens=adds_special_tokens(template))
        return {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "query": inputs["query"],
            "prompt": text,
            "stop_at_newline": template_format(template) == "completion",
        }

    def _forward(self, model_inputs: dict, num_rewrites: int = 1, **generate_kwargs) -> dict:
        stop = model_inputs.get("stop_at_newline")  # a list when the pipeline batched the inputs
        stop = any(stop) if isinstance(stop, (list, tuple)) else bool(stop)
        config = generate_kwargs.get("generation_config") or self.generation_config
        max_new_tokens = generate_kwargs.get("max_new_tokens", config.max_new_tokens)
        check_context(self.model, model_inputs["attention_mask"], max_new_tokens, model_inputs["query"])
        # A vision-language rewriter's image inputs (pixel_values, ...) go to generate with the token ids.
        images = {k: v for k, v in model_inputs.items() if k not in ("input_ids", "attention_mask", *_TEXT_FIELDS)}
        new_tokens = generate_rewrite_tokens(
            self.model,
            self.tokenizer,
            model_inputs["input_ids"],
            model_inputs["attention_mask"],
            num_rewrites=num_rewrites,
            generation_config=generate_kwargs.pop("generation_config", None) or self.generation_config,
            stop_at_newline=stop,
            **images,
            **generate_kwargs,
        )
        return {"new_tokens": new_tokens, "query": model_inputs["query"], "prompt": model_inputs["prompt"]}

    def postprocess(self, model_outputs: dict) -> dict:
        rewrites = decode_rewrites(self.tokenizer, model_outputs["new_tokens"])[0]
        return {
            "query": model_outputs["query"],
            "rewrites": rewrites,
            "rewrite": rewrites[0],
            "prompt": model_outputs["prompt"],
        }

    def save_pretrained(self, save_directory: str | Path, **kwargs) -> Path:
        """Write a rewriter folder that both `pipeline("grape-rewrite")` and remote code load (see the module doc)."""
        return save_rewriter_folder(
            self.model,
            self.tokenizer,
            save_directory,
            rewriter_config=self.rewriter_config,
            prompts=self.builtin_prompts,
        )


def register_pipeline(resolve_base_model=None, prompts_file: str | Path | None = None) -> None:
    """Register `"grape-rewrite"` with transformers (grape_hf does this when it is imported).

    Args:
        resolve_base_model (`Callable[[str], str]`, *optional*): Maps an adapter's base model id to a loadable path.
        prompts_file (`str` or `Path`, *optional*): JSON of the built-in prompt kinds, for `shift=`.
    """
    from transformers import AutoConfig
    from transformers.pipelines import PIPELINE_REGISTRY

    if resolve_base_model is not None:
        GRAPERewriterLoader.resolve_base_model = staticmethod(resolve_base_model)
    if prompts_file is not None:
        GRAPERewritePipeline.builtin_prompts_file = str(prompts_file)
    AutoConfig.register(POINTER_MODEL_TYPE, GRAPERewriterConfig, exist_ok=True)
    if TASK not in PIPELINE_REGISTRY.get_supported_tasks():
        PIPELINE_REGISTRY.register_pipeline(
            TASK, pipeline_class=GRAPERewritePipeline, pt_model=GRAPERewriterLoader, type="text"
        )
