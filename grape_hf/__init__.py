"""grape_hf: GRAPE (arXiv 2509.23370) for the Hugging Face ecosystem.

An LLM rewrites queries for a frozen retriever; TRL's GRPOTrainer trains it with a reward from the retriever's
ranking of the right item among the whole corpus.
"""

from __future__ import annotations

import importlib
import sys
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
    "QueryRewriter": "rewriter",
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
    from .rewriter import QueryRewriter
    from .scorer import CLIPRankScorer
    from .search import GRAPERetriever


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'grape_hf' has no attribute {name!r}")


# --- pipeline("grape-rewrite") registration --------------------------------------------------------------------
# Registering needs `transformers.pipelines`, which takes seconds to import (torch and every pipeline). So that
# `import grape_hf` stays fast, the task is registered once both `transformers.pipelines` and `grape_hf.pipeline`
# have finished importing (always before `pipeline(...)` can be called), or at once if transformers' already has.
_PIPELINE_MODULES = ("transformers.pipelines", f"{__name__}.pipeline")
_registration = {"done": False, "running": False}


def _register_pipeline() -> None:
    from pathlib import Path

    from .models import resolve_model_path
    from .pipeline import register_pipeline

    register_pipeline(resolve_base_model=resolve_model_path, prompts_file=Path(__file__).with_name("prompts.json"))


def _importing(name: str, just_executed: str | None) -> bool:
    module = sys.modules.get(name)
    if module is None:
        return name != _PIPELINE_MODULES[1]  # grape_hf.pipeline may simply not be imported yet: registering will
    return name != just_executed and getattr(getattr(module, "__spec__", None), "_initializing", False)


def _try_register(just_executed: str | None = None) -> None:
    if (
        _registration["done"]
        or _registration["running"]
        or any(_importing(m, just_executed) for m in _PIPELINE_MODULES)
    ):
        return
    _registration["running"] = True
    try:
        _register_pipeline()
        _registration["done"] = True
    except Exception as error:  # noqa: BLE001 - never break the user's `import transformers.pipelines`
        import logging

        logging.getLogger(__name__).warning("grape_hf could not register the 'grape-rewrite' pipeline: %r", error)
    finally:
        _registration["running"] = False


class _RegisterAfterImport:
    """A `sys.meta_path` finder that calls `_try_register` right after a module in `_PIPELINE_MODULES` executes."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _PIPELINE_MODULES or _registration["done"]:
            return None
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _try_register(just_executed=fullname)

        spec.loader.exec_module = exec_then_register
        return spec


if not any(type(finder).__name__ == "_RegisterAfterImport" for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterImport())
_try_register()
