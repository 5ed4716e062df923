"""Vision-language rewriters: composed queries (a reference image plus an edit) rewritten by a model that sees the
image, as the paper's CIRR rewriter does.

A rewriter folder (or base model) whose config has a `vision_config` (LLaVA, Qwen2-VL, SmolVLM, Gemma 3 4B, ...) is
loaded with `AutoModelForImageTextToText` and its processor ([`load_processor`]); its prompt puts the reference image
where the user turn says `{reference}` ([`~grape_hf.rewriting.prompting.render_image_messages`]), and
[`encode_image_prompts`] turns a batch of (edit, image) pairs into the model's inputs (token ids and pixel values).
The text-only path stays as it is.

Part of a saved rewriter folder's remote code (see [`~grape_hf.rewriting.saving.add_pipeline_files`]): it imports
only transformers and [`~grape_hf.rewriting.prompting`].
"""

from __future__ import annotations

from typing import Any

from .prompting import render_image_messages


def is_vision_language(config: Any) -> bool:
    """Whether a model config (a [`~transformers.PretrainedConfig`] or its dict) is a vision-language model's: it
    has a `vision_config`.

    Example:
    ```python
    >>> from grape_hf.rewriting.vision import is_vision_language
    >>> is_vision_language({"model_type": "llava", "vision_config": {}}), is_vision_language({"model_type": "llama"})
    (True, False)
    ```
    """
    if config is None:
        return False
    data = config if isinstance(config, dict) else config.to_dict()
    return data.get("vision_config") is not None


def is_processor(processing_class: Any) -> bool:
    """Whether `processing_class` is a multimodal processor (it holds a tokenizer) rather than a tokenizer."""
    from transformers import ProcessorMixin

    return isinstance(processing_class, ProcessorMixin)


def text_tokenizer(processing_class: Any):
    """The tokenizer itself: a processor's `tokenizer`, or `processing_class` when it is one."""
    return processing_class.tokenizer if is_processor(processing_class) else processing_class


def load_processor(source: str):
    """A vision-language rewriter's processor, never through remote code, its tokenizer padding on the left (batched
    generation) with a pad token."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(source), trust_remote_code=False)
    tokenizer = processor.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return processor


def check_images(images: Any, queries: list, what: str = "reference") -> list:
    """`images` as a list with one image per query, else a `ValueError` that names the argument (`what`) to pass."""
    if images is None:
        raise ValueError(
            f"This rewriter is a vision-language model: each of the {len(queries)} queries needs its reference image; "
            f"pass {what}= (a PIL image, or a list with one per query)."
        )
    if not isinstance(images, (list, tuple)):
        images = [images]
    if len(images) != len(queries):
        raise ValueError(f"{what}= must give one image per query ({len(queries)}); got {len(images)}.")
    for i, image in enumerate(images):
        if isinstance(image, str) or not hasattr(image, "size"):
            raise ValueError(
                f"The reference of query {i} ({queries[i]!r:.60}) is a {type(image).__name__}, not an image; this "
                "rewriter sees the reference image itself: pass a PIL image (PIL.Image.open(path).convert('RGB'))."
            )
    return list(images)


def encode_image_prompts(processor, template: dict, queries: list[str], images: list) -> dict:
    """The model inputs of a batch of composed queries: the prompts rendered with their images through the processor's
    chat template (generation prompt added), left-padded: `input_ids`, `attention_mask`, `pixel_values` and whatever
    else the model takes (e.g. `image_grid_thw`).

    Example:
    ```python
    >>> from grape_hf.rewriting.vision import encode_image_prompts
    >>> template = {"user": "{reference}\\nEdit: {query}"}
    >>> inputs = encode_image_prompts(processor, template, ["make it blue"], [image])  # doctest: +SKIP
    >>> sorted(inputs)  # doctest: +SKIP
    ['attention_mask', 'input_ids', 'pixel_values']
    ```
    """
    tokenizer = processor.tokenizer
    conversations = [render_image_messages(template, query, image) for query, image in zip(queries, images)]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        return processor.apply_chat_template(
            conversations,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs={"padding": True},
        )
    finally:
        tokenizer.padding_side = side
