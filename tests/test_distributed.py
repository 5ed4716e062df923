import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from grape_hf import RankScorer

sys.path.insert(0, str(Path(__file__).parent))
from distributed_rewards import COMPLETIONS, CORPUS, TARGETS, rewards_and_metrics  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_processes_give_the_single_process_rewards_and_metrics(minilm, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
    out = tmp_path / "result.json"
    with socket.socket() as sock:  # a free port, so that concurrent runs on a shared machine do not collide
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "recipes" / "accelerate_configs" / "cpu_multi.yaml"),
        "--num_processes",
        "2",
        "--main_process_port",
        str(port),
        str(Path(__file__).parent / "distributed_rewards.py"),
        str(out),
        str(tmp_path / "cache"),
    ]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"result written: {out.exists()}\n{run.stderr[-3000:]}"
    result = json.loads(out.read_text())
    assert result["num_processes"] == 2
    # The corpus was embedded once: one rank wrote the cache, the other loaded it.
    assert sorted(result["cache_hits"][0]) == [False, True] and result["cache_hits"][1] == [True, True]
    for key, sampled in (("exact", None), ("sampled", 5)):
        scorer = RankScorer(minilm, CORPUS, sampled_negatives=sampled, show_progress_bar=False)
        rewards, metrics = rewards_and_metrics(scorer, COMPLETIONS, TARGETS, sampled)
        assert result[key]["rewards"] == pytest.approx(rewards, abs=1e-6)
        assert result[key]["metrics"] == pytest.approx(metrics, abs=1e-6)
