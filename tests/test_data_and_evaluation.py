import json
import subprocess
import sys
from pathlib import Path

import pytest

from grape_hf import CLIPRankScorer
from grape_hf.data import load_grape_dataset, load_multi30k
from grape_hf.evaluation import evaluate_retrieval, markdown_table, retrieval_metrics, save_results
from grape_hf.prompts import PromptTemplate, available_shifts, get_prompt_template

REPO = Path(__file__).resolve().parents[1]


def test_multi30k_task2_pairs_queries_with_the_same_image(multi30k_path):
    data = load_multi30k(multi30k_path, split="validation")
    assert len(data.corpus) == 1014 == len(data.queries)
    first = data.queries[0]
    assert first["target_id"] == 0 and first["image_file"].endswith(".jpg")
    assert first["query"] == "Baumwolllager mit LKW"
    assert data.corpus[0] == "A group of people stand in the back of a truck filled with cotton."


def test_multi30k_subsets_are_seeded(multi30k_path):
    a = load_multi30k(multi30k_path, split="train", max_images=50, seed=1)
    b = load_multi30k(multi30k_path, split="train", max_images=50, seed=1)
    c = load_multi30k(multi30k_path, split="train", max_images=50, seed=2)
    assert a.corpus == b.corpus != c.corpus
    assert sorted(a.queries["target_id"]) == list(range(50))
    q = load_multi30k(multi30k_path, split="validation", max_queries=10)
    assert len(q.queries) == 10 and len(q.corpus) == 1014
    t1 = load_multi30k(multi30k_path, split="validation", task="task1", max_images=5)
    assert t1.info["task"] == "task1" and len(t1.corpus) == 5


def test_multi30k_bad_arguments(multi30k_path):
    with pytest.raises(ValueError, match="Unknown Multi30k split 'test'"):
        load_multi30k(multi30k_path, split="test")
    with pytest.raises(ValueError, match="descriptions 1-5 per image; got index 7"):
        load_multi30k(multi30k_path, query_index=7)
    with pytest.raises(ValueError, match="Unknown Multi30k task"):
        load_multi30k(multi30k_path, task="task3")


def test_generic_dataset_from_disk(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict(
        {
            "train": Dataset.from_dict({"question": ["a", "b"], "doc": [1, 0]}),
            "corpus": Dataset.from_dict({"text": ["zero", "one"]}),
        }
    ).save_to_disk(str(tmp_path / "ds"))
    data = load_grape_dataset(str(tmp_path / "ds"), split="train", query_column="question", target_column="doc")
    assert data.corpus == ["zero", "one"] and data.queries["target_id"] == [1, 0]
    with pytest.raises(ValueError, match="no split 'validation'; it has \\['train', 'corpus'\\]"):
        load_grape_dataset(str(tmp_path / "ds"), split="validation")
    with pytest.raises(ValueError, match="no column 'query'"):
        load_grape_dataset(str(tmp_path / "ds"), split="train")
    with pytest.raises(ValueError, match="only apply to a Multi30k folder"):
        load_grape_dataset(str(tmp_path / "ds"), max_images=3)


def test_metrics_by_hand():
    m = retrieval_metrics([1, 2, 6, 11])
    assert m["R@1"] == 0.25 and m["R@5"] == 0.5 and m["R@10"] == 0.75
    assert m["MRR"] == pytest.approx((1 + 1 / 2 + 1 / 6 + 1 / 11) / 4, abs=1e-4)
    assert m["nDCG@10"] == pytest.approx((1 + 1 / 1.58496 + 1 / 2.80735) / 4, abs=1e-4)
    with pytest.raises(ValueError, match="empty"):
        retrieval_metrics([])


def test_evaluate_and_save(minilm, tmp_path):
    scorer = CLIPRankScorer(minilm, ["a dog on grass", "men playing chess", "a red car"], show_progress_bar=False)
    metrics = evaluate_retrieval(scorer, ["a puppy on a lawn", "chess players", ""], [0, 1, 2])
    assert metrics["R@1"] == pytest.approx(2 / 3, abs=1e-3) and metrics["mean_rank"] == pytest.approx(5 / 3, abs=0.01)
    paths = save_results({"none": metrics}, tmp_path, name="t", title="toy", rewrites={"none": ["x"]})
    assert json.loads(paths["json"].read_text())["none"]["R@1"] == metrics["R@1"]
    assert paths["markdown"].read_text().startswith("## toy\n\n| method | R@1")
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert "| none | 0.667 |" in markdown_table({"none": metrics})


def test_cli_evaluate_without_a_rewriter(multi30k_path, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "grape_hf.cli",
            "evaluate",
            "--dataset",
            str(multi30k_path),
            "--max_images",
            "50",
            "--rewriter",
            "none",
            "--output_dir",
            str(tmp_path),
            "--name",
            "m30k",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "GRAPE_HF_CACHE": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| original query |" in result.stdout
    results = json.loads((tmp_path / "m30k.json").read_text())
    assert 0.0 <= results["original query"]["R@10"] <= 1.0


def test_cli_evaluate_with_a_prompt_only_rewriter(tiny_llama_dir, multi30k_path, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "grape_hf.cli",
            "evaluate",
            "--dataset",
            str(multi30k_path),
            "--max_images",
            "20",
            "--max_samples",
            "4",
            "--rewriter",
            "none",
            "--rewriter",
            f"tiny={tiny_llama_dir}",
            "--max_new_tokens",
            "4",
            "--shift",
            "multilingual",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "GRAPE_HF_CACHE": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| original query |" in result.stdout and "| tiny |" in result.stdout


def test_prompt_templates():
    assert set(available_shifts()) == {"multilingual", "long_form", "composed"}
    composed = get_prompt_template("composed")
    messages = composed.build_messages("make the circle green", reference="a red circle")
    assert "a red circle" in messages[-1]["content"] and "make the circle green" in messages[-1]["content"]
    with pytest.raises(ValueError, match="needs a reference caption"):
        composed.build_messages("make it green")
    with pytest.raises(ValueError, match="Unknown shift kind 'sideways'"):
        get_prompt_template("sideways")
    with pytest.raises(ValueError, match="must contain '\\{query\\}'"):
        PromptTemplate(user="no placeholder")
    own = get_prompt_template("multilingual", "Rewrite: {query}")
    assert own.build_messages("x") == [{"role": "user", "content": "Rewrite: x"}]
    assert PromptTemplate.from_dict(composed.to_dict()) == composed
    few = get_prompt_template(
        "multilingual", {"user": "DE: {query}", "examples": [{"query": "Hund", "rewrite": "dog"}]}
    )
    assert [m["role"] for m in few.build_messages("Katze")] == ["user", "assistant", "user"]
    assert few.build_messages("Katze")[:2] == [
        {"role": "user", "content": "DE: Hund"},
        {"role": "assistant", "content": "dog"},
    ]
    assert PromptTemplate.from_dict(few.to_dict()) == few


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
    for name in ("prompts", "retrievers", "scorer", "rewards", "evaluation", "configs"):
        for test in finder.find(importlib.import_module(f"grape_hf.{name}")):
            examples += len(test.examples)
            runner.run(test)
    assert examples >= 15
    assert runner.failures == 0
