"""The shipped run and hardware configs parse, with every key known (TrlParser refuses unknown keys too)."""

from pathlib import Path

import pytest
import yaml
from trl import DPOConfig, ModelConfig, SFTConfig, TrlParser

from grape_hf import GRAPEScriptArguments
from grape_hf.training.configs import (
    DistillScriptArguments,
    GRAPEConfig,
    PreferenceScriptArguments,
    SFTScriptArguments,
)

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
# Stage X: module grape_hf/training/X.py, configs in recipes/<model>/X/, script recipes/X_grape.py.
STAGES = {
    "grpo": (GRAPEScriptArguments, GRAPEConfig, ModelConfig),
    "sft": (SFTScriptArguments, SFTConfig, ModelConfig),
    "distill": (DistillScriptArguments, SFTConfig, ModelConfig),
    "dpo": (PreferenceScriptArguments, DPOConfig, ModelConfig),
}
CONFIGS = sorted(RECIPES.rglob("config_*.yaml"))


def test_each_stage_has_a_module_a_recipe_folder_and_a_script():
    assert {path.parent.name for path in CONFIGS} == set(STAGES)
    for stage in STAGES:
        assert (RECIPES.parent / "grape_hf" / "training" / f"{stage}.py").is_file(), stage
        assert (RECIPES / f"{stage}_grape.py").is_file(), stage


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_run_configs_parse_with_their_stage_dataclasses(config):
    parser = TrlParser(STAGES[config.parent.name])
    # --use_cpu: GPU recipes ask for bf16, which TrainingArguments refuses on a CPU-only machine.
    script_args, training_args, model_args = parser.parse_args_and_config(
        args=["--config", str(config), "--use_cpu", "true"], fail_with_unknown_args=True
    )
    assert script_args.dataset_name and model_args.model_name_or_path
    assert training_args.output_dir and training_args.output_dir.startswith("outputs/")


def test_vllm_config_passes_use_vllm_and_vllm_mode_through():
    config = RECIPES / "SmolLM2-135M-Instruct" / "grpo" / "config_multi30k_de_vllm.yaml"
    parser = TrlParser((GRAPEScriptArguments, GRAPEConfig, ModelConfig))
    # No GPU here: bf16 is switched off on the command line, which overrides the YAML as in a real launch.
    script_args, training_args, model_args = parser.parse_args_and_config(
        ["--config", str(config), "--bf16", "false", "--use_cpu", "true", "--vllm_mode", "server"]
    )
    assert training_args.use_vllm is True
    assert training_args.vllm_mode == "server"  # the command line wins over the YAML's colocate
    assert yaml.safe_load(config.read_text())["vllm_mode"] == "colocate"
    assert training_args.vllm_gpu_memory_utilization == 0.3
    assert script_args.retriever == "sentence-transformers:all-MiniLM-L6-v2" and model_args.use_peft


def test_accelerate_configs_cover_the_hardware():
    names = {p.stem for p in (RECIPES / "accelerate_configs").glob("*.yaml")}
    assert names >= {"cpu", "cpu_multi", "single_gpu", "multi_gpu", "zero2", "zero3"}


@pytest.mark.parametrize("config", sorted((RECIPES / "accelerate_configs").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_parse(config):
    parsed = yaml.safe_load(config.read_text())
    assert parsed["distributed_type"] in {"NO", "MULTI_GPU", "DEEPSPEED", "MULTI_CPU"}
    assert isinstance(parsed["num_processes"], int) and parsed["num_processes"] >= 1
    if parsed["distributed_type"] == "DEEPSPEED":
        assert parsed["deepspeed_config"]["zero_stage"] in (2, 3)
