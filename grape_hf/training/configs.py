"""The arguments of every stage, as open-r1 keeps them: dataclasses that TRL's `TrlParser` fills from a recipe's
YAML and the command line.

| stage (`grape_hf.training.X`, `recipes/<model>/X/`) | script arguments | training arguments |
|---|---|---|
| `grpo` | [`GRAPEScriptArguments`] | [`GRAPEConfig`] (TRL's `GRPOConfig` plus the fast path, in `grpo_config`) |
| `sft` | [`SFTScriptArguments`] | TRL's `SFTConfig` |
| `distill` | [`DistillScriptArguments`] | TRL's `SFTConfig` |
| `dpo` | [`PreferenceScriptArguments`] | TRL's `DPOConfig` |

Each with TRL's `ModelConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import ScriptArguments

from ..retrieval.retrievers import parse_retriever_spec
from ..rewriting.prompts import available_shifts
from .rewards import resolve_reward_variant


# The prompt arguments every stage takes, defined once.
def _shift_field():
    return field(default="multilingual", metadata={"help": "The shift kind, which picks the prompt template."})


def _prompt_template_field():
    return field(
        default=None,
        metadata={"help": "Your own prompt: a user turn with '{query}' (and '{reference}'), or a JSON file path."},
    )


def _prompt_format_field():
    return field(
        default="chat",
        metadata={
            "help": "'chat' (instruct models: the tokenizer's chat template) or 'completion' (base models such as "
            "Gemma 3 270M: the shift's plain-text few-shot prompt, each rewrite one line).",
            "choices": ["chat", "completion"],
        },
    )


@dataclass
class GRAPEScriptArguments(ScriptArguments):
    """Arguments of the GRAPE recipe: the data, the frozen retriever, the reward and the evaluation.

    `dataset_name` is a Multi30k folder (e.g. `../shared/data/multi30k`), a local `datasets` folder or a Hub dataset
    id with query splits (`query`, `target_id`) and corpus splits (`<split>_corpus` or `corpus`).

    Example:
    ```python
    >>> from grape_hf import GRAPEScriptArguments
    >>> GRAPEScriptArguments(dataset_name="../shared/data/multi30k", reward_funcs=["rank"]).retriever
    'sentence-transformers:all-MiniLM-L6-v2'
    ```
    """

    dataset_test_split: str = field(default="validation", metadata={"help": "The evaluation split."})
    retriever: str = field(
        default="sentence-transformers:all-MiniLM-L6-v2",
        metadata={
            "help": "The frozen retriever: 'open_clip:<arch>[@<pretrained>]', 'hf-clip:<name or path>' or "
            "'sentence-transformers:<name or path>'."
        },
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["rank"],
        metadata={
            "help": "Reward variants: 'rank' (GRAPE), 'shaped_rank', 'reciprocal_rank', 'similarity', 'margin', or "
            "dotted paths to functions of RankStats."
        },
    )
    relative_reward: bool = field(
        default=False, metadata={"help": "Reward the rewrite's improvement over the original query."}
    )
    shift: str = _shift_field()
    prompt_template: str | None = _prompt_template_field()
    prompt_format: str = _prompt_format_field()
    query_column: str = field(default="query", metadata={"help": "Column of the original query."})
    target_column: str = field(default="target_id", metadata={"help": "Column of the right corpus id(s)."})
    reference_column: str = field(
        default="reference", metadata={"help": "Column of the reference caption, for composed queries."}
    )
    corpus_column: str | None = field(default=None, metadata={"help": "Corpus column ('text' or 'image')."})
    paper_dataset: str | None = field(
        default=None,
        metadata={
            "help": "Read dataset_name (a Hub id or local copy) as this paper benchmark: xm3600 (dataset_config: the "
            "query language), cirr, docci, flickr30k_cn or cvlue (grape_hf.data.load_paper_split)."
        },
    )
    paper_eval_images: int = field(
        default=500, metadata={"help": "paper_dataset: images (CIRR: pairs) held out for evaluation."}
    )
    multi30k_task: str = field(default="task2", metadata={"help": "Multi30k task folder: 'task1' or 'task2'."})
    query_lang: str = field(default="de", metadata={"help": "Multi30k query language."})
    corpus_lang: str = field(default="en", metadata={"help": "Multi30k corpus language."})
    max_train_images: int | None = field(
        default=1000, metadata={"help": "Multi30k: images (and so corpus items) kept for training."}
    )
    reward_corpus_descriptions: int = field(
        default=1,
        metadata={
            "help": "Multi30k task2: the reward ranks each training image by the mean embedding of its first N "
            "corpus_lang descriptions (1-5) instead of description 1 alone, so a rewrite is paid for matching the "
            "image, not one annotator's words. Evaluation always ranks description 1."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Training queries kept."})
    max_eval_images: int | None = field(default=None, metadata={"help": "Multi30k: images kept for evaluation."})
    max_eval_samples: int | None = field(
        default=200, metadata={"help": "Evaluation queries kept (corpus stays whole)."}
    )
    corpus_cache_dir: str | None = field(
        default=None, metadata={"help": "Where to cache corpus embeddings; defaults to grape_hf's cache folder."}
    )
    sampled_negatives: int | None = field(
        default=None, metadata={"help": "Rank among this many sampled negatives instead of the whole corpus."}
    )
    evaluate_before_after: bool = field(
        default=True, metadata={"help": "Evaluate on the test split before and after training and print the table."}
    )
    eval_batch_size: int = field(default=32, metadata={"help": "Generation batch size of the evaluation."})
    init_rewriter: str | None = field(
        default=None,
        metadata={
            "help": "Start from this rewriter folder (a warm start or self-distillation output): its LoRA adapter is "
            "trained further and its prompt is used unless prompt_template is given."
        },
    )
    curve_eval_steps: int = field(
        default=0,
        metadata={
            "help": "Every this many steps, rewrite curve_queries held-out queries greedily and log "
            "eval_retrieval/R@10 etc. (RetrievalEvalCallback); 0 turns the curve off."
        },
    )
    curve_queries: int = field(default=48, metadata={"help": "Held-out queries of the R@10 curve."})
    compare_rewriters: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Rewriters evaluated after training on the same held-out queries, as more rows of the before/after"
            " table: a rewriter folder, a Hub id, or the name of one shipped with grape_hf (e.g. "
            "gemma3-270m-grape-multi30k-de), each with the prompt it was trained with."
        },
    )

    def __post_init__(self):
        if hasattr(super(), "__post_init__"):
            super().__post_init__()
        if self.shift not in available_shifts():
            raise ValueError(f"Unknown shift {self.shift!r}; choose one of {available_shifts()}.")
        if isinstance(self.reward_funcs, str):
            self.reward_funcs = [self.reward_funcs]
        for name in self.reward_funcs:
            resolve_reward_variant(name)
        parse_retriever_spec(self.retriever)
        if self.curve_eval_steps < 0 or self.curve_queries < 1:
            raise ValueError(
                f"curve_eval_steps must be >= 0 (got {self.curve_eval_steps}) and curve_queries >= 1 "
                f"(got {self.curve_queries})."
            )
        if isinstance(self.compare_rewriters, str):
            self.compare_rewriters = [self.compare_rewriters]
        if self.compare_rewriters:
            from ..rewriting.rewriter import is_shipped_rewriter

            for name in self.compare_rewriters:
                if not (is_shipped_rewriter(name) or _exists_or_hub_id(name)):
                    raise ValueError(
                        f"compare_rewriters: {name!r} is neither a folder here, a Hub repo id, nor a rewriter shipped "
                        "with grape_hf (grape_hf.rewriting.rewriter.shipped_rewriters() lists those)."
                    )
            if not self.evaluate_before_after:
                raise ValueError(
                    f"compare_rewriters ({self.compare_rewriters}) adds rows to the before/after evaluation; set "
                    "evaluate_before_after: true, or drop compare_rewriters."
                )
        if self.init_rewriter is not None and not _exists_or_hub_id(self.init_rewriter):
            raise ValueError(
                f"init_rewriter {self.init_rewriter!r} is not a folder here; give the output_dir of an earlier stage "
                "(or a Hub repo id)."
            )
        if self.dataset_name is None:
            raise ValueError(
                "dataset_name is required: a Multi30k folder, a local dataset folder or a Hub dataset id."
            )
        if self.paper_dataset is not None:
            from ..data import PAPER_DATASETS

            if self.paper_dataset not in PAPER_DATASETS:
                raise ValueError(
                    f"paper_dataset {self.paper_dataset!r} is not a paper benchmark; choose one of "
                    f"{sorted(PAPER_DATASETS)}, or leave it unset for a Multi30k folder or a GRAPE dataset."
                )
        if not 1 <= self.reward_corpus_descriptions <= 5:
            raise ValueError(
                f"reward_corpus_descriptions must be 1-5 (Multi30k task2 has five descriptions per image), got "
                f"{self.reward_corpus_descriptions}."
            )


def _exists_or_hub_id(name: str) -> bool:
    from pathlib import Path

    return Path(name).exists() or (name.count("/") == 1 and not name.startswith((".", "/", "~")))


@dataclass
class SFTScriptArguments(ScriptArguments):
    """Arguments of the warm start: the (query, rewrite) pairs and the prompt.

    Example:
    ```python
    >>> from grape_hf.training.configs import SFTScriptArguments
    >>> SFTScriptArguments(dataset_name="../shared/data/multi30k").multi30k_task
    'task1'
    ```
    """

    shift: str = _shift_field()
    prompt_template: str | None = _prompt_template_field()
    prompt_format: str = _prompt_format_field()
    query_column: str = field(default="query", metadata={"help": "Column of the query (non-Multi30k datasets)."})
    rewrite_column: str = field(default="rewrite", metadata={"help": "Column of the target rewrite."})
    multi30k_task: str = field(default="task1", metadata={"help": "Multi30k task folder of the pairs."})
    query_lang: str = field(default="de", metadata={"help": "Multi30k language of the queries."})
    rewrite_lang: str = field(default="en", metadata={"help": "Multi30k language of the rewrites."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep a seeded subset of the pairs."})
    max_eval_samples: int | None = field(
        default=None,
        metadata={"help": "Pairs of `dataset_test_split` for the eval loss (with `eval_strategy` steps or epoch)."},
    )
    retriever: str | None = field(
        default=None, metadata={"help": "The retriever the rewriter is meant for (recorded in grape_rewriter.json)."}
    )

    def __post_init__(self):
        if hasattr(super(), "__post_init__"):
            super().__post_init__()
        if self.shift not in available_shifts():
            raise ValueError(f"Unknown shift {self.shift!r}; choose one of {available_shifts()}.")
        if self.dataset_name is None:
            raise ValueError("dataset_name is required: a Multi30k folder, or a dataset with query/rewrite columns.")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive number of pairs, got {value}.")


@dataclass
class DistillScriptArguments(GRAPEScriptArguments):
    """[`~grape_hf.GRAPEScriptArguments`] plus the sampling and filtering of self-distillation.

    Example:
    ```python
    >>> from grape_hf.training.configs import DistillScriptArguments
    >>> DistillScriptArguments(dataset_name="../shared/data/multi30k").num_samples
    8
    ```
    """

    rounds: int = field(default=2, metadata={"help": "Sample-filter-fine-tune rounds."})
    num_samples: int = field(default=8, metadata={"help": "Rewrites sampled per training query each round."})
    sample_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the rewrites."})
    sample_batch_size: int = field(default=16, metadata={"help": "Queries per generate call while sampling."})
    min_improvement: float = field(
        default=0.0, metadata={"help": "Keep a query's best sample only if its reward beats the greedy one's by more."}
    )
    max_rank: int | None = field(
        default=None,
        metadata={
            "help": "Keep a query's best sample only if the retriever ranks its target at this place or better (1: "
            "only rewrites that retrieve the target first). Default: no rank cut."
        },
    )
    max_new_tokens: int = field(default=32, metadata={"help": "Length of a sampled rewrite."})
    replay: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Rows files (kept.jsonl; pairs.jsonl for DPO) or the round folders holding them, of earlier runs "
            "of the same stage with the same prompt: their rows join every round's training, as ReST-EM grows its "
            "dataset."
        },
    )
    sample_dtype: str = field(
        default="auto",
        metadata={
            "help": "Weights of the merged sampling copy: 'auto' (bf16 where the device runs it natively: GPUs, CPUs "
            "with AMX or AVX-512-BF16; else fp32), 'bfloat16', 'float16' or 'float32'."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.max_rank is not None and self.max_rank < 1:
            raise ValueError(
                f"max_rank must be >= 1 (1 keeps only samples that rank the target first), got {self.max_rank}."
            )
        if self.rounds < 1 or self.num_samples < 2:
            raise ValueError(
                f"rounds must be >= 1 (got {self.rounds}) and num_samples >= 2 (got {self.num_samples}): the best "
                "of one sample is just a sample."
            )


@dataclass
class PreferenceScriptArguments(DistillScriptArguments):
    """[`DistillScriptArguments`] plus what makes a preference pair.

    Example:
    ```python
    >>> from grape_hf.training.configs import PreferenceScriptArguments
    >>> PreferenceScriptArguments(dataset_name="../shared/data/multi30k").min_margin
    0.0
    ```
    """

    min_margin: float = field(
        default=0.0,
        metadata={"help": "Keep a pair only if the chosen rewrite's reward beats the rejected one's by more."},
    )


# GRPO's training arguments live beside TRL's convention (`trl/trainer/grpo_config.py`); importable from here too.
from .grpo_config import GRAPEConfig  # noqa: E402, F401
