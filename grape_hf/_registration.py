"""How `import grape_hf` makes `pipeline("grape-rewrite")` work without slowing the import.

Registering a task needs `transformers.pipelines`, which takes seconds to import (torch and every pipeline), while
`import grape_hf` takes milliseconds. So [`install`] puts a `sys.meta_path` finder in front of the import system that
watches for exactly two modules, `transformers.pipelines` and `grape_hf.rewriting.pipeline`: once both have finished
executing (always before `pipeline(...)` can be called, since calling it imports the first, and resolving the task
imports the second), it calls [`~grape_hf.rewriting.pipeline.register_pipeline`] with grape_hf's offline model
resolution and built-in prompts. If transformers' pipelines are already imported, registration happens at once. The
finder changes nothing else: it finds no module itself, it only wraps the loader of those two to register after they
run. A failure to register is logged and never breaks the user's import.
"""

from __future__ import annotations

import sys

# Registering needs `transformers.pipelines`, which takes seconds to import (torch and every pipeline). So that
# `import grape_hf` stays fast, the task is registered once both `transformers.pipelines` and
# `grape_hf.rewriting.pipeline` have finished importing (always before `pipeline(...)` can be called), or at once if
# transformers' already has.
_PIPELINE_MODULES = ("transformers.pipelines", "grape_hf.rewriting.pipeline")
_registration = {"done": False, "running": False}


def _register_pipeline() -> None:
    from .models import resolve_model_path
    from .rewriting.pipeline import register_pipeline
    from .rewriting.prompts import PROMPTS_FILE

    register_pipeline(resolve_base_model=resolve_model_path, prompts_file=PROMPTS_FILE)


def _importing(name: str, just_executed: str | None) -> bool:
    module = sys.modules.get(name)
    if module is None:
        # grape_hf.rewriting.pipeline may simply not be imported yet: registering will
        return name != _PIPELINE_MODULES[1]
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


def install() -> None:
    """Register now if `transformers.pipelines` is already imported, else as soon as it (and
    `grape_hf.rewriting.pipeline`) finish importing. Called once by `import grape_hf`."""
    _registration["done"] = False  # registering again is harmless (it is idempotent); a reload may need it
    if not any(type(finder).__name__ == "_RegisterAfterImport" for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
    _try_register()
