"""The GRAPE training run: GRPO on a query rewriter, rewarded by a frozen retriever's ranking.

`main(script_args, training_args, model_args)` is what `recipes/grpo_grape.py` calls; it can be called from Python
with the three dataclasses too.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .configs import GRAPEScriptArguments
from .data import GRAPEData, load_grape_dataset
from .evaluation import evaluate_rewriters, markdown_table, save_results
from .models import cache_home, resolve_model_path
from .prompts import PromptTemplate, get_prompt_template, to_prompt_dataset
from .retrievers import load_retriever
from .rewards import get_reward_funcs
from .rewriter import QueryRewriter
from .rewriter_folder import RewriterConfig
from .scorer import CLIPRankScorer

logger = logging.getLogger(__name__)


def load_split(script_args: GRAPEScriptArguments, split: str, seed: int) -> GRAPEData:
    """Load one split of the run's data (Multi30k options apply to a Multi30k folder only)."""
    from .data import is_multi30k_dir

    train = split == script_args.dataset_train_split
    max_queries = script_args.max_train_samples if train else script_args.max_eval_samples
    if is_multi30k_dir(script_args.dataset_name):
        kwargs = {
            "task": script_args.multi30k_task,
            "query_lang": script_args.query_lang,
            "corpus_lang": script_args.corpus_lang,
            "max_images": script_args.max_train_images if train else script_args.max_eval_images,
        }
    else:
        kwargs = {
            "query_column": script_args.query_column,
            "target_column": script_args.target_column,
            "corpus_column": script_args.corpus_column,
        }
    return load_grape_dataset(script_args.dataset_name, split=split, max_queries=max_queries, seed=seed, **kwargs)


def build_scorer(retriever, data: GRAPEData, script_args: GRAPEScriptArguments) -> CLIPRankScorer:
    cache_dir = script_args.corpus_cache_dir or cache_home() / "corpus_embeddings"
    return CLIPRankScorer(retriever, data.corpus, cache_dir=cache_dir, sampled_negatives=script_args.sampled_negatives)


def evaluate_methods(methods: dict, template: PromptTemplate, data, scorer, script_args) -> dict:
    """Evaluate method name -> rewriter (or None for the original query) on the evaluation queries."""
    references = list(data.queries[script_args.reference_column]) if template.needs_reference else None
    results, rewrites = evaluate_rewriters(
        scorer,
        list(data.queries["query"]),
        list(data.queries["target_id"]),
        methods,
        references=references,
        batch_size=script_args.eval_batch_size,
    )
    return {"results": results, "rewrites": rewrites}


def main(script_args: GRAPEScriptArguments, training_args, model_args):
    """Train a GRAPE rewriter with GRPOTrainer, then evaluate it before/after and save a self-describing folder."""
    from transformers import AutoTokenizer, set_seed
    from trl import GRPOTrainer, get_peft_config

    set_seed(training_args.seed)
    template = get_prompt_template(script_args.shift, script_args.prompt_template)
    # Each process scores on its own device (under multi-GPU accelerate, not every rank on cuda:0).
    retriever = load_retriever(script_args.retriever, device=str(training_args.device))

    train_data = load_split(script_args, script_args.dataset_train_split, training_args.seed)
    train_scorer = build_scorer(retriever, train_data, script_args)
    reward_funcs = get_reward_funcs(
        train_scorer,
        script_args.reward_funcs,
        target_column="target_id",
        query_column="query",
        relative=script_args.relative_reward,
    )
    train_dataset = to_prompt_dataset(train_data, template, script_args.reference_column)

    model_path = resolve_model_path(model_args.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    training_args.model_init_kwargs = {
        **(training_args.model_init_kwargs or {}),
        "dtype": model_args.dtype or "float32",
    }
    push_to_hub = training_args.push_to_hub
    training_args.push_to_hub = False  # grape_hf pushes itself, with the GRAPE model card
    trainer = GRPOTrainer(
        model=model_path,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    is_main = trainer.accelerator.is_main_process
    say = trainer.accelerator.print

    evaluation = {}
    if script_args.evaluate_before_after:
        eval_data = load_split(script_args, script_args.dataset_test_split, training_args.seed)
        eval_scorer = build_scorer(retriever, eval_data, script_args)
        # Before training the LoRA update is zero, so the trainer's model is the zero-shot rewriter.
        rewriter = QueryRewriter(
            trainer.model, tokenizer, template, max_new_tokens=training_args.max_completion_length
        )
        before = evaluate_methods(
            {"original query": None, "zero-shot rewriter": rewriter}, template, eval_data, eval_scorer, script_args
        )

    trainer.train()
    say("Training completed.")
    output_dir = Path(training_args.output_dir)

    if script_args.evaluate_before_after:
        after = evaluate_methods({"GRAPE rewriter": rewriter}, template, eval_data, eval_scorer, script_args)
        results = {**before["results"], **after["results"]}
        rewrites = {**before["rewrites"], **after["rewrites"]}
        title = (
            f"{eval_data.name}: {len(eval_data.queries)} queries, corpus {len(eval_scorer)} ({script_args.retriever})"
        )
        evaluation = {
            "before": results["original query"],
            "zero_shot": results["zero-shot rewriter"],
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
        from .hub import save_rewriter

        model = trainer.accelerator.unwrap_model(trainer.model)
        for peft_config in getattr(model, "peft_config", {}).values():
            # Name the base model as the user gave it (a Hub id), not the local path it resolved to offline.
            peft_config.base_model_name_or_path = model_args.model_name_or_path
        rewriter_config = RewriterConfig(
            prompt=template.to_dict(),
            base_model=model_args.model_name_or_path,
            shift=script_args.shift,
            retriever=script_args.retriever,
            dataset=script_args.dataset_name,
            corpus=train_data.name,
            reward=",".join(script_args.reward_funcs) + (" (relative)" if script_args.relative_reward else ""),
            training=_training_summary(training_args, model_args),
            evaluation=evaluation,
        )
        # The layout pipeline("grape-rewrite"), remote code and `grape-hf push` read (an adapter goes to adapter/).
        save_rewriter(model, tokenizer, output_dir, rewriter_config)
        say(f"Rewriter saved to {output_dir}.")
        if push_to_hub:
            from .hub import push_rewriter

            push_rewriter(
                output_dir, training_args.hub_model_id or output_dir.name, private=training_args.hub_private_repo
            )
    return evaluation


def _training_summary(training_args, model_args) -> dict:
    keys = (
        "learning_rate",
        "max_steps",
        "num_train_epochs",
        "per_device_train_batch_size",
        "num_generations",
        "max_completion_length",
        "temperature",
        "beta",
        "loss_type",
        "scale_rewards",
        "seed",
    )
    summary = {k: getattr(training_args, k, None) for k in keys}
    if getattr(model_args, "use_peft", False):
        summary["lora"] = {
            "r": model_args.lora_r,
            "alpha": model_args.lora_alpha,
            "target_modules": model_args.lora_target_modules,
        }
    return summary
