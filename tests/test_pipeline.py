"""pipeline("grape-rewrite"), loading rewriter folders, and rewrite-then-retrieve (GRAPERetriever)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
import torch

PROMPT = {
    "user": "Rewrite for the caption search engine:\n{query}",
    "system": "You rewrite queries.",
    "shift": "multilingual",
}
QUERIES = ["Ein Hund rennt.", "Zwei Männer spielen Schach in einem sonnigen Park.", "Rot"]
# The tiny random model's greedy choice is a newline or a special token; banning those gives visible rewrites.
VISIBLE = {"max_new_tokens": 6, "suppress_tokens": [0, 1, 2, 198]}


def rewriter_config(base: str) -> dict:
    return {
        "prompt": PROMPT,
        "base_model": base,
        "shift": "multilingual",
        "retriever": "sentence-transformers:all-MiniLM-L6-v2",
    }


@pytest.fixture(scope="module")
def saved(_tiny_llama, tmp_path_factory):
    """The tiny Llama saved as a full-model rewriter and as a LoRA-adapter rewriter (grape_hf.hub.save_rewriter)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grape_hf.hub import save_rewriter

    root = tmp_path_factory.mktemp("rewriters")
    tokenizer = AutoTokenizer.from_pretrained(_tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(_tiny_llama)
    save_rewriter(model, tokenizer, root / "full", rewriter_config(str(_tiny_llama)))
    torch.manual_seed(0)
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(_tiny_llama), lora)
    save_rewriter(peft_model, tokenizer, root / "adapter", rewriter_config(str(_tiny_llama)))
    peft_model.save_pretrained(root / "bare-adapter")  # what PEFT alone writes: adapter_config.json at the top
    tokenizer.save_pretrained(root / "bare-adapter")
    return {"full": root / "full", "adapter": root / "adapter", "bare-adapter": root / "bare-adapter"}


@pytest.fixture(scope="module")
def pipes(saved):
    from transformers import pipeline

    import grape_hf  # noqa: F401 - registers "grape-rewrite"

    return {kind: pipeline("grape-rewrite", model=str(saved[kind]), device="cpu") for kind in ("full", "adapter")}


