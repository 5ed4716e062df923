import logging

import pytest
import torch

from grape_hf.rewriting.devices import cpu_description, device_type, dtype_name, native_bf16, resolve_dtype


def test_explicit_dtypes_win():
    assert resolve_dtype("float32", "cpu") is torch.float32
    assert resolve_dtype("bf16", "cpu") is torch.bfloat16
    assert resolve_dtype(torch.float16) is torch.float16
    assert dtype_name("bfloat16") == "bfloat16"


def test_auto_follows_the_cpu_flags():
    caps = torch.cpu.get_capabilities()
    native = bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))
    assert native_bf16("cpu") is native
    assert resolve_dtype("auto", "cpu") is (torch.bfloat16 if native else torch.float32)
    assert resolve_dtype(None, "cpu") is resolve_dtype("auto", "cpu")
    # An AVX2-only CPU (this project's AMD EPYC machines) must not get the emulated, slow bf16.
    if torch.backends.cpu.get_cpu_capability() == "AVX2":
        assert resolve_dtype("auto", "cpu") is torch.float32


def test_auto_is_said_once(caplog):
    import grape_hf.rewriting.devices as devices

    devices._said.clear()
    with caplog.at_level(logging.WARNING, logger="grape_hf.rewriting.devices"):
        resolve_dtype("auto", "cpu")
        resolve_dtype("auto", torch.device("cpu"))
    said = [r.getMessage() for r in caplog.records if "dtype auto" in r.getMessage()]
    assert len(said) == 1 and cpu_description() in said[0]


def test_device_of_a_model_and_bad_names():
    assert device_type(torch.nn.Linear(2, 2)) == "cpu"
    assert device_type("cpu") == "cpu"
    with pytest.raises(ValueError, match="'float8'.*'auto'"):
        resolve_dtype("float8")


def test_grape_config_leaves_autocast_to_the_device():
    from grape_hf.training.configs import GRAPEConfig

    args = GRAPEConfig(output_dir="out", use_cpu=True, report_to="none")
    assert args.bf16 is native_bf16("cpu") and args.generation_dtype == "auto"
    assert GRAPEConfig(output_dir="out", use_cpu=True, bf16=True, report_to="none").bf16 is True  # explicit wins
    with pytest.raises(ValueError, match="generation_dtype"):
        GRAPEConfig(output_dir="out", use_cpu=True, generation_dtype="int8", report_to="none")
