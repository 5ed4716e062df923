"""Which precision is fast on this machine: `dtype="auto"` resolved per device, said once.

bf16 halves memory traffic everywhere, but it is only *fast* where the hardware multiplies bf16 natively: CUDA GPUs
from Ampere on, and CPUs with AMX-BF16 or AVX-512-BF16. On other CPUs (AVX2 only, e.g. most AMD EPYC and older
Xeons) PyTorch emulates bf16 matmuls, and a 2048 x 2048 product runs at under 0.5 GFLOPS against ~67 in fp32
(benchmarks/RESULTS.md). So `"auto"` means: bf16 where it is native, else fp32. An explicit dtype always wins.

This module imports only the standard library and torch: it is copied into saved rewriter folders with the rest
of the remote code, so that `pipeline(model=folder, trust_remote_code=True)` makes the same choice.

Example:
```python
>>> import torch
>>> from grape_hf.rewriting.devices import resolve_dtype
>>> resolve_dtype("float32", "cpu")
torch.float32
>>> resolve_dtype("auto", "cpu") in (torch.bfloat16, torch.float32)
True
```
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)

_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}
_said: set[tuple[str, str]] = set()


def device_type(device: Any = None) -> str:
    """`"cuda"`, `"cpu"`, ... for a device, a device string, a model (its first parameter's device) or `None`
    (CUDA when available, else CPU)."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if hasattr(device, "parameters"):
        first = next(iter(device.parameters()), None)
        return "cpu" if first is None else first.device.type
    return torch.device(device).type


def cpu_description() -> str:
    """The CPU's model name and torch's kernel level, e.g. `"AMD EPYC (AVX2)"`."""
    name = _cpu_capabilities().get("cpu_name") or "unknown CPU"
    return f"{name} ({torch.backends.cpu.get_cpu_capability()})"


def _cpu_capabilities() -> dict:
    # `torch.cpu.get_capabilities` (torch >= 2.10) reads the CPU's feature flags through cpuinfo; older torch has
    # the private checks only.
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:
        return dict(get())
    return {
        "amx_bf16": bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()),
        "avx512_bf16": bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()),
    }


def native_bf16(device: Any = None) -> bool:
    """Whether `device` multiplies bf16 natively, i.e. whether bf16 is the fast path there.

    CUDA: [`torch.cuda.is_bf16_supported`] without emulation (Ampere and later). CPU: AMX-BF16 or AVX-512-BF16
    in `torch.cpu.get_capabilities()`. Anything else: `False`.
    """
    kind = device_type(device)
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if kind == "cpu":
        caps = _cpu_capabilities()
        return bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))
    return False


def resolve_dtype(dtype: Any = "auto", device: Any = None) -> torch.dtype:
    """The torch dtype to compute in: `dtype` as given, or for `"auto"` / `None` bf16 where `device` runs it
    natively ([`native_bf16`]) and fp32 elsewhere. The `"auto"` choice is logged once per device kind.

    Args:
        dtype (`str`, `torch.dtype` or `None`): `"auto"`, a name (`"float32"`, `"bfloat16"`, `"bf16"`,
            `"float16"`, ...) or a torch dtype.
        device: Where the model runs (a device, its name, a model), `None` for CUDA if available else CPU.

    Returns:
        `torch.dtype`
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        kind = device_type(device)
        chosen = torch.bfloat16 if native_bf16(kind) else torch.float32
        if (kind, str(chosen)) not in _said:
            _said.add((kind, str(chosen)))
            where = cpu_description() if kind == "cpu" else kind
            why = "native bf16" if chosen == torch.bfloat16 else "no native bf16, where bf16 is the slow path"
            logger.warning("dtype auto -> %s on %s (%s).", str(chosen).replace("torch.", ""), where, why)
        return chosen
    if isinstance(dtype, str) and dtype.lower() in _NAMES:
        return _NAMES[dtype.lower()]
    raise ValueError(
        f"dtype {dtype!r} is not one grape_hf knows: use 'auto' (bf16 where the device runs it natively, else "
        f"fp32), one of {sorted(set(_NAMES))}, or a torch dtype."
    )


def dtype_name(dtype: Any = "auto", device: Any = None) -> str:
    """[`resolve_dtype`] as the name configs and `from_pretrained` take: `"bfloat16"`, `"float32"`, `"float16"`."""
    return str(resolve_dtype(dtype, device)).replace("torch.", "")
