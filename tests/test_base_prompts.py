"""Base-model prompts: plain-text few-shot completion, one code path in training, QueryRewriter and the pipeline."""

import pytest
import torch

from grape_hf.rewriting.prompts import PromptTemplate, get_prompt_template

NEWLINE_BIAS = {"sequence_bias": {(107,): 50.0}}  # Gemma's "\n" token: a random model then writes it first


def test_completion_template_renders_plain_text():
    template = get_prompt_template("multilingual", prompt_format="completion")
    assert template.is_completion and template.add_special_tokens and template.format == "completion"
    text = template.build_prompt("Zwei Männer {reference} spielen.")
    lines = text.split("\n")
    assert lines[0].startswith("Translate") and "German" not in text  # no source language named
    assert lines[-2:] == ["Text: Zwei Männer {reference} spielen.", "English:"]  # braces in a query kept
    assert "English: A brown dog runs across a meadow." in lines
    chat = get_prompt_template("multilingual")
    assert chat.format == "chat" and not chat.add_special_tokens and isinstance(chat.build_prompt("x"), list)
    assert PromptTemplate.from_dict(template.to_dict()) == template  # the format survives grape_rewriter.json
    composed = get_prompt_template("composed", prompt_format="completion")
    assert composed.build_prompt("make it red", "a blue cube").endswith(
        "Reference: a blue cube\nEdit: make it red\nEdited:"
    )
    with pytest.raises(ValueError, match="format must be one of"):
        get_prompt_template("multilingual", prompt_format="instruct")
    with pytest.raises(ValueError, match="format must be one of"):
        PromptTemplate(user="{query}", format="plain")


def test_completion_prompts_reach_trl_as_standard_text(multi30k_path):
    from grape_hf.data import load_multi30k
    from grape_hf.rewriting.prompts import to_prompt_dataset
    from grape_hf.training.sft import to_sft_dataset

    data = load_multi30k(multi30k_path, split="validation", max_images=3)
    template = get_prompt_template("multilingual", prompt_format="completion")
    rows = to_prompt_dataset(data, template)
    assert isinstance(rows[0]["prompt"], str) and rows[0]["prompt"].endswith(f"Text: {rows[0]['query']}\nEnglish:")
    pairs = data.queries.select(range(1)).map(lambda r: {"rewrite": "A dog."})
    sft = to_sft_dataset(pairs.select_columns(["query", "rewrite"]), template)
    assert sft[0]["completion"] == " A dog.\n" and isinstance(sft[0]["prompt"], str)


def test_reward_scores_the_line_inference_keeps(minilm):
    from grape_hf import GRAPERewardFunction, RankScorer

    reward = GRAPERewardFunction(RankScorer(minilm, ["a dog runs", "a red car"], show_progress_bar=False))
    clean, rambling = reward(completions=[" a dog runs", ' "a dog runs"\na red car a red car'], target_id=[0, 0])
    assert clean == rambling  # the reward sees "a dog runs" in both, as the pipeline would return it


def test_gemma_tokenizer_stops_and_bos(gemma_tokenizer_dir):
    from transformers import AutoTokenizer

    from grape_hf.rewriting.generation import newline_token_ids, stop_token_ids

    tokenizer = AutoTokenizer.from_pretrained(gemma_tokenizer_dir)
    assert tokenizer.chat_template is None  # a base model: completion prompts only
    ids = newline_token_ids(tokenizer)
    assert {107, 108} <= set(ids) and all("\n" in tokenizer.decode([i]) for i in ids)
    assert stop_token_ids(tokenizer, True)[0] == tokenizer.eos_token_id
    assert stop_token_ids(tokenizer, False) == [tokenizer.eos_token_id]
    prompt = get_prompt_template("multilingual", prompt_format="completion").build_prompt("Ein Hund.")
    encoded = tokenizer(prompt, add_special_tokens=True).input_ids
    assert encoded[0] == tokenizer.bos_token_id and encoded.count(tokenizer.bos_token_id) == 1


