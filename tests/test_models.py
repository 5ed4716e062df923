import logging

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
