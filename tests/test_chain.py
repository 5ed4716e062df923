"""StageChain: stages trained one from another into a stage cache, a row each, and a row shipped with its lineage."""

import shutil

import pytest

from grape_hf.training.chain import StageChain

METHODS = {
    "warm_start": ("sft", "sft"),
    "self_distillation": ("distill", "distill"),
    "grape_rank": ("grpo", "grpo-rank"),
}
CONFIGS = {"sft": "sft.yaml", "distill": "distill.yaml", "grpo": "grpo.yaml"}
ROW = {"R@1": 0.1, "R@5": 0.2, "R@10": 0.3, "MRR": 0.15, "nDCG@10": 0.2, "mean_rank": 9.0}


def test_methods_and_variants_map_to_their_folders(tmp_path):
    chain = StageChain(tmp_path, METHODS, CONFIGS, measure=lambda method, source: dict(ROW))
    assert chain.folder("grape_rank") == tmp_path / "grpo-rank"
    assert chain.folder("grape_rank_long_r10") == tmp_path / "grpo-rank-long-r10"
    assert chain.is_trained("self_distillation_r1") and not chain.is_trained("zero_shot")
    with pytest.raises(ValueError, match="'zero_shot' is not a trained method: use one of"):
        chain.folder("zero_shot")
    with pytest.raises(FileNotFoundError, match="self_distillation: no finished stage at .*distill; train it first"):
        chain.finished_folder("self_distillation")
    with pytest.raises(ValueError, match=r"methods name the stages \['ppo'\]"):
        StageChain(tmp_path, {"x": ("ppo", "ppo")}, CONFIGS, measure=dict)
    with pytest.raises(ValueError, match=r"no recipe config for the stages \['grpo'\]"):
        StageChain(tmp_path, METHODS, {"sft": "a", "distill": "b"}, measure=dict)


def test_lineage_follows_started_from_and_ship_keeps_a_better_shipped_rewriter(tmp_path):
    rows = {
        "zero_shot": dict(ROW),
        "warm_start": {**ROW, "started_from": None},
        "self_distillation": {**ROW, "started_from": "warm_start"},
        "grape_rank_long": {**ROW, "started_from": "self_distillation"},
        "previously_shipped": {**ROW, "R@10": 0.3},
    }
    chain = StageChain(tmp_path, METHODS, CONFIGS, measure=lambda method, source: dict(ROW), rows=rows, log=str)
    assert chain.lineage("grape_rank_long") == ["warm_start", "self_distillation", "grape_rank_long"]
    assert chain.lineage("warm_start") == ["warm_start"]
    # R@10 0.3 does not beat the shipped 0.3: nothing is shipped, and no stage folder is needed to say so
    assert chain.ship("grape_rank_long", tmp_path / "dest", before="zero_shot") is False
    assert not (tmp_path / "dest").exists()
    with pytest.raises(ValueError, match=r"ship 'zero_shot': give a trained method with a row"):
        chain.ship("zero_shot", tmp_path / "dest", before="zero_shot")


@pytest.mark.slow
def test_a_chain_trains_once_measures_again_after_retraining_and_ships_its_lineage(
    warm_start, multi30k_path, minilm, tmp_path
):
    from grape_hf import RankScorer
    from grape_hf.data import load_multi30k
    from grape_hf.evaluation import evaluate_retrieval
    from grape_hf.rewriting.folder import RewriterConfig
    from grape_hf.training.stages import load_fast_rewriter

    val = load_multi30k(multi30k_path, split="validation", max_images=20, max_queries=4)
    scorer = RankScorer(minilm, val.corpus, show_progress_bar=False)
    measured = []

    def measure(method: str, source: str) -> dict:  # the held-out R@k of the rewriter folder
        measured.append(method)
        rewriter = load_fast_rewriter(source, dtype="float32", max_new_tokens=6)
        texts = [r[0] for r in rewriter.rewrite(list(val.queries["query"]), batch_size=4)]
        return evaluate_retrieval(scorer, texts, list(val.queries["target_id"]))

    distill = tmp_path / "distill.yaml"
    distill.write_text(
        "model_name_or_path: unused\nmax_train_images: 12\nmax_train_samples: 4\nrounds: 1\nnum_samples: 2\n"
        "max_new_tokens: 6\nsample_dtype: float32\nmax_steps: 1\nper_device_train_batch_size: 2\nmax_length: 128\n"
    )
    out = tmp_path / "cache"
    shutil.copytree(warm_start, out / "sft")  # a finished stage in the cache: measured, not trained again
    chain = StageChain(
        out,
        METHODS,
        {"sft": "unused.yaml", "distill": distill, "grpo": "unused.yaml"},
        measure=measure,
        overrides=["--dataset_name", str(multi30k_path), "--use_cpu", "true", "--report_to", "none"],
        command="python chain.py",
        log=str,
    )
    assert chain.train("warm_start") == out / "sft"
    folder = chain.train("self_distillation", start="warm_start", args=["--seed", "1"])
    row = chain.rows["self_distillation"]
    assert folder == out / "distill" and (folder / "grape_rewriter.json").is_file()
    assert row["started_from"] == "warm_start" and row["distill_args"] == ["--seed", "1"]
    assert row["command"] == "python chain.py" and row["train_cpu_minutes"] >= 0 and 0 <= row["R@10"] <= 1
    assert RewriterConfig.load(folder).training["stages"] == ["sft", "self_distillation"]
    chain.train("self_distillation", start="warm_start", args=["--seed", "1"])
    assert measured == ["warm_start", "self_distillation"]  # finished and recorded: neither trained nor measured
    shutil.rmtree(folder)  # a fresh cache: trained again, so its recorded row is measured again
    chain.train("self_distillation", start="warm_start", args=["--seed", "1"])
    assert measured == ["warm_start", "self_distillation", "self_distillation"] and folder.is_dir()

    chain.rows["before"] = dict(ROW)
    config = RewriterConfig.load(folder)  # a stage of a local base model: name its Hub id, as a user publishing would
    config.base_model = "HuggingFaceTB/SmolLM2-135M-Instruct"
    config.save(folder)
    assert chain.ship("self_distillation", tmp_path / "shipped", before="before", evaluation={"num_queries": 4})
    shipped = RewriterConfig.load(tmp_path / "shipped")
    assert set(shipped.evaluation) == {"before", "warm_start", "after", "num_queries"}
    assert shipped.evaluation["after"]["R@10"] == chain.rows["self_distillation"]["R@10"]
    assert shipped.training["stages"] == [
        "warm_start (grape_hf.training.sft)",
        "self_distillation (grape_hf.training.distill)",
    ]
    assert shipped.training["command"] == "python chain.py" and shipped.training["method"] == "self_distillation"
