"""What every training stage shares: its data, its scorer, the policy it starts from, resuming, and what it saves.

The stages ([`~grape_hf.training.sft.main`] warm start, [`~grape_hf.training.distill.main`] rank-filtered
self-distillation and [`~grape_hf.training.grpo.main`] GRPO) are open-r1-style `main(script_args, training_args,
model_args)` functions. Each starts from a base model or from a previous stage's rewriter folder (`init_rewriter`),
resumes from its last checkpoint, and ends by saving a rewriter folder whose `grape_rewriter.json` is built here, in
one place.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from ..data import GRAPEData, is_multi30k_dir, load_grape_dataset
from ..evaluation import evaluate_rewriters
from ..models import cache_home, resolve_model_path
from ..retrieval.scorer import RankScorer
from ..rewriting.folder import GRAPERewriterLoader, RewriterConfig, read_json, register_config
from ..rewriting.prompts import PromptTemplate, get_prompt_template

logger = logging.getLogger(__name__)

TRAINING_KEYS = (
    "learning_rate",
    "max_steps",
    "num_train_epochs",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_generations",
    "generation_batch_size",
    "steps_per_generation",
    "num_iterations",
    "max_completion_length",
    "temperature",
    "beta",
    "loss_type",
    "scale_rewards",
    "seed",
)


def stage_template(script_args) -> PromptTemplate:
    """The prompt: `--prompt_template`, else the one the `--init_rewriter` was trained with, else the shift's."""
    if script_args.prompt_template is None and getattr(script_args, "init_rewriter", None):
        previous = RewriterConfig.load(script_args.init_rewriter)
        if previous is not None:
            return PromptTemplate.from_dict(previous.prompt)
    return get_prompt_template(script_args.shift, script_args.prompt_template)


def load_split(script_args, split: str, seed: int, corpus_index: int = 1) -> GRAPEData:
    """Load one split of a run's data (Multi30k options apply to a Multi30k folder only; `corpus_index` picks which of
    task2's five descriptions make the corpus)."""
    train = split == script_args.dataset_train_split
    max_queries = script_args.max_train_samples if train else script_args.max_eval_samples
    if is_multi30k_dir(script_args.dataset_name):
        kwargs = {
            "task": script_args.multi30k_task,
            "query_lang": script_args.query_lang,
            "corpus_lang": script_args.corpus_lang,
            "max_images": script_args.max_train_images if train else script_args.max_eval_images,
            **({"corpus_index": corpus_index} if corpus_index != 1 else {}),
        }
    else:
        kwargs = {
            "query_column": script_args.query_column,
            "target_column": script_args.target_column,
            "corpus_column": script_args.corpus_column,
        }
    return load_grape_dataset(script_args.dataset_name, split=split, max_queries=max_queries, seed=seed, **kwargs)


def build_scorer(retriever, data: GRAPEData, script_args, seed: int | None = None) -> RankScorer:
    """The frozen retriever over `data`'s corpus, embedded once and cached in grape_hf's cache folder.

    Given the run's `seed`, `data` is its training split and `reward_corpus_descriptions` > 1, each image of the
    corpus is the mean of its first N descriptions' embeddings (each description's corpus cached on its own).
    """
    cache_dir = script_args.corpus_cache_dir or cache_home() / "corpus_embeddings"
    scorer = RankScorer(retriever, data.corpus, cache_dir=cache_dir, sampled_negatives=script_args.sampled_negatives)
    views = getattr(script_args, "reward_corpus_descriptions", 1)
    if seed is None or views == 1:
        return scorer
    if not (is_multi30k_dir(script_args.dataset_name) and script_args.multi30k_task == "task2"):
        raise ValueError(
            f"reward_corpus_descriptions={views} needs Multi30k task2 (five descriptions per image); "
            f"{script_args.dataset_name!r} ({script_args.multi30k_task}) has one per item: leave it at 1."
        )
    import torch

    embeddings = [scorer.corpus_embeddings]
    for index in range(2, views + 1):
        view = load_split(script_args, script_args.dataset_train_split, seed, corpus_index=index)
        embeddings.append(RankScorer(retriever, view.corpus, cache_dir=cache_dir).corpus_embeddings)
    return RankScorer.from_embeddings(
        retriever, torch.stack(embeddings).mean(dim=0), sampled_negatives=script_args.sampled_negatives
    )


def evaluate_methods(methods: dict, template: PromptTemplate, data: GRAPEData, scorer, batch_size: int = 32) -> dict:
    """Evaluate method name -> rewriter (or `None` for the original query) on `data`'s queries."""
    references = list(data.queries["reference"]) if template.needs_reference else None
    results, rewrites = evaluate_rewriters(
        scorer,
        list(data.queries["query"]),
        list(data.queries["target_id"]),
        methods,
        references=references,
        batch_size=batch_size,
    )
    return {"results": results, "rewrites": rewrites}