def test_import_is_light_and_registers_when_transformers_pipelines_loads():
    code = (
        "import sys, grape_hf\n"
        "assert 'transformers' not in sys.modules and 'torch' not in sys.modules, 'import grape_hf got heavy'\n"
        "from transformers import pipeline\n"
        "from transformers.pipelines import PIPELINE_REGISTRY\n"
        "assert 'grape-rewrite' in PIPELINE_REGISTRY.get_supported_tasks()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_registers_at_once_when_transformers_pipelines_is_already_imported():
    from transformers.pipelines import PIPELINE_REGISTRY

    import grape_hf

    PIPELINE_REGISTRY.supported_tasks.pop("grape-rewrite", None)
    importlib.reload(grape_hf)
    assert "grape-rewrite" in PIPELINE_REGISTRY.get_supported_tasks()


@pytest.mark.parametrize("kind", ["full", "adapter"])
def test_loads_full_model_and_adapter_with_trained_prompt(pipes, kind):
    pipe = pipes[kind]
    assert type(pipe.model).__name__ == ("PeftModel" if kind == "adapter" else "LlamaForCausalLM")
    out = pipe("Ein Hund rennt.", **VISIBLE)
    assert set(out) == {"query", "rewrites", "rewrite", "prompt"}
    assert out["query"] == "Ein Hund rennt." and out["rewrite"] == out["rewrites"][0] and out["rewrite"]
    assert "Rewrite for the caption search engine:\nEin Hund rennt." in out["prompt"]
    assert "You rewrite queries." in out["prompt"] and out["prompt"].endswith("<|im_start|>assistant\n")


def test_batched_greedy_rewrites_match_one_at_a_time(pipes):
    pipe = pipes["adapter"]
    batched = pipe(QUERIES, batch_size=3, **VISIBLE)
    single = [pipe(q, **VISIBLE) for q in QUERIES]
    assert [b["rewrites"] for b in batched] == [s["rewrites"] for s in single]
    assert all(b["rewrite"] for b in batched)


def test_num_rewrites_are_sampled_per_query_in_batches(pipes):
    torch.manual_seed(0)
    outs = pipes["full"](QUERIES[:2], num_rewrites=3, batch_size=2, max_new_tokens=4)
    assert [len(o["rewrites"]) for o in outs] == [3, 3]
    assert [o["query"] for o in outs] == QUERIES[:2]
    with pytest.raises(ValueError, match="num_rewrites=3 needs sampling"):
        pipes["full"]("x", num_rewrites=3, do_sample=False)


def test_shift_selects_a_builtin_prompt_and_composed_needs_a_reference(pipes):
    pipe = pipes["full"]
    out = pipe("make it red", shift="composed", reference="a blue car", max_new_tokens=2)
    assert "a blue car" in out["prompt"] and "make it red" in out["prompt"]
    assert "Summarise" in pipe("x", shift="long_form", max_new_tokens=2)["prompt"]
    assert "Rewrite for the caption search engine" in pipe("x", shift="multilingual", max_new_tokens=2)["prompt"]
    with pytest.raises(ValueError, match="needs a reference caption for query 0"):
        pipe("make it red", shift="composed")
    kinds = r"\['composed', 'composed_image', 'long_form', 'multilingual'\]"
    with pytest.raises(ValueError, match=r"Unknown shift kind 'typo'.*" + kinds):
        pipe("x", shift="typo")


def test_bad_queries(pipes, monkeypatch):
    pipe = pipes["full"]
    with pytest.raises(TypeError, match="got int"):
        pipe(123)
    with pytest.raises(TypeError, match="Query 1 is a NoneType"):
        pipe(["ok", None])
    calls = []
    generate = pipe.model.generate
    monkeypatch.setattr(pipe.model, "generate", lambda *a, **k: calls.append(1) or generate(*a, **k))
    outs = pipe(["", "   "])
    assert outs == [
        {"query": "", "rewrites": [""], "rewrite": "", "prompt": None, "empty": True},
        {"query": "   ", "rewrites": ["   "], "rewrite": "   ", "prompt": None, "empty": True},
    ]
    assert calls == []
    mixed = pipe(["  ", "Ein Hund"], max_new_tokens=2)
    assert mixed[0]["empty"] and "empty" not in mixed[1] and len(calls) == 1


def test_folder_that_is_neither_model_nor_adapter(tmp_path):
    from transformers import pipeline

    from grape_hf.rewriting.pipeline import GRAPERewritePipeline

    (tmp_path / "checkpoint-10").mkdir()
    (tmp_path / "trainer_state.json").write_text("{}")
    with pytest.raises(ValueError, match=r"expected config.json.*adapter_config.json.*'checkpoint-10'"):
        GRAPERewritePipeline.from_pretrained(str(tmp_path))
    with pytest.raises((OSError, ValueError), match="config.json"):  # transformers reads it before grape_hf can
        pipeline("grape-rewrite", model=str(tmp_path))


def test_bare_peft_output_and_load_rewriter_read_both_layouts(saved, pipes):
    from grape_hf.rewriting.folder import load_rewriter
    from grape_hf.rewriting.pipeline import GRAPERewritePipeline

    bare = GRAPERewritePipeline.from_pretrained(str(saved["bare-adapter"]), device="cpu", prompt=PROMPT)
    assert bare("Ein Hund rennt.", **VISIBLE)["rewrites"] == pipes["adapter"]("Ein Hund rennt.", **VISIBLE)["rewrites"]
    model, tokenizer, config = load_rewriter(str(saved["adapter"]))
    assert type(model).__name__ == "PeftModel" and config.prompt == PROMPT


def test_save_pretrained_round_trips(pipes, tmp_path):
    from transformers import pipeline

    pipes["adapter"].save_pretrained(tmp_path / "again")
    again = pipeline("grape-rewrite", model=str(tmp_path / "again"), device="cpu")
    assert again("Rot", **VISIBLE) == pipes["adapter"]("Rot", **VISIBLE)


def test_rewrite_then_retrieve_with_rank_fusion(pipes, minilm):
    from grape_hf import GRAPERetriever, RankScorer
    from grape_hf.retrieval.search import reciprocal_rank_fusion

    corpus = ["a dog runs on the grass", "two men play chess in a park", "a red car in the snow", "a cat sleeps"]
    scorer = RankScorer(minilm, corpus, show_progress_bar=False)
    search = GRAPERetriever(pipes["full"], scorer, depth=4)
    result = search.search("Zwei Männer spielen Schach", k=2, **VISIBLE)
    scores, ids = scorer.search(["Zwei Männer spielen Schach", result["rewrite"]], k=2)
    assert result["original"]["ids"] == ids[0].tolist() and result["rewritten"]["ids"] == ids[1].tolist()
    assert result["original"]["scores"] == pytest.approx(scores[0].tolist())

    torch.manual_seed(0)
    fused = search.search(["Zwei Männer spielen Schach"], k=3, ensemble=2, max_new_tokens=4)[0]
    assert len(fused["rewrites"]) == 2 and len(fused["ensemble"]["ids"]) == 3
    rankings = scorer.search(["Zwei Männer spielen Schach", *fused["rewrites"]], k=4)[1].tolist()
    expected = reciprocal_rank_fusion(rankings)[:3]
    assert fused["ensemble"]["ids"] == [d for d, _ in expected]
    assert fused["ensemble"]["scores"] == pytest.approx([s for _, s in expected])
    assert reciprocal_rank_fusion([[3, 1, 2], [1, 3, 0]], rrf_k=0) == [(3, 1.5), (1, 1.5), (2, 1 / 3), (0, 1 / 3)]


def test_pipeline_and_query_rewriter_share_prompts_and_rewrites(pipes):
    """One prompt rendering and one generation path: the pipeline and QueryRewriter give the same prompt and text."""
    from grape_hf.rewriting.prompts import PromptTemplate
    from grape_hf.rewriting.rewriter import QueryRewriter

    pipe = pipes["full"]
    few_shot = {
        **PROMPT,
        "examples": [{"query": "Eine Katze.", "rewrite": "A cat."}, {"query": "Rot", "rewrite": "Red"}],
    }
    for prompt in (PROMPT, few_shot, {"user": "Edit {reference} with {query}", "shift": "composed"}):
        library = QueryRewriter(pipe.model, pipe.tokenizer, PromptTemplate.from_dict(prompt))
        reference = "a cat" if "{reference}" in prompt["user"] else None
        ours = pipe("Ein Hund", prompt=prompt, reference=reference, max_new_tokens=1)["prompt"]
        assert ours == library.prompts(["Ein Hund"], [reference])[0]
    library = QueryRewriter(pipe.model, pipe.tokenizer, PromptTemplate.from_dict(PROMPT), max_new_tokens=8)
    queries = ["Ein Hund rennt.", "Zwei Männer spielen Schach im Park."]
    piped = [out["rewrites"] for out in pipe(queries, batch_size=2, prompt=PROMPT, max_new_tokens=8)]
    assert library.rewrite(queries, batch_size=2) == piped


def test_query_rewriter_refuses_a_bare_string(pipes):
    from grape_hf.rewriting.rewriter import QueryRewriter

    library = QueryRewriter(pipes["full"].model, pipes["full"].tokenizer)
    with pytest.raises(TypeError, match="Pass \\[query\\]"):
        library.rewrite("Ein Hund rennt.")