def test_query_rewriter_on_a_base_gemma_keeps_bos_and_stops_at_the_newline(tiny_gemma_dir):
    from grape_hf.rewriting.rewriter import QueryRewriter

    template = get_prompt_template("multilingual", prompt_format="completion")
    rewriter = QueryRewriter.from_pretrained(str(tiny_gemma_dir), template=template, dtype="float32")
    seen = []
    hook = rewriter.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"].clone()), with_kwargs=True
    )
    out = rewriter.rewrite(["Ein Hund rennt.", "Un chat dort sur le canapé."], max_new_tokens=6, **NEWLINE_BIAS)
    hook.remove()
    first = seen[0]  # left padding, then <bos> opens the prompt as TRL tokenizes it in training
    assert ((first == rewriter.tokenizer.bos_token_id).sum(dim=1) == 1).all()
    assert out == [[""], [""]]  # the newline ended each rewrite at once (it is the first token)
    without = rewriter.rewrite(["Ein Hund rennt."], max_new_tokens=6)
    assert len(without) == 1 and "\n" not in without[0][0]


def test_pipeline_serves_a_base_model_rewriter_like_training(tiny_gemma_dir):
    from transformers import pipeline

    import grape_hf  # noqa: F401 - registers "grape-rewrite"

    rewriter = pipeline("grape-rewrite", model=str(tiny_gemma_dir), device="cpu", prompt_format="completion")
    out = rewriter(["Ein Hund rennt.", "Un chien court."], max_new_tokens=5, batch_size=2)
    assert out[0]["prompt"].endswith("Text: Ein Hund rennt.\nEnglish:") and "\n" not in out[0]["rewrite"]
    biased = rewriter("Ein Hund rennt.", max_new_tokens=5, **NEWLINE_BIAS)
    assert biased["rewrite"] == ""
    with pytest.raises(ValueError, match="format must be one of"):
        rewriter("x", prompt_format="instruct")


def test_grpo_on_a_base_gemma_ends_completions_at_the_newline(tiny_gemma_dir, minilm, multi30k_path, tmp_path):
    """The no-template path through GRPOTrainer on the tiny Gemma 3 (sliding + full attention, GQA), merged
    fast sampling: completions end at their newline, and LoRA trains."""
    from peft import LoraConfig

    from grape_hf import GRAPERewardFunction, RankScorer
    from grape_hf.data import load_multi30k
    from grape_hf.rewriting.prompts import to_prompt_dataset
    from grape_hf.training.configs import GRAPEConfig
    from grape_hf.training.trainer import GRAPETrainer

    data = load_multi30k(multi30k_path, split="validation", max_images=12)
    template = get_prompt_template("multilingual", prompt_format="completion")
    seen = []

    class Recorder(GRAPERewardFunction):
        def __call__(self, prompts=None, completions=None, **kwargs):
            seen.extend(completions)
            return super().__call__(prompts=prompts, completions=completions, **kwargs)

    reward = Recorder(RankScorer(minilm, data.corpus, show_progress_bar=False), reward="rank")
    reward.__name__ = "grape_rank"
    args = GRAPEConfig(
        output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, save_strategy="no", seed=0,
        gradient_checkpointing=False, merged_generation=True, max_steps=2, per_device_train_batch_size=3,
        num_generations=3, max_completion_length=6, learning_rate=5e-2, stop_at_newline=True,
        generation_kwargs={"sequence_bias": {(107,): 3.0}},
    )  # fmt: skip
    trainer = GRAPETrainer(
        model=str(tiny_gemma_dir),
        reward_funcs=[reward],
        args=args,
        train_dataset=to_prompt_dataset(data, template),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    assert 107 in trainer.generation_config.eos_token_id
    lora = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    assert seen and all(isinstance(c, str) for c in seen)
    assert all("\n" not in c.rstrip("\n") for c in seen)  # nothing generated after a newline
    assert any(not torch.equal(lora[n], p) for n, p in trainer.model.named_parameters() if n in lora)
