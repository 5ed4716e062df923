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
    "load_retriever": "retrievers",
    "Retriever": "retrievers",
    "CLIPRankScorer": "scorer",
    "GRAPERewardFunction": "rewards",
    "get_reward_funcs": "rewards",
    "GRAPEScriptArguments": "configs",
    "GRAPEConfig": "trainer",
    "GRAPETrainer": "trainer",
    "QueryRewriter": "rewriter",
    "RewriterConfig": "rewriter_folder",
    "load_rewriter": "rewriter_folder",
    "shipped_rewriter_path": "rewriter",
    "PromptTemplate": "prompts",
    "get_prompt_template": "prompts",
    "evaluate_retrieval": "evaluation",
    "evaluate_rewriters": "evaluation",
    "load_grape_dataset": "data",
    "GRAPERewritePipeline": "pipeline",
    "GRAPERetriever": "search",
    "save_rewriter": "hub",
    "push_rewriter": "hub",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs; `__all__` re-exports these lazily
    # ruff: noqa: F401
    from .configs import GRAPEScriptArguments
    from .data import load_grape_dataset
    from .evaluation import evaluate_retrieval, evaluate_rewriters
    from .hub import push_rewriter, save_rewriter
    from .pipeline import GRAPERewritePipeline
    from .prompts import PromptTemplate, get_prompt_template
    from .retrievers import Retriever, load_retriever
    from .rewards import GRAPERewardFunction, get_reward_funcs
    from .rewriter import QueryRewriter, shipped_rewriter_path
    from .rewriter_folder import RewriterConfig, load_rewriter
    from .scorer import CLIPRankScorer
    from .search import GRAPERetriever
    from .trainer import GRAPEConfig, GRAPETrainer


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'grape_hf' has no attribute {name!r}")


# `pipeline("grape-rewrite")` works right after `import grape_hf`, without importing transformers here.
from . import _registration  # noqa: E402

_registration.install()
