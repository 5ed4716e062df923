"""`grape-hf` refuses bad arguments before any embedding or rewriting (the dataset below does not even exist: the
error must come before it is read)."""

import pytest

from grape_hf.cli import main


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
