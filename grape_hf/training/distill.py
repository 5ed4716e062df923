r"""Rank-filtered self-distillation: the policy learns from its own rewrites that the retriever ranks best.

Each round samples `num_samples` rewrites per training query from the current rewriter, scores every one with the
same reward object GRPO uses ([`~grape_hf.training.rewards.GRAPERewardFunction`] over a
[`~grape_hf.retrieval.scorer.RankScorer`]), keeps the best sample of a query where it beats the greedy rewrite by more
than `min_improvement`, and fine-tunes on the kept (query, rewrite) pairs with TRL's SFTTrainer. It is the
self-driven warm-up of ConvSearch-R1 and the rejection-sampling fine-tuning of RAFT (arXiv 2504.11343) repeated for a
few rounds as in ReST-EM: no labels, only what the retriever's ranking picks.

`main(script_args, training_args, model_args)` is what `recipes/distill_grape.py` runs. Each round is saved as a
rewriter folder in `output_dir/round-<k>` (with `kept.jsonl` and `stats.json`), and a finished round is not redone:
an interrupted run resumes at the round it stopped in.
"""

from __future__ import annotations

import json
import logging
import shutil
from functools import partial
from pathlib import Path

import torch

from ..rewriting.devices import dtype_name, resolve_dtype
from .configs import DistillScriptArguments
from .rewards import GRAPERewardFunction

logger = logging.getLogger(__name__)


def check_sampled(queries: list, targets: list, greedy: list, samples: list) -> int:
    """The number of queries, once the targets, greedy rewrites and sample groups are known to have one entry each."""
    n = len(queries)
    if not (len(targets) == len(greedy) == len(samples) == n):
        raise ValueError(
            f"queries ({n}), targets ({len(targets)}), greedy ({len(greedy)}) and samples ({len(samples)}) must have "
            "one entry per query."
        )
    return n


def select_best(
    queries: list[str],
    targets: list,
    greedy: list[str],
    samples: list[list[str]],
    reward: GRAPERewardFunction,
    min_improvement: float = 0.0,
    references: list[str] | None = None,
    max_rank: int | None = None,
) -> tuple[list[dict], dict]:
    """Score the greedy rewrite and every sample with `reward`; keep per query the best sample that beats greedy.

    `references` (composed queries) are carried into the kept rows, for the prompt of the fine-tuning. `max_rank`
    keeps a best sample only if the retriever ranks the target at that place or better (1: first).

    Returns:
        `tuple`: `(kept, stats)`: kept rows `{"query", "rewrite", "reward", "greedy_reward", "rank"}` (and
        `"reference"`), and the round's numbers (`kept`, `mean_greedy_reward`, `mean_best_reward`, `oracle_R@1` /
        `oracle_R@10` of the best samples).

    Example:
    ```python
    >>> import os; os.environ["HF_HUB_OFFLINE"] = "1"
    >>> from grape_hf import RankScorer, GRAPERewardFunction, load_retriever
    >>> from grape_hf.training.distill import select_best
    >>> scorer = RankScorer(load_retriever("sentence-transformers:all-MiniLM-L6-v2", device="cpu"),
    ...                         ["a dog on the grass", "two men play chess"], show_progress_bar=False)
    >>> kept, stats = select_best(["Zwei Männer"], [1], ["a dog"], [["a dog", "two men playing chess"]],
    ...                           GRAPERewardFunction(scorer))
    >>> kept[0]["rewrite"], stats["kept"]
    ('two men playing chess', 1)
    ```
    """
    n = check_sampled(queries, targets, greedy, samples)
    per_query = [len(s) for s in samples]
    flat = [text for group in samples for text in group]
    flat_targets = [t for t, k in zip(targets, per_query) for _ in range(k)]
    sample_rewards = reward(prompts=flat, completions=flat, **{reward.target_column: flat_targets})
    greedy_rewards = reward(prompts=greedy, completions=greedy, **{reward.target_column: list(targets)})
    best, start = [], 0
    for i, k in enumerate(per_query):
        group = sample_rewards[start : start + k]
        j = max(range(k), key=group.__getitem__)
        best.append((samples[i][j], group[j]))
        start += k
    oracle = reward.scorer.ranks([text for text, _ in best], list(targets)) if n else torch.zeros(0, dtype=torch.long)
    kept = []
    for i, ((text, value), rank) in enumerate(zip(best, oracle.tolist())):
        if value > greedy_rewards[i] + min_improvement and (max_rank is None or rank <= max_rank):
            row = {
                "query": queries[i],
                "rewrite": text,
                "reward": value,
                "greedy_reward": greedy_rewards[i],
                "rank": rank,
            }
            kept.append(row if references is None else {**row, "reference": references[i]})
    stats = {
        "queries": n,
        "samples_per_query": max(per_query) if per_query else 0,
        "kept": len(kept),
        "mean_greedy_reward": round(sum(greedy_rewards) / max(n, 1), 4),
        "mean_best_reward": round(sum(value for _, value in best) / max(n, 1), 4),
        "oracle_R@1": round(float((oracle <= 1).float().mean()), 4) if n else 0.0,
        "oracle_R@10": round(float((oracle <= 10).float().mean()), 4) if n else 0.0,
    }
    return kept, stats


