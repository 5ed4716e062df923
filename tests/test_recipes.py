"""The shipped run and hardware configs parse, with every key known (TrlParser refuses unknown keys too)."""

from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from trl import ModelConfig, TrlParser

from grape_hf import GRAPEScriptArguments
from grape_hf.trainer import GRAPEConfig

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
KNOWN = {f.name for cls in (GRAPEScriptArguments, GRAPEConfig, ModelConfig) for f in fields(cls)}


@pytest.mark.parametrize("config", sorted(RECIPES.glob("*/grape/config_*.yaml")), ids=lambda p: p.name)
def test_run_configs_use_known_keys(config):
    assert set(yaml.safe_load(config.read_text())) - KNOWN == set()


def test_vllm_config_passes_use_vllm_and_vllm_mode_through():
    config = RECIPES / "SmolLM2-135M-Instruct" / "grape" / "config_multi30k_de_vllm.yaml"
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


@pytest.mark.parametrize("config", sorted((RECIPES / "accelerate_configs").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_parse(config):
    parsed = yaml.safe_load(config.read_text())
    assert parsed["distributed_type"] in {"NO", "MULTI_GPU", "DEEPSPEED", "MULTI_CPU"}
    assert isinstance(parsed["num_processes"], int) and parsed["num_processes"] >= 1
