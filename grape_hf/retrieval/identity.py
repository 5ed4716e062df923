r"""What a retriever's embeddings depend on, as hashes: the weights, the model config and the tokenizer.

[`~grape_hf.retrieval.retrievers.Retriever.identity`] is built from these. The corpus cache
([`~grape_hf.retrieval.cache`]) and the FAISS index ([`~grape_hf.retrieval.index`]) store that identity and trust a
stored embedding only for a retriever with the same one, so a model re-saved with other weights, another maximum
length or another tokenizer is never served the old embeddings.

Example:
```python
>>> import torch
>>> from grape_hf.retrieval.identity import settings_hash, state_fingerprint
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> layer = torch.nn.Linear(2, 2)
>>> before = state_fingerprint(layer)
>>> with torch.no_grad():
...     _ = layer.weight.add_(1.0)
>>> before == state_fingerprint(layer), len(before)
(False, 64)
>>> settings_hash({"max_length": 128}) == settings_hash({"max_length": 256})
False
```
"""

from __future__ import annotations

import hashlib
import json

import torch


def settings_hash(settings: dict) -> str:
    """SHA-256 of JSON-able settings, independent of key order (values JSON cannot write are written as `str`)."""
    text = json.dumps(settings, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def state_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state (parameter and buffer names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def config_dict(config) -> dict:
    """A transformers config as a dict, without the keys that name where or by which version it was loaded."""
    values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {k: v for k, v in values.items() if not k.startswith("_") and k != "transformers_version"}


# Init arguments that say where a tokenizer was loaded from, not how it tokenizes.
_TOKENIZER_LOCATION_KEYS = frozenset(
    "name_or_path vocab_file merges_file tokenizer_file special_tokens_map_file is_local local_files_only cache_dir "
    "token use_auth_token revision".split()
)


def tokenizer_settings(tokenizer) -> dict:
    """A tokenizer's settings: its class, init arguments (not its file locations) and, for a fast tokenizer, a hash
    of its full pipeline (normaliser, pre-tokeniser, vocabulary, post-processor) without the truncation and padding
    that each call sets anew."""
    if tokenizer is None:
        return {}
    out = {"class": type(tokenizer).__qualname__}
    init = getattr(tokenizer, "init_kwargs", None)
    if isinstance(init, dict):
        out["init"] = {k: v for k, v in init.items() if k not in _TOKENIZER_LOCATION_KEYS}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        pipeline = json.loads(backend.to_str())
        pipeline.pop("truncation", None)
        pipeline.pop("padding", None)
        out["pipeline_sha256"] = hashlib.sha256(json.dumps(pipeline, sort_keys=True).encode()).hexdigest()
    for attr in ("context_length", "model_max_length", "do_lower_case"):
        if hasattr(tokenizer, attr) and attr not in out.get("init", {}):
            out[attr] = getattr(tokenizer, attr)
    return out