def load_policy(
    model_args, init_rewriter: str | None = None, dtype: Any = None, trainable: bool = True, device: Any = None
):
    """The model a stage trains: the base model (`model_args.model_name_or_path`, resolved offline), or a previous
    stage's rewriter folder with its LoRA adapter loaded trainable. `dtype` `"auto"` (or `None`) resolves for
    `device` ([`~grape_hf.rewriting.devices.resolve_dtype`]: bf16 where it is native, else fp32).

    Returns:
        `tuple`: `(model or model path, tokenizer source)`: a path when TRL should build the model (and add the
        stage's own LoRA), a [`~peft.PeftModel`] when training continues an adapter.
    """
    from transformers import AutoModelForCausalLM

    from ..rewriting.devices import resolve_dtype

    base_path = resolve_model_path(model_args.model_name_or_path)
    if init_rewriter is None:
        return base_path, base_path
    folder = str(init_rewriter)
    register_config()  # its tokenizer is read from the folder, whose config.json is grape_hf's pointer
    subfolder = GRAPERewriterLoader.adapter_location(folder)
    if subfolder is None:  # a full model: train it (with the stage's own LoRA, if any)
        return folder, folder
    from peft import PeftConfig, PeftModel

    adapter_dir = os.path.join(folder, subfolder) if subfolder else folder
    base = resolve_model_path(PeftConfig.from_pretrained(adapter_dir).base_model_name_or_path)
    attention = getattr(model_args, "attn_implementation", None)
    model = AutoModelForCausalLM.from_pretrained(
        base, dtype=resolve_dtype(dtype, device), **({"attn_implementation": attention} if attention else {})
    )
    model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=trainable)
    tokenizer_source = folder if read_json(folder, "tokenizer_config.json") else base
    return model, tokenizer_source


def last_checkpoint(training_args) -> str | None:
    """The checkpoint to resume from: `--resume_from_checkpoint`, else the newest `checkpoint-*` in `output_dir`."""
    from transformers.trainer_utils import get_last_checkpoint

    if training_args.resume_from_checkpoint:
        return training_args.resume_from_checkpoint
    if os.path.isdir(training_args.output_dir):
        checkpoint = get_last_checkpoint(training_args.output_dir)
        if checkpoint is not None:
            logger.info("Resuming from %s.", checkpoint)
        return checkpoint
    return None


def training_summary(training_args, model_args, **extra) -> dict:
    """The settings a stage records in `grape_rewriter.json` (`training`)."""
    summary = {k: getattr(training_args, k) for k in TRAINING_KEYS if getattr(training_args, k, None) is not None}
    if getattr(model_args, "use_peft", False):
        summary["lora"] = {
            "r": model_args.lora_r,
            "alpha": model_args.lora_alpha,
            "target_modules": model_args.lora_target_modules,
        }
    return {**summary, **{k: v for k, v in extra.items() if v is not None}}


def build_rewriter_config(
    stage: str,
    template: PromptTemplate,
    script_args,
    training_args,
    model_args,
    corpus: str | None = None,
    evaluation: dict | None = None,
    reward: str | None = None,
    **extra,
) -> RewriterConfig:
    """The `grape_rewriter.json` of a stage's output: the prompt, the base model as the user named it, the retriever,
    the data, the stage and its settings (with the folder it started from), and the evaluation numbers."""
    init = getattr(script_args, "init_rewriter", None)
    previous = RewriterConfig.load(init) if init else None
    stages = [*((previous.training or {}).get("stages", []) if previous else []), stage]
    return RewriterConfig(
        prompt=template.to_dict(),
        base_model=(previous.base_model if previous and previous.base_model else model_args.model_name_or_path),
        shift=template.shift,
        retriever=getattr(script_args, "retriever", None) or (previous.retriever if previous else None),
        dataset=script_args.dataset_name,
        corpus=corpus,
        reward=reward,
        training=training_summary(training_args, model_args, stage=stage, stages=stages, init_rewriter=init, **extra),
        evaluation=evaluation or {},
    )


def save_stage(trainer, tokenizer, output_dir: str | Path, rewriter_config: RewriterConfig, model_args) -> Path:
    """Save the trained rewriter (main process only): the layout `pipeline("grape-rewrite")` and remote code read."""
    from ..hub import save_rewriter

    model = trainer.accelerator.unwrap_model(trainer.model)
    if "ref" in getattr(model, "peft_config", {}):  # the frozen copy GRPO / DPO trained against: not the rewriter
        model.delete_adapter("ref")
    for peft_config in getattr(model, "peft_config", {}).values():
        # Name the base model as the user gave it (a Hub id), not the local path it resolved to offline.
        peft_config.base_model_name_or_path = rewriter_config.base_model or model_args.model_name_or_path
    return save_rewriter(model, tokenizer, output_dir, rewriter_config)


def stage_minutes(folder: str | Path) -> float:
    """The wall-clock minutes a stage's rewriter folder records: its `train_seconds`, or for self-distillation the
    sampling and fine-tuning seconds of its rounds (`history`)."""
    training = RewriterConfig.load(folder).training
    seconds = training.get("train_seconds") or sum(
        h.get("sample_seconds", 0) + h.get("train_seconds", 0) for h in training.get("history", [])
    )
    return round(seconds / 60, 1)


class Stopwatch:
    """Wall-clock seconds of a stage (`seconds`), recorded as `train_seconds` in its `grape_rewriter.json`."""

    def __enter__(self) -> Stopwatch:
        self.start = time.time()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = round(time.time() - self.start, 1)
