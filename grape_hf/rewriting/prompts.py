"""Prompt templates that turn a user query into the rewriter's chat messages.

Templates are data (``prompts.json``): one per distribution shift GRAPE handles. A run may bring its own
template; the trained rewriter stores the one it was trained with so the pipeline reuses it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from .prompting import adds_special_tokens, render_completion, render_messages, template_format
from .prompting import render_prompt as _render_prompt

# The built-in templates, as data (also copied into saved folders as `grape_prompts.json`).
PROMPTS_FILE = Path(__file__).with_name("prompts.json")


@lru_cache(maxsize=1)
def _builtin_templates() -> dict[str, dict]:
    return json.loads(PROMPTS_FILE.read_text())


def available_shifts() -> list[str]:
    """Names of the built-in shift kinds, e.g. `["multilingual", "long_form", "composed"]`."""
    return list(_builtin_templates())


@dataclass
class PromptTemplate:
    """A prompt for the rewriter: chat messages for an instruct model, or plain few-shot text for a base model.

    Args:
        user (`str`):
            The user turn (chat) or the query's line (completion). `{query}` is replaced by the query; `{reference}`
            (composed queries) by the reference item's caption.
        system (`str`, *optional*):
            The system turn (chat) or the instruction line (completion), if any.
        shift (`str`, *optional*):
            The shift kind this template was written for (informational).
        examples (`list[dict]`, *optional*):
            Few-shot demonstrations, each `{"query": ..., "rewrite": ...}` (and `"reference"` for composed
            queries), rendered as earlier user/assistant turns (chat) or as filled lines followed by the rewrite.
        format (`str`, *optional*, defaults to `"chat"`):
            `"chat"`: rendered through the tokenizer's chat template; TRL gets conversational prompts.
            `"completion"`: plain text the model continues, ending at the first newline (base models such as
            Gemma 3 270M); TRL gets standard prompts, tokenized with the tokenizer's BOS.

    Example:
    ```python
    >>> from grape_hf.rewriting.prompts import get_prompt_template
    >>> template = get_prompt_template("multilingual")
    >>> template.build_messages("Ein Hund rennt.")[-1]["content"].endswith("Ein Hund rennt.")
    True
    >>> base = get_prompt_template("multilingual", prompt_format="completion")
    >>> base.build_prompt("Ein Hund rennt.").splitlines()[-2:]
    ['Text: Ein Hund rennt.', 'English:']
    ```
    """

    user: str
    system: str | None = None
    shift: str | None = None
    examples: list[dict] | None = None
    format: str = "chat"

    def __post_init__(self):
        if not isinstance(self.user, str) or "{query}" not in self.user:
            raise ValueError(f"The prompt template's user turn must contain '{{query}}'; got {self.user!r}.")
        template_format({"format": self.format})

    @property
    def is_completion(self) -> bool:
        """Whether this is a plain-text (base model) prompt whose rewrite ends at the first newline."""
        return self.format == "completion"

    @property
    def add_special_tokens(self) -> bool:
        """How to tokenize the rendered prompt ([`~grape_hf.rewriting.prompting.adds_special_tokens`])."""
        return adds_special_tokens({"format": self.format})

    def build_prompt(self, query: str, reference: str | None = None) -> list[dict[str, str]] | str:
        """TRL's prompt for one query: the chat messages (conversational) or the plain text (standard)."""
        if self.is_completion:
            self._check_reference(reference)
            return render_completion(self.to_dict(), query, reference)
        return self.build_messages(query, reference)

    @property
    def needs_reference(self) -> bool:
        return "{reference}" in self.user

    def build_messages(self, query: str, reference: str | None = None) -> list[dict[str, str]]:
        """Return the conversation (`[{"role": ..., "content": ...}, ...]`) for one query."""
        self._check_reference(reference)
        return render_messages(self.to_dict(), query, reference)

    def render_prompt(self, tokenizer, query: str, reference: str | None = None) -> str:
        """The prompt text for one query: `tokenizer`'s chat template applied with the generation prompt added
        (chat), or the plain text (completion)."""
        self._check_reference(reference)
        return _render_prompt(tokenizer, self.to_dict(), query, reference)

    def _check_reference(self, reference: str | None) -> None:
        if self.needs_reference and reference is None:
            raise ValueError(
                f"The {self.shift or 'given'!s} prompt template needs a reference caption (it contains "
                "'{reference}'); pass `reference=`."
            )

    def to_dict(self) -> dict:
        data = asdict(self)
        if not data["examples"]:
            data.pop("examples")
        return data

    @classmethod
    def from_dict(cls, data: dict) -> PromptTemplate:
        return cls(
            user=data["user"],
            system=data.get("system"),
            shift=data.get("shift"),
            examples=data.get("examples"),
            format=data.get("format") or "chat",
        )


