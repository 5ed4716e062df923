"""`grape-hf`: `evaluate` end to end in a subprocess as a user runs it, and bad arguments refused before any
embedding or rewriting (the dataset in those tests does not even exist: the error must come before it is read)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from grape_hf.cli import main

REPO = Path(__file__).resolve().parents[1]


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


def _evaluate_error(capsys, *extra) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--dataset", "/nonexistent/dataset", *extra])
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_unwritable_output_dir_fails_before_anything_runs(tmp_path, capsys):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the folder should be")
    err = _evaluate_error(capsys, "--output_dir", str(blocker))
    assert f"--output_dir '{blocker}' is a file, not a folder" in err
    err = _evaluate_error(capsys, "--output_dir", str(blocker / "sub"))
    assert f"--output_dir '{blocker / 'sub'}' is not writable" in err


def test_the_same_rewriter_name_twice_is_refused(tmp_path, capsys):
    err = _evaluate_error(capsys, "--rewriter", "none", "--rewriter", "none", "--output_dir", str(tmp_path))
    assert "--rewriter name 'original query' is given twice" in err
    err = _evaluate_error(capsys, "--rewriter", "m=/a", "--rewriter", "m=/b")
    assert "--rewriter name 'm' is given twice ('/a' and '/b')" in err
    assert "--rewriter first=/a --rewriter second=/b" in err


def test_cache_dir_that_is_a_file_is_refused(tmp_path, capsys):
    blocker = tmp_path / "cache"
    blocker.write_text("")
    err = _evaluate_error(capsys, "--cache_dir", str(blocker))
    assert f"cache_dir '{blocker}' is a file, not a folder" in err


def test_shapes_task_is_saved_for_dataset_name_and_not_over_a_folder(tmp_path, capsys):
    from grape_hf.cli import main
    from grape_hf.data import load_grape_dataset

    out = tmp_path / "shapes-long"
    assert (
        main(
            [
                "shapes-task",
                "--shift",
                "long_form",
                "--output_dir",
                str(out),
                "--train_images",
                "12",
                "--eval_images",
                "12",
                "--eval_queries",
                "3",
            ]
        )
        == 0
    )
    train = load_grape_dataset(str(out), split="train")
    assert len(train.queries) == 12 and len(train.corpus) == 12
    assert len(load_grape_dataset(str(out), split="validation").queries) == 3
    for argv, message in (
        (["--shift", "long_form", "--output_dir", str(out)], "is not empty; pass --overwrite"),
        (["--shift", "paraphrase", "--output_dir", str(tmp_path / "new")], "--shift 'paraphrase' is not a shapes"),
    ):
        with pytest.raises(SystemExit):
            main(["shapes-task", *argv])
        assert message in capsys.readouterr().err


def test_a_name_with_a_subfolder_is_written_not_lost(multi30k_path, tmp_path, capsys):
    argv = ["evaluate", "--dataset", str(multi30k_path), "--max_images", "20", "--rewriter", "none"]
    argv += ["--output_dir", str(tmp_path / "out"), "--name", "runs/first", "--cache_dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    assert "| original query |" in capsys.readouterr().out
    assert (tmp_path / "out" / "runs" / "first.md").read_text().startswith("## multi30k")
    assert json.loads((tmp_path / "out" / "runs" / "first.json").read_text())["original query"]["R@10"] >= 0


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("x" * 300, "Cannot write .* \\(File name too long\\)"),
        ("../outside", "name '../outside' is not a file name inside the output folder"),
        ("runs/", "name 'runs/' is not a file name inside the output folder"),
    ],
)
def test_a_bad_output_name_fails_before_anything_runs(tmp_path, capsys, name, message):
    import re

    err = _evaluate_error(capsys, "--output_dir", str(tmp_path), "--name", name)
    assert re.search(message, err), err


@pytest.mark.parametrize(
    ("flag", "value"), [("--max_samples", "-1"), ("--max_samples", "0"), ("--max_images", "-5"), ("--batch_size", "0")]
)
def test_a_non_positive_count_fails_before_anything_runs(capsys, flag, value):
    err = _evaluate_error(capsys, flag, value)
    assert f"{flag} must be a positive number, got {value}" in err


def test_a_missing_dataset_unknown_split_or_bad_retriever_is_a_usage_error(multi30k_path, capsys):
    err = _evaluate_error(capsys)  # /nonexistent/dataset
    assert "error: evaluate: --dataset: Cannot load the dataset '/nonexistent/dataset'" in err
    assert "Traceback" not in err
    for argv, message in (
        (["--dataset", str(multi30k_path), "--split", "test"], "--dataset: Unknown Multi30k split 'test'"),
        (["--dataset", str(multi30k_path), "--retriever", "faiss:foo"], "Unknown retriever spec 'faiss:foo'"),
        (["--dataset", str(multi30k_path), "--max_images", "5", "--retriever", "st:/nonexistent/model"],
         "--retriever: "),
    ):  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            main(["evaluate", *argv])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert message in err, err
        assert len(err.strip().splitlines()) == 2  # the usage line and the error line
