"""Prompt rendering: a query (and a reference, for composed queries) into the rewriter's prompt, and a generated
rewrite back into a clean query.

A template has a `format`: `"chat"` (the default) renders chat messages through the tokenizer's chat template, for
instruct models; `"completion"` renders plain text that a base model continues (few-shot lines, no chat template),
the way TRL's standard, non-conversational prompts are. A completion-format rewrite ends at the first newline. The
format is stated, never guessed from `tokenizer.chat_template`.

Part of a saved rewriter folder's remote code (see [`~grape_hf.rewriting.saving.add_pipeline_files`]): it imports
nothing but the standard library.
"""

from __future__ import annotations

import re
import unicodedata

PROMPT_FORMATS = ("chat", "completion")
_FIELDS = re.compile(r"(\{query\}|\{reference\})")


def template_format(template: dict) -> str:
    """A template's `format`: `"chat"` (also when unset) or `"completion"`; anything else is refused."""
    fmt = template.get("format") or "chat"
    if fmt not in PROMPT_FORMATS:
        raise ValueError(
            f"The prompt template's format must be one of {PROMPT_FORMATS}, got {fmt!r}: 'chat' for instruct models "
            "(the tokenizer's chat template), 'completion' for base models (plain few-shot text)."
        )
    return fmt


def check_template(template, source: str = "prompt") -> dict:
    """`template` if it is a prompt template (a dict whose `"user"` string holds `{query}`), else a `ValueError`
    naming `source`, the value and the fix.

    Example:
    ```python
    >>> from grape_hf.rewriting.prompting import check_template
    >>> check_template({"user": "Rewrite: {query}"})["user"]
    'Rewrite: {query}'
    ```
    """
    if not isinstance(template, dict) or not isinstance(template.get("user"), str):
        raise ValueError(
            f"{source} must be a prompt template, a dict with a 'user' string containing '{{query}}' (and optional "
            f"'system', 'examples', 'format'); got {template!r:.120}. Write it as {{\"user\": \"...{{query}}...\"}}."
        )
    if "{query}" not in template["user"]:
        raise ValueError(f"{source}'s user turn must contain '{{query}}'; got {template['user']!r:.120}.")
    template_format(template)
    return template


def needs_reference(template: dict) -> bool:
    """Whether the template has a `{reference}` slot (composed queries: a reference caption plus an edit)."""
    return "{reference}" in template["user"]


