"""Retrieval metrics and evaluation before/after rewriting (grape_hf.metrics, grape_hf.evaluation)."""

import json

import pytest

from grape_hf import RankScorer
from grape_hf.evaluation import evaluate_retrieval, markdown_table, query_ranks, save_results
from grape_hf.metrics import paired_recall_test, retrieval_metrics


def test_metrics_by_hand():
    m = retrieval_metrics([1, 2, 6, 11])
    assert m["R@1"] == 0.25 and m["R@5"] == 0.5 and m["R@10"] == 0.75
    assert m["MRR"] == pytest.approx((1 + 1 / 2 + 1 / 6 + 1 / 11) / 4, abs=1e-4)
    assert m["nDCG@10"] == pytest.approx((1 + 1 / 1.58496 + 1 / 2.80735) / 4, abs=1e-4)
    with pytest.raises(ValueError, match="empty"):
        retrieval_metrics([])


def test_paired_recall_test_counts_discordant_queries_only():
    # 10 queries only a retrieves, 0 only b: p = 2 / 2**10; 90 ties do not move it.
    result = paired_recall_test([1] * 60 + [50] * 40, [1] * 50 + [50] * 50)
    assert result == {"wins": 10, "losses": 0, "ties": 90, "delta": 0.1, "p_value": 0.00195}
    # Balanced disagreement is no evidence; identical ranks give p = 1.
    assert paired_recall_test([1, 50, 1, 50], [50, 1, 50, 1])["p_value"] == 1.0
    assert paired_recall_test([3, 30], [3, 30]) == {"wins": 0, "losses": 0, "ties": 2, "delta": 0.0, "p_value": 1.0}
    # The cut-off matters: rank 7 is a hit at k=10, a miss at k=5.
    assert paired_recall_test([7], [20], k=5)["wins"] == 0 and paired_recall_test([7], [20], k=10)["wins"] == 1
    with pytest.raises(ValueError, match="one rank per query"):
        paired_recall_test([1, 2], [1, 2, 3])


def test_evaluate_and_save(minilm, tmp_path):
    scorer = RankScorer(minilm, ["a dog on grass", "men playing chess", "a red car"], show_progress_bar=False)
    metrics = evaluate_retrieval(scorer, ["a puppy on a lawn", "chess players", ""], [0, 1, 2])
    assert query_ranks(scorer, ["a puppy on a lawn", "chess players", ""], [0, 1, 2]).tolist()[2] == 3  # empty: last
    assert metrics["R@1"] == pytest.approx(2 / 3, abs=1e-3) and metrics["mean_rank"] == pytest.approx(5 / 3, abs=0.01)
    paths = save_results({"none": metrics}, tmp_path, name="t", title="toy", rewrites={"none": ["x"]})
    assert json.loads(paths["json"].read_text())["none"]["R@1"] == metrics["R@1"]
    assert paths["markdown"].read_text().startswith("## toy\n\n| method | R@1")
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert "| none | 0.667 |" in markdown_table({"none": metrics})


def test_results_under_a_subfolder_name_are_written_and_checked_first(tmp_path):
    from grape_hf.evaluation import check_result_paths

    planned = check_result_paths(tmp_path, "runs/first")
    assert (tmp_path / "runs").is_dir() and not list((tmp_path / "runs").iterdir())  # folders made, files not yet
    paths = save_results({"none": {"R@1": 0.5}}, tmp_path, name="runs/first", rewrites={"none": ["q"]})
    assert paths == planned and paths["markdown"] == tmp_path / "runs" / "first.md"
    (tmp_path / "taken.json").mkdir()
    with pytest.raises(ValueError, match="taken.json': a folder is in the way"):
        check_result_paths(tmp_path, "taken")
