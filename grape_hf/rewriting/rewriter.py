"""The query rewriter: an LLM, its tokenizer and the prompt it was trained with, rewriting batches of queries.

The rewriter folder format and its loader live in [`~grape_hf.rewriting.folder`], the generation path in
[`~grape_hf.rewriting.generation`]; this module wraps them for batch use from Python (evaluation, the R@10 curve
callback, self-distillation) and lists the rewriters shipped with grape_hf.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..models import resolve_model_path
from .devices import resolve_dtype
from .folder import REWRITER_CONFIG_NAME, is_adapter_model, load_rewriter, trained_prompt, with_pad_token
from .generation import check_context, decode_rewrites, generate_rewrite_tokens
from .prompting import is_blank
from .prompts import PromptTemplate, get_prompt_template
from .vision import check_images, encode_image_prompts, is_processor, text_tokenizer

logger = logging.getLogger(__name__)


class QueryRewriter:
    """Batched query rewriting with a causal LM through its chat template.

    A vision-language rewriter (its processor given as `tokenizer`) rewrites composed queries from the reference
    image itself: `rewrite(edits, references=images)` (see [`~grape_hf.rewriting.vision`]).

    Args:
        model ([`~transformers.PreTrainedModel`]): The rewriter LM (a PEFT model works too).
        tokenizer ([`~transformers.PreTrainedTokenizerBase`] or [`~transformers.ProcessorMixin`]): Its tokenizer, or
            a vision-language model's processor; left padding is used for generation.
        template ([`~grape_hf.rewriting.prompts.PromptTemplate`], *optional*): The prompt; defaults to the multilingual
        one.
        max_new_tokens (`int`, *optional*, defaults to `48`): Length of a rewrite.

    Example:
    ```python
    >>> from grape_hf.rewriting.rewriter import QueryRewriter
    >>> rewriter = QueryRewriter.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")  # doctest: +SKIP
    >>> rewriter.rewrite(["Ein Hund rennt über eine Wiese."])  # doctest: +SKIP
    [['A dog runs across a meadow.']]
    ```
    """

    def __init__(self, model, tokenizer, template: PromptTemplate | None = None, max_new_tokens: int = 48):
        self.model = model
        self.processor = tokenizer if is_processor(tokenizer) else None
        self.tokenizer = text_tokenizer(tokenizer)
        self.template = template or get_prompt_template("multilingual")
        self.max_new_tokens = max_new_tokens
        with_pad_token(self.tokenizer)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, template: PromptTemplate | None = None, device: str | None = None, **kwargs
    ) -> QueryRewriter:
        """Load a trained rewriter folder, a Hub id, or a plain instruct model (prompt-only rewriting).

        `dtype=` (default `"auto"`: bf16 where `device` runs it natively, else fp32; or e.g. `torch.float32`) goes to
        `from_pretrained`; other `kwargs` to the constructor.
        """
        load_kwargs = {"dtype": resolve_dtype(kwargs.pop("dtype", "auto"), device)}
        model, tokenizer, config = load_rewriter(name_or_path, resolve_base_model=resolve_model_path, **load_kwargs)
        if device:
            model.to(device)
        if template is None:
            prompt = trained_prompt(config.to_dict() if config else None, name_or_path, is_adapter_model(model))
            if prompt is None:
                logger.warning(
                    "%s has no %s: rewriting with the built-in 'multilingual' prompt; pass template= to choose one.",
                    name_or_path,
                    REWRITER_CONFIG_NAME,
                )
            template = PromptTemplate.from_dict(prompt) if prompt else None
        return cls(model, tokenizer, template=template, **kwargs)

    def prompts(self, queries: list[str], references: list[str] | None = None) -> list[str]:
        """The rendered prompts (chat template applied, generation prompt added)."""
        refs = references if references is not None else [None] * len(queries)
        return [self.template.render_prompt(self.tokenizer, q, r) for q, r in zip(queries, refs)]

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
        """Rewrite each query; returns `num_rewrites` rewrites per query (greedy unless sampling).

        `references`: one reference caption per query for a composed prompt; for a vision-language rewriter, one
        reference image (PIL) per query, always.
        """
        if isinstance(queries, str):
            raise TypeError(
                f"queries must be a list of strings; got the string {queries[:60]!r}. Pass [query] for one query."
            )
        if do_sample is None:
            do_sample = num_rewrites > 1
        generation_kwargs.setdefault("max_new_tokens", self.max_new_tokens)
        generation_kwargs.update(num_rewrites=num_rewrites, do_sample=do_sample)
        if self.processor is not None:
            images = check_images(references, queries, what="references")
            return self._rewrite_with_images(queries, images, batch_size, generation_kwargs)
        if references is not None and (isinstance(references, str) or len(references) != len(queries)):
            raise ValueError(f"references must be a list with one caption per query ({len(queries)}).")
        if references is not None and not self.template.needs_reference:
            raise ValueError(
                f"references were given, but the {self.template.shift or 'given'} prompt has no '{{reference}}' slot, "
                "so they would be ignored. Use a composed template (get_prompt_template('composed')) or drop them."
            )
        # A blank query (only whitespace or zero-width characters) is returned as it is, as the pipeline does.
        todo = [i for i, query in enumerate(queries) if not is_blank(query)]
        results: list[list[str]] = [[query] * num_rewrites for query in queries]
        queries = [queries[i] for i in todo]
        references = None if references is None else [references[i] for i in todo]
        texts = self.prompts(list(queries), references)
        device = next(self.model.parameters()).device
        outputs: list[list[str]] = []
        old_side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"
        try:
            for start in range(0, len(texts), batch_size):
                batch = self.tokenizer(
                    texts[start : start + batch_size],
                    return_tensors="pt",
                    padding=True,
                    add_special_tokens=self.template.add_special_tokens,  # as TRL tokenizes the same prompt
                ).to(device)
                outputs.extend(self._generate(batch, queries[start:], generation_kwargs))
        finally:
            self.tokenizer.padding_side = old_side
        for i, rewrites in zip(todo, outputs):
            results[i] = rewrites
        return results

    def _rewrite_with_images(self, queries: list[str], images: list, batch_size: int, generation_kwargs: dict):
        """A vision-language rewriter's path: each edit with its reference image, through the processor."""
        template = self.template.to_dict()
        device = next(self.model.parameters()).device
        outputs: list[list[str]] = []
        for start in range(0, len(queries), batch_size):
            batch = encode_image_prompts(
                self.processor, template, queries[start : start + batch_size], images[start : start + batch_size]
            ).to(device=device, dtype=self.model.dtype)  # floating inputs (pixel values) in the model's dtype
            outputs.extend(self._generate(batch, queries[start:], generation_kwargs))
        return outputs

    def _generate(self, batch, queries: list[str], generation_kwargs: dict) -> list[list[str]]:
        """The cleaned rewrites of one encoded batch (token ids, and a vision-language model's image inputs)."""
        check_context(self.model, batch["attention_mask"], generation_kwargs["max_new_tokens"], queries)
        images = self.processor is not None
        inputs = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")} if images else {}
        new_tokens = generate_rewrite_tokens(
            self.model,
            self.tokenizer,
            batch["input_ids"],
            batch["attention_mask"],
            stop_at_newline=self.template.is_completion,
            **inputs,
            **generation_kwargs,
        )
        return decode_rewrites(self.tokenizer, new_tokens)


