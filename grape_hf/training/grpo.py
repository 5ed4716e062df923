"""The GRAPE training run: GRPO on a query rewriter, rewarded by a frozen retriever's ranking.

`main(script_args, training_args, model_args)` is what `recipes/grpo_grape.py` calls (`training_args` a
[`~grape_hf.training.configs.GRAPEConfig`] or a plain `GRPOConfig`); it can be called from Python with the three
dataclasses too. It starts from the base model (with a fresh LoRA) or from an earlier stage's rewriter
folder (`--init_rewriter`, e.g. the [`~grape_hf.training.sft`] warm start), resumes from the last checkpoint in
`output_dir`, logs a held-out R@10 curve when `--curve_eval_steps` is set, and saves a rewriter folder with its model
card.

A vision-language policy (its config has a `vision_config`: LLaVA, Qwen2-VL, SmolVLM, ...) trains on composed
queries with the reference image in its prompt: the queries' `reference_column` must hold the images, the prompt is a
chat template with `{reference}` where the image goes (the built-in `composed_image`), and TRL's multimodal GRPO path
runs (grape_hf's CPU fast paths are text-only and step aside).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..evaluation import markdown_table, plot_curves, save_results, training_curves
from ..retrieval.retrievers import load_retriever
from ..rewriting.devices import dtype_name
from ..rewriting.folder import read_json
from ..rewriting.prompts import to_image_prompt_dataset, to_prompt_dataset
from ..rewriting.rewriter import QueryRewriter
from .configs import GRAPEScriptArguments
from .rewards import get_reward_funcs
from .stages import (
    Stopwatch,
    build_rewriter_config,
    build_scorer,
    evaluate_methods,
    last_checkpoint,
    load_policy,
    load_split,
    save_stage,
    stage_template,
)

logger = logging.getLogger(__name__)


def main(script_args: GRAPEScriptArguments, training_args, model_args):
    """Train a GRAPE rewriter with GRPOTrainer, then evaluate it before/after and save a self-describing folder."""
    from transformers import set_seed
    from trl import get_peft_config

    from ..rewriting.folder import load_tokenizer
    from ..rewriting.vision import is_vision_language, load_processor
    from .callbacks import RetrievalEvalCallback
    from .trainer import GRAPETrainer

    set_seed(training_args.seed)
    template = stage_template(script_args)
    # Each process scores on its own device (under multi-GPU accelerate, not every rank on cuda:0).
    retriever = load_retriever(script_args.retriever, device=str(training_args.device))

    train_data = load_split(script_args, script_args.dataset_train_split, training_args.seed)
    train_scorer = build_scorer(retriever, train_data, script_args, seed=training_args.seed)
    reward_funcs = get_reward_funcs(
        train_scorer,
        script_args.reward_funcs,
        target_column="target_id",
        query_column="query",
        relative=script_args.relative_reward,
    )
    # `dtype: auto` (the recipes' default): bf16 where the training device runs it natively, else fp32.
    dtype = dtype_name(model_args.dtype, training_args.device)
    model, tokenizer_source = load_policy(model_args, script_args.init_rewriter, dtype=dtype)
    vision = is_vision_language(read_json(model, "config.json") if isinstance(model, str) else model.config)
    if vision:  # the processor is the processing class; each prompt gets its reference image
        tokenizer = load_processor(tokenizer_source)
        train_dataset = to_image_prompt_dataset(train_data, template, script_args.reference_column)
    else:
        tokenizer = load_tokenizer(tokenizer_source)
        train_dataset = to_prompt_dataset(train_data, template, script_args.reference_column)
    if template.is_completion and hasattr(training_args, "stop_at_newline"):
        training_args.stop_at_newline = True  # a base model's rewrite is one line, in training as at inference

    training_args.model_init_kwargs = {
        **(training_args.model_init_kwargs or {}),
        "dtype": dtype,
        **({"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}),
    }
    push_to_hub = training_args.push_to_hub
    training_args.push_to_hub = False  # grape_hf pushes itself, with the GRAPE model card

    eval_data = eval_scorer = None
    if script_args.evaluate_before_after or script_args.curve_eval_steps:
        eval_data = load_split(script_args, script_args.dataset_test_split, training_args.seed)
        eval_scorer = build_scorer(retriever, eval_data, script_args)
    callbacks = []
    if script_args.curve_eval_steps:
        curve = eval_data.queries.shuffle(seed=training_args.seed + 1)
        curve = curve.select(range(min(script_args.curve_queries, len(curve))))
        references = list(curve[script_args.reference_column]) if template.needs_reference or vision else None
        callbacks.append(
            RetrievalEvalCallback(
                eval_scorer,
                curve["query"],
                curve["target_id"],
                tokenizer,
                template,
                eval_steps=script_args.curve_eval_steps,
                references=references,
                max_new_tokens=training_args.max_completion_length,
            )
        )
    trainer = GRAPETrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args) if isinstance(model, str) else None,
        callbacks=callbacks,
    )
    is_main = trainer.accelerator.is_main_process
    say = trainer.accelerator.print

    start_name = "zero-shot rewriter" if script_args.init_rewriter is None else "starting rewriter"
    if script_args.evaluate_before_after:
        # Before training the trainer's model is the starting rewriter (a fresh LoRA update is zero).
        rewriter = QueryRewriter(
            trainer.model, tokenizer, template, max_new_tokens=training_args.max_completion_length
        )
        before = evaluate_methods(
            {"original query": None, start_name: rewriter},
            template,
            eval_data,
            eval_scorer,
            script_args.eval_batch_size,
            reference_column=script_args.reference_column,
        )

    with Stopwatch() as clock:
        trainer.train(resume_from_checkpoint=last_checkpoint(training_args))
    say("Training completed.")
    output_dir = Path(training_args.output_dir)

    evaluation = {}
    if script_args.evaluate_before_after:
        after = evaluate_methods(
            {"GRAPE rewriter": rewriter},
            template,
            eval_data,
            eval_scorer,
            script_args.eval_batch_size,
            reference_column=script_args.reference_column,
        )
        compared = evaluate_methods(
            compare_rewriters(script_args.compare_rewriters, model_args.dtype),
            template,
            eval_data,
            eval_scorer,
            script_args.eval_batch_size,
            reference_column=script_args.reference_column,
        )
        results = {**before["results"], **after["results"], **compared["results"]}
        rewrites = {**before["rewrites"], **after["rewrites"], **compared["rewrites"]}
        title = (
            f"{eval_data.name}: {len(eval_data.queries)} queries, corpus {len(eval_scorer)} ({script_args.retriever})"
        )
        evaluation = {
            "before": results["original query"],
            ("zero_shot" if script_args.init_rewriter is None else "start"): results[start_name],
            "after": results["GRAPE rewriter"],
            "split": script_args.dataset_test_split,
            "dataset": eval_data.name,
            "num_queries": len(eval_data.queries),
            "corpus_size": len(eval_scorer),
        }
        if is_main:
            save_results(results, output_dir / "eval", name="before_after", title=title, rewrites=rewrites)
            say("\n" + title + "\n" + markdown_table(results) + "\n")

    if is_main:
        completions = training_args.per_device_train_batch_size * training_args.world_size
        curves = training_curves(trainer.state.log_history, completions_per_step=completions)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "curves.json").write_text(json.dumps(curves, indent=1) + "\n")
        if callbacks:
            plot_curves({",".join(script_args.reward_funcs): curves}, output_dir / "curves.png")
        config = build_rewriter_config(
            "grpo",
            template,
            script_args,
            training_args,
            model_args,
            corpus=train_data.name,
            evaluation=evaluation,
            reward=",".join(script_args.reward_funcs) + (" (relative)" if script_args.relative_reward else ""),
            train_seconds=clock.seconds,
        )
        # The layout pipeline("grape-rewrite"), remote code and `grape-hf push` read (an adapter goes to adapter/).
        save_stage(trainer, tokenizer, output_dir, config, model_args)
        say(f"Rewriter saved to {output_dir}.")
        if push_to_hub:
            from ..hub import push_rewriter

            push_rewriter(
                output_dir, training_args.hub_model_id or output_dir.name, private=training_args.hub_private_repo
            )
    return evaluation


def compare_rewriters(names: list[str], dtype=None) -> dict:
    """Row name -> [`QueryRewriter`] for `compare_rewriters`: a shipped rewriter's name (its row: "shipped <name>"), a
    folder (its row: the folder's name) or a Hub id, each loaded with the prompt it was trained with."""
    from ..rewriting.rewriter import is_shipped_rewriter, shipped_rewriter_path

    rows = {}
    for name in names:
        shipped = is_shipped_rewriter(name)
        source = str(shipped_rewriter_path(name)) if shipped else name
        row = f"shipped {name}" if shipped else (Path(name).name if Path(name).exists() else name)
        rows[row] = QueryRewriter.from_pretrained(source, dtype=dtype or "auto")
    return rows
