"""The merged sampler: a plain copy of a LoRA policy with every update folded in, to sample GRPO's completions fast.

Decoding with a PEFT model pays two small LoRA matmuls per linear layer each step; [`MergedSampler`] holds the
policy's weights merged ($W + \\frac{\\alpha}{r} BA$, [`merged_state_dict`]) in a plain causal LM of the
generation dtype and is refreshed ([`MergedSampler.sync`]) before each generation round, the way vLLM serves merged
weights in TRL's server mode. [`~grape_hf.training.trainer.GRAPETrainer`] samples with it under
`merged_generation=True`.
"""

from __future__ import annotations

import copy

import torch


@torch.no_grad()
def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """The state dict of `model` with every LoRA update folded into its base weight ($W + \\frac{\\alpha}{r} BA$),
    under the plain model's parameter names; a model without LoRA gives its own state dict."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    if not isinstance(model, PeftModel):
        return dict(model.state_dict())
    base = model.get_base_model()
    adapter = model.active_adapter
    state: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            layer = module.get_base_layer()
            weight = layer.weight
            if adapter in module.lora_A and not module.merged:
                weight = weight.float() + module.get_delta_weight(adapter).float()
            state[f"{name}.weight"] = weight
            if getattr(layer, "bias", None) is not None:
                state[f"{name}.bias"] = layer.bias
    for key, value in base.state_dict().items():
        if "lora_" not in key and ".base_layer." not in key:
            state.setdefault(key, value)
    return state


class MergedSampler:
    """A plain causal LM in `dtype` that mirrors a (PEFT) policy's merged weights; `sync` refreshes it.

    Example:
    ```python
    >>> sampler = MergedSampler(policy, torch.bfloat16)  # doctest: +SKIP
    >>> sampler.sync(policy); sampler.model.generate(**inputs)  # doctest: +SKIP
    ```
    """

    def __init__(self, policy, dtype: torch.dtype = torch.bfloat16, attn_implementation: str | None = None):
        from transformers import AutoModelForCausalLM
        from transformers.initialization import no_init_weights

        from .group_decoding import register_grouped_decode_attention

        base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
        # SDPA whatever the policy uses, decoding grouped-query heads over the cache as stored: decoding one token is
        # where the fused kernel pays, and where eager attention or SDPA's `repeat_kv` copy the whole cache per step.
        # A copy of the config: `from_config` writes the attention implementation into the config it is given, which
        # would switch the policy's own attention too.
        with no_init_weights():  # every weight is overwritten by `sync` below
            self.model = AutoModelForCausalLM.from_config(
                copy.deepcopy(base.config),
                dtype=dtype,
                attn_implementation=attn_implementation or register_grouped_decode_attention(),
            )
        self.model = self.model.to(base.device).eval()
        self.model.generation_config = base.generation_config
        self.synced_step: int | None = None
        self.sync(policy)

    @torch.no_grad()
    def sync(self, policy, step: int | None = None) -> None:
        self.model.load_state_dict(merged_state_dict(policy), strict=True)
        self.synced_step = step
