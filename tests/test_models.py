import logging

import pytest

from grape_hf.models import SMOLLM2_ID, dequantized_smollm2_path, resolve_model_path


def test_smollm2_offline_copy_has_a_fixed_tokenizer(smollm2_tokenizer_dir):
    from transformers import AutoConfig, AutoTokenizer

    assert dequantized_smollm2_path() == smollm2_tokenizer_dir
    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    assert tokenizer.eos_token == "<|im_end|>" == tokenizer.pad_token
    config = AutoConfig.from_pretrained(smollm2_tokenizer_dir)
    assert config.model_type == "llama" and not hasattr(config, "quantization_config")
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>assistant\n")


def test_resolve_model_path(smollm2_tokenizer_dir, tmp_path, caplog, monkeypatch):
    from grape_hf import models

    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
    assert resolve_model_path("someone/some-model") == "someone/some-model"
    monkeypatch.setattr(models, "_announced", set())  # as in a fresh process: nothing said yet
    with caplog.at_level(logging.WARNING, logger="grape_hf.models"):
        assert resolve_model_path(SMOLLM2_ID) == str(smollm2_tokenizer_dir)
        assert resolve_model_path(SMOLLM2_ID) == str(smollm2_tokenizer_dir)
    said = [r.getMessage() for r in caplog.records if "offline" in r.getMessage()]
    assert len(said) == 1  # said once per process, naming the id and the copy it uses
    assert SMOLLM2_ID in said[0] and str(smollm2_tokenizer_dir) in said[0]


def test_offline_table_names_each_copy(tmp_path, monkeypatch):
    from dataclasses import FrozenInstanceError

    from grape_hf.models import GEMMA3_270M_ID, OFFLINE_MODELS, dequantized_folder

    monkeypatch.setenv("GRAPE_HF_CACHE", str(tmp_path))
    assert set(OFFLINE_MODELS) == {SMOLLM2_ID, GEMMA3_270M_ID}
    assert dequantized_folder(SMOLLM2_ID) == tmp_path / "models" / "SmolLM2-135M-Instruct"
    assert dequantized_folder(GEMMA3_270M_ID) == tmp_path / "models" / "gemma-3-270m"
    gemma, smollm2 = OFFLINE_MODELS[GEMMA3_270M_ID], OFFLINE_MODELS[SMOLLM2_ID]
    assert gemma.rebuild_tokenizer and gemma.assemble and not gemma.special_tokens
    assert not smollm2.rebuild_tokenizer and dict(smollm2.special_tokens)["eos_token"] == "<|im_end|>"
    with pytest.raises(FrozenInstanceError):
        gemma.folder = "elsewhere"
    with pytest.raises(KeyError, match="someone/some-model.*google/gemma-3-270m"):
        dequantized_folder("someone/some-model")


def test_gemma_resolves_to_its_cached_copy_offline(tmp_path, monkeypatch):
    from grape_hf.models import GEMMA3_270M_ID, dequantized_folder

    monkeypatch.setenv("GRAPE_HF_CACHE", str(tmp_path))
    folder = dequantized_folder(GEMMA3_270M_ID)
    folder.mkdir(parents=True)  # a finished copy, as dequantized_path leaves it: nothing is re-built
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    assert resolve_model_path(GEMMA3_270M_ID) == str(folder)


def test_missing_wheel_names_the_pip_command(tmp_path, monkeypatch):
    from grape_hf.models import OFFLINE_MODELS, OfflineModel, dequantized_path

    monkeypatch.setenv("GRAPE_HF_CACHE", str(tmp_path))
    missing = OfflineModel("someone/tiny", "tiny", "no_such_gguf_wheel", "tiny.gguf", "pip install no-such-gguf-wheel")
    monkeypatch.setitem(OFFLINE_MODELS, missing.model_id, missing)
    assert missing.gguf_path() is None
    with pytest.raises(OSError, match="someone/tiny.*`pip install no-such-gguf-wheel`"):
        dequantized_path("someone/tiny")