def sample_rewrites(
    rewriter, queries: list[str], num_samples: int, temperature: float, batch_size: int, references=None
):
    """The greedy rewrite and `num_samples` sampled ones per query, with a
    [`~grape_hf.rewriting.rewriter.QueryRewriter`]."""
    greedy = [r[0] for r in rewriter.rewrite(queries, references=references, batch_size=batch_size)]
    samples = rewriter.rewrite(
        queries,
        references=references,
        num_rewrites=num_samples,
        batch_size=max(1, batch_size // 2),
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
    )
    return greedy, samples


def main(script_args: DistillScriptArguments, training_args, model_args):
    """Run the rounds; the last one is also saved to `output_dir` itself (the rewriter folder of the stage)."""
    from trl import SFTTrainer

    from .sft import to_sft_dataset

    select = partial(select_best, min_improvement=script_args.min_improvement, max_rank=script_args.max_rank)
    hint = "no sampled rewrite beat the greedy one; raise num_samples or sample_temperature, or lower min_improvement"
    if script_args.max_rank:
        hint += f" or raise max_rank ({script_args.max_rank})"
    return run_rounds(
        script_args,
        training_args,
        model_args,
        "self_distillation",
        select,
        SFTTrainer,
        to_sft_dataset,
        hint,
        "kept.jsonl",
        key=("query", "rewrite"),
    )


def read_rows(paths: list[str], rows_file: str, key: tuple[str, ...]) -> list[dict]:
    """The rows of earlier rounds' `rows_file` (a path may be the file or the round folder), one per `key` value."""
    rows, seen = [], set()
    for path in paths:
        file = Path(path) / rows_file if Path(path).is_dir() else Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"replay: {path!r} is neither a {rows_file} file nor a round folder holding one.")
        for line in file.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            row_key = _row_key(row, key)
            if row_key not in seen:
                seen.add(row_key)
                rows.append(row)
    return rows


def _row_key(row: dict, key: tuple[str, ...]) -> tuple:
    return tuple(row[k] for k in key)


