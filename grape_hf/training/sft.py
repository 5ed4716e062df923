"""The warm start: supervised LoRA fine-tuning of the rewriter on (query, rewrite) pairs, with TRL's SFTTrainer.

`main(script_args, training_args, model_args)` is what `recipes/sft_grape.py` runs, open-r1 style. On a Multi30k folder
the pairs are task1's German descriptions and their professional English translations (train split); any other
dataset gives them as `query` and `rewrite` columns. The output is a rewriter folder, loadable by
`pipeline("grape-rewrite")` and the starting point of GRPO or self-distillation (`--init_rewriter`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..data import is_multi30k_dir
from ..rewriting.devices import dtype_name
from ..rewriting.prompts import PromptTemplate, get_prompt_template
from .configs import SFTScriptArguments
from .stages import Stopwatch, build_rewriter_config, last_checkpoint, load_policy, save_stage

logger = logging.getLogger(__name__)


def load_pairs(script_args: SFTScriptArguments, seed: int = 0, split: str | None = None):
    """The (query, rewrite) pairs of the warm start as a `datasets.Dataset` with `query` and `rewrite` columns: the
    `dataset_train_split` (up to `max_train_samples`), or `split` (up to `max_eval_samples`)."""
    from datasets import Dataset, load_dataset, load_from_disk

    limit = script_args.max_train_samples if split is None else script_args.max_eval_samples
    split = split or script_args.dataset_train_split
    if is_multi30k_dir(script_args.dataset_name):
        from ..data import load_multi30k

        data = load_multi30k(
            script_args.dataset_name,
            split=split,
            task=script_args.multi30k_task,
            query_lang=script_args.query_lang,
            corpus_lang=script_args.rewrite_lang,
        )
        pairs = Dataset.from_dict(
            {"query": list(data.queries["query"]), "rewrite": [data.corpus[i] for i in data.queries["target_id"]]}
        )
    else:
        path = Path(script_args.dataset_name)
        if path.is_dir() and (path / "dataset_dict.json").is_file():
            pairs = load_from_disk(str(path))[split]
        else:
            pairs = load_dataset(script_args.dataset_name, split=split)
        missing = [c for c in (script_args.query_column, script_args.rewrite_column) if c not in pairs.column_names]
        if missing:
            raise ValueError(
                f"{script_args.dataset_name!r} has no column {missing[0]!r} (columns: {pairs.column_names}); set "
                "--query_column and --rewrite_column."
            )
        pairs = pairs.select_columns([script_args.query_column, script_args.rewrite_column])
        pairs = pairs.rename_columns({script_args.query_column: "query", script_args.rewrite_column: "rewrite"})
    pairs = pairs.shuffle(seed=seed)
    if limit is not None:
        pairs = pairs.select(range(min(limit, len(pairs))))
    return pairs


def to_sft_dataset(pairs, template: PromptTemplate):
    """TRL's prompt-completion format: the rewriter's prompt, then the rewrite as the answer (conversational for a chat
    template; standard text ending in a newline for a completion template).

    `pairs` has `query` and `rewrite` columns, and `reference` when the template is a composed one.
    """

    def convert(example):
        if template.is_completion:  # standard format: the text, then the rewrite as its one line
            prompt = template.build_prompt(example["query"], example.get("reference"))
            return {"prompt": prompt, "completion": " " + example["rewrite"].strip() + "\n"}
        return {
            "prompt": template.build_messages(example["query"], example.get("reference")),
            "completion": [{"role": "assistant", "content": example["rewrite"]}],
        }

    return pairs.map(convert, remove_columns=pairs.column_names)


def eval_losses(log_history: list[dict]) -> list[list[float]]:
    """`[[step, eval_loss], ...]` from a trainer's `state.log_history`: whether the warm start had stopped
    improving."""
    return [[entry["step"], round(entry["eval_loss"], 4)] for entry in log_history if "eval_loss" in entry]


def main(script_args: SFTScriptArguments, training_args, model_args):
    """Warm-start a rewriter with SFTTrainer and save it as a rewriter folder."""
    from transformers import set_seed
    from trl import SFTTrainer, get_peft_config

    from ..rewriting.folder import load_tokenizer

    set_seed(training_args.seed)
    template = get_prompt_template(script_args.shift, script_args.prompt_template, script_args.prompt_format)
    pairs = load_pairs(script_args, seed=training_args.seed)
    evaluates = training_args.eval_strategy != "no"  # an IntervalStrategy, a str enum
    eval_pairs = (
        load_pairs(script_args, seed=training_args.seed, split=script_args.dataset_test_split) if evaluates else None
    )
    dtype = dtype_name(model_args.dtype, training_args.device)  # `auto`: bf16 where native, else fp32
    model, tokenizer_source = load_policy(model_args, dtype=dtype)
    tokenizer = load_tokenizer(tokenizer_source)
    training_args.model_init_kwargs = {
        **(training_args.model_init_kwargs or {}),
        "dtype": dtype,
    }
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=to_sft_dataset(pairs, template),
        eval_dataset=to_sft_dataset(eval_pairs, template) if eval_pairs is not None else None,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    with Stopwatch() as clock:
        trainer.train(resume_from_checkpoint=last_checkpoint(training_args))
    if trainer.accelerator.is_main_process:
        is_multi30k = is_multi30k_dir(script_args.dataset_name)
        languages = f"{script_args.query_lang}->{script_args.rewrite_lang} " if is_multi30k else ""
        config = build_rewriter_config(
            "sft",
            template,
            script_args,
            training_args,
            model_args,
            corpus=None,
            pairs=f"{script_args.dataset_name} ({len(pairs)} {languages}pairs)",
            train_seconds=clock.seconds,
            **({"eval_loss": eval_losses(trainer.state.log_history)} if evaluates else {}),
        )
        save_stage(trainer, tokenizer, training_args.output_dir, config, model_args)
        trainer.accelerator.print(f"Warm start saved to {training_args.output_dir}.")
    return trainer
