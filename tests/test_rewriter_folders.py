"""Rewriter folders as users hand them over: incomplete, edited or odd, each refused with the fix or given the
documented result (issue 27). Real tiny models, real folders written by grape_hf and PEFT."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

PROMPT = {"user": "Rewrite for the caption search engine:\n{query}", "shift": "multilingual"}


@pytest.fixture(scope="module")
def adapter_folder(_tiny_llama, tmp_path_factory):
    """A LoRA rewriter folder as grape_hf saves it (adapter/ under a pointer config.json, grape_rewriter.json)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grape_hf.hub import save_rewriter

    torch.manual_seed(0)
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(_tiny_llama), lora)
    folder = tmp_path_factory.mktemp("rewriters") / "adapter"
    save_rewriter(model, AutoTokenizer.from_pretrained(_tiny_llama), folder, {"prompt": PROMPT})
    return folder


@pytest.fixture
def folder(adapter_folder, tmp_path):
    """A private copy of the adapter folder, for a test to damage."""
    return shutil.copytree(adapter_folder, tmp_path / "rewriter")


def edit_config(folder, **changes):
    path = folder / "grape_rewriter.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("damage", ["missing", "null"])
def test_adapter_folder_that_does_not_state_its_prompt_is_refused(folder, damage):
    from transformers import pipeline

    import grape_hf  # noqa: F401 - registers "grape-rewrite"
    from grape_hf.rewriting.rewriter import QueryRewriter

    if damage == "missing":
        (folder / "grape_rewriter.json").unlink()
        said = "has no grape_rewriter.json"
    else:
        edit_config(folder, prompt=None)
        said = 'says "prompt": null'
    with pytest.raises(ValueError, match=f"is a trained adapter but {said}.*Restore grape_rewriter.json"):
        pipeline("grape-rewrite", model=str(folder), device="cpu")
    with pytest.raises(ValueError, match=f"{said}.*template="):
        QueryRewriter.from_pretrained(str(folder))
    # Chosen explicitly, the prompt is the user's: no refusal.
    pipe = pipeline("grape-rewrite", model=str(folder), device="cpu", shift="long_form")
    assert "Summarise" in pipe("Ein Hund", max_new_tokens=1)["prompt"]


def test_prompt_written_as_a_string_names_the_file_and_the_fix(folder):
    from transformers import pipeline

    import grape_hf  # noqa: F401

    edit_config(folder, prompt="Translate: {query}")
    with pytest.raises(ValueError, match=r"\"prompt\" of grape_rewriter.json in .*'Translate: \{query\}'.*\{\"user\""):
        pipeline("grape-rewrite", model=str(folder), device="cpu")


def test_plain_model_without_rewriter_config_warns_which_prompt_it_uses(_tiny_llama, caplog):
    from transformers import pipeline

    import grape_hf  # noqa: F401

    with caplog.at_level("WARNING", logger="grape_hf.rewriting.pipeline"):
        pipe = pipeline("grape-rewrite", model=str(_tiny_llama), device="cpu")
    assert "has no grape_rewriter.json: rewriting with the built-in 'multilingual' prompt" in caplog.text
    assert pipe.template()["shift"] == "multilingual"


def test_reference_for_a_prompt_without_a_reference_slot_is_refused(adapter_folder):
    from transformers import pipeline

    import grape_hf  # noqa: F401
    from grape_hf.rewriting.rewriter import QueryRewriter

    pipe = pipeline("grape-rewrite", model=str(adapter_folder), device="cpu")
    with pytest.raises(ValueError, match=r"reference= was given.*no '\{reference\}' slot.*shift='composed'"):
        pipe("make it red", reference="a blue car")
    rewriter = QueryRewriter.from_pretrained(str(adapter_folder), max_new_tokens=1)
    with pytest.raises(ValueError, match="references were given.*no '{reference}' slot"):
        rewriter.rewrite(["make it red"], references=["a blue car"])


def test_adapter_missing_tensors_is_refused(folder):
    from safetensors.torch import load_file, save_file

    from grape_hf.rewriting.folder import load_rewriter

    weights = folder / "adapter" / "adapter_model.safetensors"
    tensors = load_file(weights)
    kept = dict(list(sorted(tensors.items()))[:2])
    save_file(kept, weights)
    with pytest.raises(ValueError, match=f"holds 2 of the {len(tensors)} tensors.*copy or save the folder again"):
        load_rewriter(str(folder))


