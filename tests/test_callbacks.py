"""The R@10 curve callback (grape_hf.training.callbacks), driven through the hooks a Trainer calls."""

import pytest


def test_retrieval_eval_callback_measures_at_start_every_n_steps_and_end(tiny_llama_dir, minilm):
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerControl, TrainerState, TrainingArguments

    from grape_hf import RankScorer
    from grape_hf.metrics import METRICS
    from grape_hf.rewriting.prompts import get_prompt_template
    from grape_hf.training.callbacks import RetrievalEvalCallback

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    corpus = ["a dog runs on the grass", "two men play chess", "a red car in the snow"]
    scorer = RankScorer(minilm, corpus, show_progress_bar=False)
    callback = RetrievalEvalCallback(
        scorer,
        ["Ein Hund", "Zwei Männer"],
        [0, 1],
        tokenizer,
        get_prompt_template("multilingual"),
        eval_steps=2,
        max_new_tokens=4,
    )
    args, state, control = TrainingArguments(output_dir="unused", report_to="none"), TrainerState(), TrainerControl()
    model.train()
    callback.on_train_begin(args, state, control, model=model)
    for step in range(1, 6):
        state.global_step = step
        callback.on_step_end(args, state, control, model=model)
    callback.on_train_end(args, state, control, model=model)
    callback.on_train_end(args, state, control, model=model)  # the same step is measured once

    assert [step for step, _ in callback.history] == [0, 2, 4, 5]
    assert model.training  # put back in training mode after each measurement
    for _, metrics in callback.history:
        assert set(METRICS) <= set(metrics) and 1 <= metrics["mean_rank"] <= len(corpus)
    logged = [entry for entry in state.log_history if "eval_retrieval/R@10" in entry]
    assert [entry["step"] for entry in logged] == [0, 2, 4, 5]
    assert logged[-1]["eval_retrieval/MRR"] == pytest.approx(callback.history[-1][1]["MRR"])