SHIPPED_REWRITERS_DIR = Path(__file__).parents[1] / "assets" / "rewriters"


def shipped_rewriters() -> list[str]:
    """Names of the trained rewriters shipped inside grape_hf (offline defaults)."""
    if not SHIPPED_REWRITERS_DIR.is_dir():
        return []
    return sorted(p.name for p in SHIPPED_REWRITERS_DIR.iterdir() if (p / REWRITER_CONFIG_NAME).is_file())


def is_shipped_rewriter(name: str) -> bool:
    """Whether `name` is the name of a rewriter shipped inside grape_hf (not a path or a Hub id)."""
    return "/" not in name and name in shipped_rewriters()


def shipped_rewriter_path(name: str = "smollm2-135m-grape-multi30k-de") -> Path:
    """The folder of a rewriter shipped with grape_hf, for `pipeline("grape-rewrite", model=...)`.

    Example:
    ```python
    >>> from grape_hf.rewriting.rewriter import shipped_rewriter_path
    >>> from transformers import pipeline
    >>> rewriter = pipeline("grape-rewrite", model=shipped_rewriter_path())  # doctest: +SKIP
    ```
    """
    path = SHIPPED_REWRITERS_DIR / name
    if not (path / REWRITER_CONFIG_NAME).is_file():
        raise ValueError(f"No shipped rewriter named {name!r}; grape_hf ships {shipped_rewriters()}.")
    return path
