"""`grape-hf evaluate` end to end, in a subprocess as a user runs it (grape_hf.cli)."""

import json
import subprocess
import sys
from pathlib import Path

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
