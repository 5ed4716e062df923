"""Prompt rendering: a query (and a reference, for composed queries) into the rewriter's chat prompt, and a generated
rewrite back into a clean query.

Part of a saved rewriter folder's remote code (see [`~grape_hf.rewriting.folder.add_pipeline_files`]): it imports
nothing but the standard library.
"""

from __future__ import annotations


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
