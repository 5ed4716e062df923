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

from ..data import GRAPEData, is_multi30k_dir, load_grape_dataset, load_paper_split
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
    return get_prompt_template(
        script_args.shift, script_args.prompt_template, getattr(script_args, "prompt_format", None)
    )


def load_split(script_args, split: str, seed: int, corpus_index: int = 1) -> GRAPEData:
    """Load one split of a run's data (Multi30k options apply to a Multi30k folder only; `corpus_index` picks which of
    task2's five descriptions make the corpus)."""
    train = split == script_args.dataset_train_split
    max_queries = script_args.max_train_samples if train else script_args.max_eval_samples
    if getattr(script_args, "paper_dataset", None):
        return load_paper_split(
            script_args.paper_dataset,
            script_args.dataset_name,
            part="train" if train else "eval",
            config=script_args.dataset_config,
            eval_images=script_args.paper_eval_images,
            max_queries=max_queries,
            seed=seed,
        )
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


def evaluate_methods(
    methods: dict, template: PromptTemplate, data: GRAPEData, scorer, batch_size: int = 32, reference_column=None
) -> dict:
    """Evaluate method name -> rewriter (or `None` for the original query) on `data`'s queries; the references of
    composed queries come from `reference_column` (default `"reference"`; a vision-language rewriter's are images
    and always passed)."""
    from ..rewriting.vision import is_processor

    reads_images = any(is_processor(getattr(m, "processor", None)) for m in methods.values())
    column = reference_column or "reference"
    references = list(data.queries[column]) if template.needs_reference or reads_images else None
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
    from ..rewriting.devices import resolve_dtype
    from ..rewriting.folder import model_class

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
    model = model_class(read_json(base, "config.json")).from_pretrained(
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


# --- running stages, one after another --------------------------------------------------------------------------
# Stage X: `grape_hf.training.X.main`, its configs in `recipes/<model>/X/`, its script `recipes/X_grape.py`.
STAGES = ("sft", "distill", "grpo", "dpo")


def stage_arguments(stage: str) -> tuple:
    """The dataclasses `TrlParser` fills for `stage` (script, training and model arguments), and the stage's `main`.

    Example:
    ```python
    >>> from grape_hf.training.stages import stage_arguments
    >>> [cls.__name__ for cls in stage_arguments("grpo")[0]]
    ['GRAPEScriptArguments', 'GRAPEConfig', 'ModelConfig']
    ```
    """
    import importlib

    from trl import DPOConfig, ModelConfig, SFTConfig

    from . import configs

    classes = {
        "sft": (configs.SFTScriptArguments, SFTConfig),
        "distill": (configs.DistillScriptArguments, SFTConfig),
        "grpo": (configs.GRAPEScriptArguments, configs.GRAPEConfig),
        "dpo": (configs.PreferenceScriptArguments, DPOConfig),
    }
    if stage not in classes:
        raise ValueError(f"Unknown stage {stage!r}; the stages are {list(STAGES)}.")
    return (*classes[stage], ModelConfig), importlib.import_module(f"{__package__}.{stage}").main


def is_finished(folder: str | Path) -> bool:
    """Whether `folder` holds a finished stage: its rewriter folder, with `grape_rewriter.json`, is saved last."""
    return (Path(folder) / "grape_rewriter.json").is_file()


def run_stage(stage: str, config: str | Path, output_dir: str | Path, overrides: list[str] | tuple = ()) -> Path:
    """Run `stage` as its recipe script would (`TrlParser` on the YAML `config`, then `overrides`, which win), with
    `output_dir` as its output, unless that already holds the finished stage. An unfinished one resumes from its last
    checkpoint (each stage's `main` does). Returns `output_dir`.

    Example:
    ```python
    >>> from grape_hf.training.stages import run_stage
    >>> warm = run_stage("sft", "recipes/SmolLM2-135M-Instruct/sft/config_multi30k_de.yaml", "out/sft",
    ...                  ["--max_steps", "4", "--use_cpu", "true"])  # doctest: +SKIP
    >>> run_stage("grpo", "recipes/SmolLM2-135M-Instruct/grpo/config_multi30k_de.yaml", "out/grpo",
    ...           ["--init_rewriter", str(warm)])  # doctest: +SKIP
    ```
    """
    from trl import TrlParser

    if is_finished(output_dir):
        return Path(output_dir)
    classes, main = stage_arguments(stage)
    argv = ["--config", str(config), "--output_dir", str(output_dir), *overrides]
    args = TrlParser(classes).parse_args_and_config(args=argv, fail_with_unknown_args=True)
    logger.info("%s -> %s", stage, output_dir)
    main(*args)
    return Path(output_dir)


def method_folder(method: str, output_dir: str | Path, folders: dict[str, str]) -> Path:
    """The finished stage folder of an evaluated method: `folders` maps a method to its folder under `output_dir`,
    and a variant `<method>_<name>` lives in `<folder>-<name>` (underscores as dashes)."""
    for prefix in sorted(folders, key=len, reverse=True):
        if method == prefix or method.startswith(prefix + "_"):
            folder = Path(output_dir) / (folders[prefix] + method[len(prefix) :].replace("_", "-"))
            if not is_finished(folder):
                raise SystemExit(f"{method}: no finished stage at {folder}; train it first.")
            return folder
    raise SystemExit(f"{method}: not a trained method; use one of {sorted(folders)} or <method>_<variant>.")


def merge_adapter(model):
    """The model with any LoRA adapter folded into its weights: generation pays no adapter matmuls."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def load_fast_rewriter(source: str, template: PromptTemplate | None = None, dtype: Any = "auto", **kwargs):
    """A [`~grape_hf.rewriting.rewriter.QueryRewriter`] for evaluation or sampling: weights in `dtype` (`"auto"`:
    bf16 where the device runs it natively, else fp32), any LoRA adapter merged. `kwargs` go to
    [`~grape_hf.rewriting.rewriter.QueryRewriter.from_pretrained`] (`max_new_tokens=`, `device=`)."""
    from ..rewriting.rewriter import QueryRewriter

    rewriter = QueryRewriter.from_pretrained(source, template=template, dtype=dtype, **kwargs)
    rewriter.model = merge_adapter(rewriter.model)
    return rewriter


def best_of_n(rewriter, scorer, queries: list, targets: list, n: int = 8, references=None, batch_size: int = 16):
    """The oracle best of `n` sampled rewrites per query, picked knowing the target: the room a policy could still
    learn. Samples at temperature 1 with no top-k/top-p cut.

    Returns:
        `tuple`: `(best rewrite per query, its rank)`, the ranks a `torch.Tensor`.
    """
    samples = rewriter.rewrite(
        queries, references=references, num_rewrites=n, batch_size=batch_size, temperature=1.0, top_k=0, top_p=1.0
    )
    ranks = scorer.ranks([s for group in samples for s in group], [t for t in targets for _ in range(n)])
    best = ranks.view(len(queries), n).min(dim=1)
    return [samples[i][j] for i, j in enumerate(best.indices.tolist())], best.values


# A tokenizer file a shipped folder may leave out: loading then takes the base model's (Gemma's is 32 MB).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def ship_rewriter(
    folder: str | Path,
    dest: str | Path,
    evaluation: dict,
    training: dict | None = None,
    keep_tokenizer: bool = True,
    **fields,
):
    """Ship a stage's rewriter folder as `dest` (e.g. in `grape_hf/assets/rewriters/`): what a Hub push would hold
    ([`~grape_hf.hub.build_upload_folder`]: no checkpoints, the current remote code), the adapter in fp16 (half the
    size, the same rewrites), `training` added to its `grape_rewriter.json`'s (less `init_rewriter`, a local path),
    `evaluation` as its numbers, other `fields` (`dataset=`, `corpus=`) set, and the model card rendered from it.
    `keep_tokenizer=False` leaves the tokenizer files out (an unchanged base model's: loading takes the base model's).

    Returns:
        [`~grape_hf.rewriting.folder.RewriterConfig`]: what `dest/grape_rewriter.json` now holds.
    """
    import shutil

    from safetensors.torch import load_file, save_file

    from ..hub import build_model_card, build_upload_folder

    dest = Path(dest)
    shutil.rmtree(dest, ignore_errors=True)
    build_upload_folder(folder, dest)
    weights = dest / "adapter" / "adapter_model.safetensors"
    if weights.is_file():
        save_file({k: v.half() for k, v in load_file(weights).items()}, weights)
    for name in () if keep_tokenizer else TOKENIZER_FILES:
        (dest / name).unlink(missing_ok=True)
    config = RewriterConfig.load(dest)
    config.training.pop("init_rewriter", None)
    config.training.update(training or {})
    config.evaluation = evaluation
    for name, value in fields.items():
        setattr(config, name, value)
    config.save(dest)
    build_model_card(config, is_adapter=weights.is_file()).save(dest / "README.md")
    return config