def test_adapter_weights_file_missing_names_the_folder(folder):
    from grape_hf.rewriting.folder import load_rewriter

    (folder / "adapter" / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"adapter folder .*adapter' needs .*adapter_model.safetensors"):
        load_rewriter(str(folder))


def test_blank_queries_come_back_as_they_are(adapter_folder, monkeypatch):
    from transformers import pipeline

    import grape_hf  # noqa: F401
    from grape_hf.rewriting.rewriter import QueryRewriter

    pipe = pipeline("grape-rewrite", model=str(adapter_folder), device="cpu")
    calls = []
    generate = pipe.model.generate
    monkeypatch.setattr(pipe.model, "generate", lambda *a, **k: calls.append(1) or generate(*a, **k))
    assert pipe("\u200b") == {"query": "\u200b", "rewrites": ["\u200b"], "rewrite": "\u200b", "prompt": None,
                              "empty": True}  # fmt: skip
    assert calls == []
    rewriter = QueryRewriter.from_pretrained(str(adapter_folder), max_new_tokens=2)
    out = rewriter.rewrite(["\ufeff\u200d ", "Ein Hund"], num_rewrites=2, do_sample=True)
    assert out[0] == ["\ufeff\u200d ", "\ufeff\u200d "] and len(out[1]) == 2


def test_query_past_the_context_is_refused_before_generating(adapter_folder):
    from transformers import pipeline

    import grape_hf  # noqa: F401
    from grape_hf.rewriting.rewriter import QueryRewriter

    long_query = "Ein Hund rennt über eine Wiese. " * 100  # ~900 tokens; the tiny model has 512 positions
    pipe = pipeline("grape-rewrite", model=str(adapter_folder), device="cpu")
    with pytest.raises(ValueError, match=r"3,200 characters\) makes a prompt of [\d,]+ tokens.*512 positions"):
        pipe(long_query)
    rewriter = QueryRewriter.from_pretrained(str(adapter_folder), max_new_tokens=2)
    with pytest.raises(ValueError, match="passes the model's 512 positions. Shorten the query"):
        rewriter.rewrite(["Ein Hund", long_query])


def test_base_model_remote_code_is_never_run_nor_asked_about(folder, _tiny_llama, tmp_path):
    from grape_hf.rewriting.folder import load_rewriter

    base = shutil.copytree(_tiny_llama, tmp_path / "base-with-code")
    marker = tmp_path / "ran"
    (base / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    config = json.loads((base / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (base / "config.json").write_text(json.dumps(config))
    adapter_config = folder / "adapter" / "adapter_config.json"
    adapter = json.loads(adapter_config.read_text())
    adapter["base_model_name_or_path"] = str(base)
    adapter_config.write_text(json.dumps(adapter))
    model, _, _ = load_rewriter(str(folder))  # with stdin closed, an interactive prompt would raise here
    assert type(model.get_base_model()).__name__ == "LlamaForCausalLM"
    assert not marker.exists()


def test_adapter_folder_without_tokenizer_takes_its_base_models(folder, _tiny_llama):
    """A shipped adapter may leave the tokenizer to its base model (Gemma's is 32 MB): both loaders take the base's."""
    from transformers import AutoTokenizer, pipeline

    import grape_hf  # noqa: F401
    from grape_hf.rewriting.rewriter import QueryRewriter

    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        (folder / name).unlink(missing_ok=True)
    base = AutoTokenizer.from_pretrained(_tiny_llama)
    pipe = pipeline("grape-rewrite", model=str(folder), device="cpu")
    rewriter = QueryRewriter.from_pretrained(str(folder), max_new_tokens=3)
    assert pipe.tokenizer.get_vocab() == rewriter.tokenizer.get_vocab() == base.get_vocab()
    suppress = {"suppress_tokens": [0, 1, 2, 198]}
    assert [pipe("Ein Hund", max_new_tokens=3, **suppress)["rewrite"]] == rewriter.rewrite(["Ein Hund"], **suppress)[0]
