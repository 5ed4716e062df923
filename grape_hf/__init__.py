"""grape_hf: GRAPE (arXiv 2509.23370) for the Hugging Face ecosystem.

An LLM rewrites queries for a frozen retriever; TRL's GRPOTrainer trains it with a reward from the retriever's
ranking of the right item among the whole corpus.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Public name -> module. Resolved on first access so that `import grape_hf` stays light.
_LAZY = {
    "load_retriever": "retrieval.retrievers",
    "Retriever": "retrieval.retrievers",
    "RankScorer": "retrieval.scorer",
    "CLIPRankScorer": "retrieval.scorer",
    "GRAPERewardFunction": "training.rewards",
    "get_reward_funcs": "training.rewards",
    "GRAPEScriptArguments": "training.configs",
    "GRAPEConfig": "training.configs",
    "GRAPETrainer": "training.trainer",
    "QueryRewriter": "rewriting.rewriter",
    "RewriterConfig": "rewriting.folder",
    "load_rewriter": "rewriting.folder",
    "shipped_rewriter_path": "rewriting.rewriter",
    "PromptTemplate": "rewriting.prompts",
    "get_prompt_template": "rewriting.prompts",
    "evaluate_retrieval": "evaluation",
    "evaluate_rewriters": "evaluation",
    "load_grape_dataset": "data",
    "GRAPERewritePipeline": "rewriting.pipeline",
    "GRAPERetriever": "retrieval.search",
    "save_rewriter": "hub",
    "push_rewriter": "hub",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs; `__all__` re-exports these lazily
    # ruff: noqa: F401
    from .data import load_grape_dataset
    from .evaluation import evaluate_retrieval, evaluate_rewriters
    from .hub import push_rewriter, save_rewriter
    from .retrieval.retrievers import Retriever, load_retriever
    from .retrieval.scorer import CLIPRankScorer, RankScorer
    from .retrieval.search import GRAPERetriever
    from .rewriting.folder import RewriterConfig, load_rewriter
    from .rewriting.pipeline import GRAPERewritePipeline
    from .rewriting.prompts import PromptTemplate, get_prompt_template
    from .rewriting.rewriter import QueryRewriter, shipped_rewriter_path
    from .training.configs import GRAPEConfig, GRAPEScriptArguments
    from .training.rewards import GRAPERewardFunction, get_reward_funcs
    from .training.trainer import GRAPETrainer


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'grape_hf' has no attribute {name!r}")


# `pipeline("grape-rewrite")` works right after `import grape_hf`, without importing transformers here.
from . import _registration  # noqa: E402

_registration.install()