def get_prompt_template(
    shift: str = "multilingual",
    template: str | dict | PromptTemplate | None = None,
    prompt_format: str | None = None,
) -> PromptTemplate:
    """Return the prompt template for a shift kind, or the user's own.

    Args:
        shift (`str`, *optional*, defaults to `"multilingual"`):
            One of [`available_shifts`].
        template (`str`, `dict` or [`PromptTemplate`], *optional*):
            A user turn containing `{query}`, a dict with `user`/`system` (and `examples`, `format`) keys, or a path
            to a JSON file holding such a dict. Overrides the built-in template of `shift`.
        prompt_format (`str`, *optional*):
            `"chat"` (instruct models) or `"completion"` (base models: the shift's plain-text few-shot prompt). For
            your own `template` it is the format unless the template states one. Defaults to `"chat"`.
    """
    if prompt_format is not None:
        template_format({"format": prompt_format})
    if isinstance(template, PromptTemplate):
        return template
    if isinstance(template, dict):
        return PromptTemplate.from_dict({"shift": shift, "format": prompt_format, **template})
    if isinstance(template, str):
        path = Path(template)
        if template.endswith(".json"):
            if not path.is_file():
                raise ValueError(
                    f"The prompt template file {template!r} does not exist; give the path of a JSON file with "
                    "'user' (and 'system', 'examples') keys, or the user turn itself containing '{query}'."
                )
            data = json.loads(path.read_text())
            return PromptTemplate.from_dict({"shift": shift, "format": prompt_format, **data})
        return PromptTemplate(user=template, shift=shift, format=prompt_format or "chat")
    builtin = _builtin_templates()
    if shift not in builtin:
        raise ValueError(f"Unknown shift kind {shift!r}; choose one of {sorted(builtin)}.")
    if prompt_format == "completion":
        return PromptTemplate.from_dict({"shift": shift, **builtin[shift]["completion"], "format": "completion"})
    return PromptTemplate.from_dict({"shift": shift, **builtin[shift], "format": "chat"})


def to_prompt_dataset(data, template: PromptTemplate, reference_column: str = "reference"):
    """Add TRL's `prompt` column to a [`~grape_hf.data.GRAPEData`]'s queries: the chat messages (conversational) for
    a chat template, the plain text (standard) for a completion template.

    Example:
    ```python
    >>> from datasets import Dataset
    >>> from grape_hf.data import GRAPEData
    >>> from grape_hf.rewriting.prompts import get_prompt_template, to_prompt_dataset
    >>> data = GRAPEData(Dataset.from_list([{"query": "Ein Hund", "target_id": 0}]), ["a dog"], "demo")
    >>> to_prompt_dataset(data, get_prompt_template("multilingual"))[0]["prompt"][-1]["role"]
    'user'
    ```
    """
    queries = getattr(data, "queries", data)

    def add_prompt(example):
        reference = example.get(reference_column) if template.needs_reference else None
        return {"prompt": template.build_prompt(example["query"], reference)}

    return queries.map(add_prompt)


def to_image_prompt_dataset(data, template: PromptTemplate, reference_column: str = "reference"):
    """TRL's multimodal GRPO inputs for a vision-language rewriter: the `prompt` column as chat messages whose user
    turn holds an image placeholder where `{reference}` is (see
    [`~grape_hf.rewriting.prompting.render_image_messages`]), and the `image` column TRL fills it from: the reference
    image of `reference_column`.

    Example:
    ```python
    >>> from datasets import Dataset
    >>> from PIL import Image
    >>> from grape_hf.data import GRAPEData
    >>> from grape_hf.rewriting.prompts import get_prompt_template, to_image_prompt_dataset
    >>> image = Image.new("RGB", (8, 8))
    >>> rows = [{"query": "make it red", "reference": image, "target_id": 0}]
    >>> data = GRAPEData(Dataset.from_list(rows), [image], "demo")
    >>> row = to_image_prompt_dataset(data, get_prompt_template("composed_image"))[0]
    >>> [part["type"] for part in row["prompt"][-1]["content"]], row["image"].size
    (['text', 'image', 'text'], (8, 8))
    ```
    """
    from .prompting import render_image_messages

    if template.is_completion:
        raise ValueError(
            "A vision-language rewriter takes chat prompts (its processor's chat template places the image); the "
            f"{template.shift or 'given'} prompt has format 'completion'. Use prompt_format: chat."
        )
    queries = getattr(data, "queries", data)
    if reference_column not in queries.column_names:
        raise ValueError(
            f"A vision-language rewriter needs each query's reference image, but the queries have no "
            f"{reference_column!r} column (they have {queries.column_names}). Set reference_column to the image "
            "column (e.g. reference_image for `grape-hf shapes-task --reference_images`)."
        )
    first = queries[0][reference_column]
    if isinstance(first, str) or not hasattr(first, "size"):
        raise ValueError(
            f"The {reference_column!r} column holds {type(first).__name__}s ({first!r:.60}), not images; a "
            "vision-language rewriter reads the reference image. Point reference_column at the image column."
        )
    template_dict = template.to_dict()

    def add_prompt(example):
        return {"prompt": render_image_messages(template_dict, example["query"]), "image": example[reference_column]}

    return queries.map(add_prompt)
