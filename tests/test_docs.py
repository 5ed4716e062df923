"""The `>>>` examples in the library's docstrings run and hold: one test per module that has any."""

import doctest
import importlib
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "grape_hf"
# Found by reading the files, not importing them: collecting the suite stays fast.
MODULES = sorted(
    ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
    for path in PACKAGE.rglob("*.py")
    if "assets" not in path.parts and ">>>" in path.read_text(encoding="utf-8")
)


class FencedParser(doctest.DocTestParser):
    # doc-builder docstrings wrap examples in ``` fences, which plain doctest would read as expected output.
    def parse(self, string, name="<string>"):
        return super().parse(re.sub(r"^\s*```(python)?\s*$", "", string, flags=re.M), name)


def test_the_core_modules_have_examples():
    for name in ("retrieval.scorer", "training.rewards", "rewriting.folder", "metrics", "evaluation"):
        assert f"grape_hf.{name}" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_doc_examples_run(name):
    """The module's `>>>` examples (those not marked +SKIP) run and hold."""
    finder = doctest.DocTestFinder(parser=FencedParser())
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = finder.find(importlib.import_module(name))
    assert sum(len(test.examples) for test in tests) > 0, f"{name} has `>>>` text but no example doctest finds"
    for test in tests:
        runner.run(test)
    assert runner.failures == 0, f"{runner.failures} example(s) of {name} failed (see the output above)"
