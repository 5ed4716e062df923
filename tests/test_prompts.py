"""Prompt templates (grape_hf.rewriting.prompts)."""

import pytest

from grape_hf.rewriting.prompts import PromptTemplate, available_shifts, get_prompt_template


def test_prompt_templates():
    assert set(available_shifts()) == {"multilingual", "long_form", "composed", "composed_image"}
    composed = get_prompt_template("composed")
    messages = composed.build_messages("make the circle green", reference="a red circle")
    assert "a red circle" in messages[-1]["content"] and "make the circle green" in messages[-1]["content"]
    with pytest.raises(ValueError, match="needs a reference caption"):
        composed.build_messages("make it green")
    with pytest.raises(ValueError, match="Unknown shift kind 'sideways'"):
        get_prompt_template("sideways")
    with pytest.raises(ValueError, match="must contain '\\{query\\}'"):
        PromptTemplate(user="no placeholder")
    own = get_prompt_template("multilingual", "Rewrite: {query}")
    assert own.build_messages("x") == [{"role": "user", "content": "Rewrite: x"}]
    assert PromptTemplate.from_dict(composed.to_dict()) == composed
    few = get_prompt_template(
        "multilingual", {"user": "DE: {query}", "examples": [{"query": "Hund", "rewrite": "dog"}]}
    )
    assert [m["role"] for m in few.build_messages("Katze")] == ["user", "assistant", "user"]
    assert few.build_messages("Katze")[:2] == [
        {"role": "user", "content": "DE: Hund"},
        {"role": "assistant", "content": "dog"},
    ]
    assert PromptTemplate.from_dict(few.to_dict()) == few


def test_a_missing_prompt_file_is_named(tmp_path):
    from grape_hf.rewriting.prompts import get_prompt_template

    with pytest.raises(ValueError, match="prompt template file '.*nope.json' does not exist"):
        get_prompt_template("composed", str(tmp_path / "nope.json"))


def test_composed_image_prompt_places_the_reference_image_in_the_user_turn():
    from grape_hf.rewriting.prompting import render_image_messages

    template = get_prompt_template("composed_image").to_dict()
    messages = render_image_messages(template, "make the circle green", image="IMAGE")
    assert [m["role"] for m in messages] == ["system", "user"]
    parts = messages[-1]["content"]
    assert [p["type"] for p in parts] == ["text", "image", "text"] and parts[1]["image"] == "IMAGE"
    assert parts[0]["text"] == "Here is a reference image:\n" and parts[2]["text"].endswith("make the circle green")
    # Without a {reference} slot the image opens the user turn; without an image it is TRL's placeholder.
    assert render_image_messages({"user": "Edit: {query}"}, "x") == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Edit: x"}]}
    ]