def is_blank(text: str) -> bool:
    """True for a text with nothing to search by: only whitespace, control or format characters (zero-width
    spaces and joiners, the BOM, bidi marks). The reward scores such a rewrite as blank, and the rewriter returns
    such a query unchanged.

    Example:
    ```python
    >>> from grape_hf.rewriting.prompting import is_blank
    >>> is_blank(" \u200b\u200d\ufeff "), is_blank("a\u200b")
    (True, False)
    ```
    """
    return all(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zs", "Zl", "Zp") for ch in text)


def adds_special_tokens(template: dict) -> bool:
    """Whether prompts of this template are tokenized with the tokenizer's special tokens (its BOS).

    A chat template writes its own BOS into the text; a completion prompt is plain text, and TRL tokenizes standard
    prompts with `add_special_tokens=True`, so inference does the same (Gemma is trained with its `<bos>`).
    """
    return template_format(template) == "completion"


def fill(pattern: str, query: str, reference: str | None = None) -> str:
    """`pattern` with `{query}` and `{reference}` replaced in one pass, so braces in the query stay as they are.

    Example:
    ```python
    >>> from grape_hf.rewriting.prompting import fill
    >>> fill("Edit {reference}: {query}", "make it {reference}", "a red cube")
    'Edit a red cube: make it {reference}'
    ```
    """
    values = {"{query}": query, "{reference}": reference or ""}
    return "".join(values.get(part, part) for part in _FIELDS.split(pattern))


def render_completion(template: dict, query: str, reference: str | None = None) -> str:
    """The plain-text prompt of a completion-format template: the instruction line (`system`), each example as its
    filled `user` line followed by a space and its rewrite, then the query's `user` line for the model to continue.

    Example:
    ```python
    >>> from grape_hf.rewriting.prompting import render_completion
    >>> template = {"format": "completion", "system": "Translate into English.", "user": "Text: {query}\\nEnglish:",
    ...             "examples": [{"query": "Ein Hund läuft.", "rewrite": "A dog runs."}]}
    >>> print(render_completion(template, "Zwei Katzen schlafen."))
    Translate into English.
    Text: Ein Hund läuft.
    English: A dog runs.
    Text: Zwei Katzen schlafen.
    English:
    ```
    """
    lines = [template["system"]] if template.get("system") else []
    for example in template.get("examples") or []:
        lines.append(fill(template["user"], example["query"], example.get("reference")) + " " + example["rewrite"])
    lines.append(fill(template["user"], query, reference))
    return "\n".join(lines)


def render_messages(template: dict, query: str, reference: str | None = None) -> list[dict[str, str]]:
    """The chat messages for one query: the system turn, few-shot turns, then the user turn.

    `template` is `{"user": ..., "system": ..., "examples": [...]}`: `{query}` in the user turn becomes the query,
    `{reference}` the reference item's caption (composed queries); each example `{"query", "rewrite"}` becomes a user
    and an assistant turn.

    Example:
    ```python
    >>> from grape_hf.rewriting.prompting import render_messages
    >>> render_messages({"user": "In English: {query}", "system": "Be brief."}, "Ein Hund")
    [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'In English: Ein Hund'}]
    ```
    """

    def render(text: str, ref: str | None) -> str:
        return fill(template["user"], text, ref)

    messages = [{"role": "system", "content": template["system"]}] if template.get("system") else []
    for example in template.get("examples") or []:
        messages.append({"role": "user", "content": render(example["query"], example.get("reference"))})
        messages.append({"role": "assistant", "content": example["rewrite"]})
    messages.append({"role": "user", "content": render(query, reference)})
    return messages


def render_image_messages(template: dict, query: str, image=None) -> list[dict]:
    """The chat messages for one composed query to a vision-language rewriter, every content a list of parts (as
    processors and TRL's multimodal GRPO take them): the reference image is an image part where the user turn says
    `{reference}` (first in the turn when it has no such slot). With `image=None` the part is a placeholder
    (`{"type": "image"}`) that TRL fills from the dataset's `image` column; few-shot examples keep their reference
    captions as text.

    Example:
    ```python
    >>> from grape_hf.rewriting.prompting import render_image_messages
    >>> messages = render_image_messages({"user": "Reference: {reference}\\nEdit: {query}"}, "make it blue")
    >>> [part["type"] for part in messages[-1]["content"]]
    ['text', 'image', 'text']
    ```
    """
    marker = "\x00grape-image\x00"
    messages = render_messages(template, query, marker if needs_reference(template) else None)
    image_part = {"type": "image"} if image is None else {"type": "image", "image": image}
    structured = []
    for i, message in enumerate(messages):
        pieces = message["content"].split(marker) if i == len(messages) - 1 else [message["content"]]
        parts = []
        for j, piece in enumerate(pieces):
            if j:
                parts.append(dict(image_part))
            if piece:
                parts.append({"type": "text", "text": piece})
        if i == len(messages) - 1 and len(pieces) == 1:
            parts.insert(0, dict(image_part))
        structured.append({"role": message["role"], "content": parts})
    return structured


def render_prompt(tokenizer, template: dict, query: str, reference: str | None = None) -> str:
    """The prompt text the rewriter generates from: for a chat template, the tokenizer's chat template applied with
    the generation prompt added; for a completion template, [`render_completion`]'s plain text."""
    if template_format(template) == "completion":
        return render_completion(template, query, reference)
    messages = render_messages(template, query, reference)
    if tokenizer.chat_template is not None:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n\n".join(m["content"] for m in messages) + "\n\n"


def clean_rewrite(text: str) -> str:
    """Normalise a generated rewrite: strip whitespace and wrapping quotes, keep the first non-empty line.

    Example:
    ```python
    >>> from grape_hf.rewriting.prompting import clean_rewrite
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
