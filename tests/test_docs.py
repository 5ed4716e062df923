"""The `>>>` examples in the library's docstrings run and hold."""


def test_doc_examples_run():
    """The `>>>` examples in the core modules' docstrings (those not marked +SKIP) run and hold."""
    import doctest
    import importlib
    import re

    class FencedParser(doctest.DocTestParser):
        # doc-builder docstrings wrap examples in ``` fences, which plain doctest would read as expected output.
        def parse(self, string, name="<string>"):
            return super().parse(re.sub(r"^\s*```(python)?\s*$", "", string, flags=re.M), name)

    finder = doctest.DocTestFinder(parser=FencedParser())
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    examples = 0
    modules = ("prompts", "retrievers", "scorer", "rewards", "evaluation", "metrics", "configs", "rewriter_folder",
               "cache", "negatives", "index", "sft", "distill", "preference", "trainer", "sampling", "shapes.queries")  # fmt: skip
    for name in modules:
        for test in finder.find(importlib.import_module(f"grape_hf.{name}")):
            examples += len(test.examples)
            runner.run(test)
    assert examples >= 25
    assert runner.failures == 0
