"""The GRAPE script arguments, parsed by TRL's `TrlParser` next to `GRPOConfig` and `ModelConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import ScriptArguments

from ..retrieval.retrievers import parse_retriever_spec
from ..rewriting.prompts import available_shifts
from .rewards import resolve_reward_variant


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
    shift: str = field(default="multilingual", metadata={"help": "The shift kind, which picks the prompt template."})
    prompt_template: str | None = field(
        default=None,
        metadata={"help": "Your own prompt: a user turn with '{query}' (and '{reference}'), or a JSON file path."},
    )
    query_column: str = field(default="query", metadata={"help": "Column of the original query."})
    target_column: str = field(default="target_id", metadata={"help": "Column of the right corpus id(s)."})
    reference_column: str = field(
        default="reference", metadata={"help": "Column of the reference caption, for composed queries."}
    )
    corpus_column: str | None = field(default=None, metadata={"help": "Corpus column ('text' or 'image')."})
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
        if self.init_rewriter is not None and not _exists_or_hub_id(self.init_rewriter):
            raise ValueError(
                f"init_rewriter {self.init_rewriter!r} is not a folder here; give the output_dir of an earlier stage "
                "(or a Hub repo id)."
            )
        if self.dataset_name is None:
            raise ValueError(
                "dataset_name is required: a Multi30k folder, a local dataset folder or a Hub dataset id."
            )
        if not 1 <= self.reward_corpus_descriptions <= 5:
            raise ValueError(
                f"reward_corpus_descriptions must be 1-5 (Multi30k task2 has five descriptions per image), got "
                f"{self.reward_corpus_descriptions}."
            )


def _exists_or_hub_id(name: str) -> bool:
    from pathlib import Path

    return Path(name).exists() or (name.count("/") == 1 and not name.startswith((".", "/", "~")))