def run_rounds(
    script_args,
    training_args,
    model_args,
    stage: str,
    select,
    trainer_class,
    to_dataset,
    empty_hint: str,
    rows_file: str,
    key: tuple[str, ...],
):
    """The sample → rank → train loop that self-distillation and rank preference optimisation share.

    Each round samples the greedy rewrite and `num_samples` rewrites per training query from the current policy
    (merged LoRA, `sample_dtype` weights), calls `select(queries, targets, greedy, samples, reward, references=...)`
    for the training rows and the round's numbers, trains on the rows (their `key` columns, and `reference` where
    there is one, made a dataset by `to_dataset(rows, template)`) with a TRL `trainer_class`, and saves the round's
    rewriter folder with the rows (`rows_file`) and `stats.json`. The rows of `script_args.replay` join every round's,
    less those with a `key` this round has. A round with `stats.json` is not redone. Returns the rounds' stats.
    """
    from datasets import Dataset
    from transformers import set_seed
    from trl import get_peft_config

    from ..models import resolve_model_path
    from ..retrieval.retrievers import load_retriever
    from ..rewriting.folder import load_tokenizer
    from .rewards import get_reward_funcs
    from .stages import (
        Stopwatch,
        build_rewriter_config,
        build_scorer,
        load_fast_rewriter,
        load_policy,
        load_split,
        save_stage,
        stage_template,
    )

    replayed = read_rows(script_args.replay, rows_file, key)
    set_seed(training_args.seed)
    dtype = resolve_dtype(model_args.dtype, training_args.device)  # `auto`: bf16 where native, else fp32
    training_args.model_init_kwargs = {**(training_args.model_init_kwargs or {}), "dtype": dtype_name(dtype)}
    template = stage_template(script_args)
    retriever = load_retriever(script_args.retriever, device=str(training_args.device))
    train = load_split(script_args, script_args.dataset_train_split, training_args.seed)
    scorer = build_scorer(retriever, train, script_args, seed=training_args.seed)
    reward = get_reward_funcs(scorer, script_args.reward_funcs[:1])[0]
    queries, targets = list(train.queries["query"]), list(train.queries["target_id"])
    references = list(train.queries[script_args.reference_column]) if template.needs_reference else None
    output_dir = Path(training_args.output_dir)
    policy = script_args.init_rewriter
    history = []
    for round_index in range(script_args.rounds):
        round_dir = output_dir / f"round-{round_index}"
        if (round_dir / "stats.json").is_file():  # finished earlier: resume after it
            policy = str(round_dir)
            history.append(json.loads((round_dir / "stats.json").read_text()))
            continue
        with Stopwatch() as sampling:
            source = policy or resolve_model_path(model_args.model_name_or_path)
            sample_dtype = resolve_dtype(script_args.sample_dtype, training_args.device)
            # Sampling needs no adapter: merged weights are faster.
            rewriter = load_fast_rewriter(source, template, sample_dtype, max_new_tokens=script_args.max_new_tokens)
            greedy, samples = sample_rewrites(
                rewriter,
                queries,
                script_args.num_samples,
                script_args.sample_temperature,
                script_args.sample_batch_size,
                references,
            )
            del rewriter
        rows, stats = select(queries, targets, greedy, samples, reward, references=references)
        if replayed:
            seen = {_row_key(row, key) for row in rows}
            old = [row for row in replayed if _row_key(row, key) not in seen]
            rows += old
            stats["replayed"] = len(old)
        if not rows:
            raise RuntimeError(f"Round {round_index}: {empty_hint} (on {len(queries)} queries).")
        model, tokenizer_source = load_policy(model_args, policy, dtype=dtype)
        tokenizer = load_tokenizer(tokenizer_source)
        peft_config = get_peft_config(model_args) if isinstance(model, str) else None
        columns = [*key, *(["reference"] if "reference" in rows[0] else [])]
        trainer = trainer_class(
            model=model,
            args=_round_args(training_args, round_dir),
            train_dataset=to_dataset(Dataset.from_list(rows).select_columns(columns), template),
            processing_class=tokenizer,
            peft_config=peft_config,
        )
        with Stopwatch() as tuning:
            trainer.train()
        stats.update(round=round_index, sample_seconds=sampling.seconds, train_seconds=tuning.seconds)
        if trainer.accelerator.is_main_process:
            config = build_rewriter_config(
                stage,
                template,
                script_args,
                training_args,
                model_args,
                corpus=train.name,
                reward=script_args.reward_funcs[0],
                round=round_index,
                rounds=script_args.rounds,
                num_samples=script_args.num_samples,
                history=[*history, stats],
            )
            config.training["init_rewriter"] = policy
            save_stage(trainer, tokenizer, round_dir, config, model_args)
            with open(round_dir / rows_file, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            (round_dir / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        logger.info("%s round %d: %s", stage, round_index, stats)
        history.append(stats)
        policy = str(round_dir)
    _copy_rewriter(Path(policy), output_dir)
    return history


def _round_args(training_args, round_dir: Path):
    from dataclasses import replace

    return replace(training_args, output_dir=str(round_dir / "trainer"), save_strategy="no")


def _copy_rewriter(src: Path, dst: Path) -> None:
    """Make `output_dir` itself the final rewriter folder (the rounds stay beside it)."""
    for path in src.iterdir():
        if path.name == "trainer" or path.suffix == ".jsonl":
            continue
        target = dst / path.name
        if path.is_dir():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(path, target)
        else:
            shutil.copyfile(path, target)
