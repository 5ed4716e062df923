"""GRPOTrainer with GRAPE rewards on a tiny Llama (hidden size 16, SmolLM2's real tokenizer), and the recipe."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grape_hf import GRAPERewardFunction, RankScorer
from grape_hf.data import load_multi30k
from grape_hf.rewriting.prompts import get_prompt_template, to_prompt_dataset

REPO = Path(__file__).resolve().parents[1]


def test_grpo_trainer_two_steps_changes_parameters_and_logs_grape_metrics(
    tiny_llama_dir, minilm, multi30k_path, tmp_path
):
    from trl import GRPOConfig, GRPOTrainer

    data = load_multi30k(multi30k_path, split="validation", max_images=12)
    scorer = RankScorer(minilm, data.corpus, show_progress_bar=False)
    dataset = to_prompt_dataset(data, get_prompt_template("multilingual"))
    args = GRPOConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=3,
        num_generations=3,
        max_completion_length=8,
        learning_rate=1e-2,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        seed=0,
    )
    trainer = GRPOTrainer(
        model=str(tiny_llama_dir),
        reward_funcs=[GRAPERewardFunction(scorer, reward="rank")],
        args=args,
        train_dataset=dataset,
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p)]
    assert changed, "no parameter changed"
    logs = [entry for entry in trainer.state.log_history if "rewards/grape_rank/mean" in entry]
    assert len(logs) == 2
    for key in ("grape/mean_rank", "grape/R@10", "grape/MRR", "grape/nontarget_similarity"):
        assert all(key in entry for entry in logs), key
    assert all(1 <= entry["grape/mean_rank"] <= 12 for entry in logs)


def test_recipe_end_to_end_with_adapter(tiny_llama_dir, multi30k_path, tmp_path):
    """The real recipe script, through TrlParser, on a tiny model: trains, evaluates, saves a rewriter folder."""
    out = tmp_path / "run"
    config = tmp_path / "config.yaml"
    config.write_text(
        f"model_name_or_path: {tiny_llama_dir}\nuse_peft: true\nlora_r: 4\nlora_alpha: 8\n"
        f"lora_target_modules: all-linear\ndataset_name: {multi30k_path}\nmax_train_images: 16\n"
        "max_eval_images: 24\nmax_eval_samples: 6\nretriever: sentence-transformers:all-MiniLM-L6-v2\n"
        f"reward_funcs: [rank]\ncorpus_cache_dir: {tmp_path / 'cache'}\noutput_dir: {out}\nmax_steps: 1\n"
        "per_device_train_batch_size: 3\nnum_generations: 3\nmax_completion_length: 8\nreport_to: none\n"
        f"use_cpu: true\nsave_strategy: 'no'\neval_batch_size: 4\ncompare_rewriters: [{tiny_llama_dir}]\n"
    )
    result = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "grpo_grape.py"), "--config", str(config), "--learning_rate", "1e-3"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| original query |" in result.stdout and "| GRAPE rewriter |" in result.stdout
    meta = json.loads((out / "grape_rewriter.json").read_text())
    assert meta["retriever"] == "sentence-transformers:all-MiniLM-L6-v2" and meta["reward"] == "rank"
    assert meta["training"]["learning_rate"] == 1e-3  # the command line overrides the YAML
    assert set(meta["evaluation"]["after"]) >= {"R@1", "R@5", "R@10", "MRR", "nDCG@10"}
    assert meta["evaluation"]["corpus_size"] == 24 and meta["evaluation"]["num_queries"] == 6
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_llama_dir)
    assert (out / "README.md").read_text().count("R@10") >= 1  # the GRAPE model card
    results = json.loads((out / "eval" / "before_after.json").read_text())
    # compare_rewriters: one more row on the same queries (the plain base model, with the built-in prompt).
    assert list(results) == ["original query", "zero-shot rewriter", "GRAPE rewriter", tiny_llama_dir.name]
    assert f"| {tiny_llama_dir.name} |" in result.stdout
    assert (out / "eval" / "before_after.png").stat().st_size > 1000
    # What the recipe saved loads in one line, with the prompt it was trained with.
    from transformers import pipeline

    import grape_hf  # noqa: F401  (registers "grape-rewrite")

    rewriter = pipeline("grape-rewrite", model=str(out), max_new_tokens=4)
    result = rewriter("Ein Hund rennt.")
    assert result["query"] == "Ein Hund rennt." and isinstance(result["rewrite"], str)
    assert "Translate the German image description" in result["prompt"]


@pytest.mark.parametrize(
    "override,message",
    [
        ({"reward_funcs": ["recall"]}, "Unknown reward 'recall'"),
        ({"shift": "sideways"}, "Unknown shift 'sideways'"),
        ({"retriever": "faiss:x"}, "Unknown retriever spec 'faiss:x'"),
        ({"compare_rewriters": ["no-such-rewriter"]}, "'no-such-rewriter' is neither a folder here"),
        (
            {"compare_rewriters": ["gemma3-270m-grape-multi30k-de"], "evaluate_before_after": False},
            "set evaluate_before_after: true",
        ),
    ],
)
def test_script_arguments_validate(override, message):
    from grape_hf import GRAPEScriptArguments

    with pytest.raises(ValueError, match=message):
        GRAPEScriptArguments(dataset_name="x", **override)
