"""`GRAPETrainer`: TRL's `GRPOTrainer` that can sample from a merged, low-precision copy of the LoRA policy.

Without vLLM, `GRPOTrainer` samples completions with the policy itself: a PEFT model whose every linear layer adds
two small LoRA matmuls to each decoding step, in the training precision. Decoding is dominated by such per-layer
work, so on a CPU (and on a GPU without vLLM) sampling costs several times what it would with the LoRA folded into
the weights. With `merged_generation=True` the trainer keeps a second, plain copy of the model in
`generation_dtype` (bf16: the fast path on AMX CPUs and GPUs), refreshes it with $W + \\frac{\\alpha}{r} BA$ before each
generation round, and generates with it, the way vLLM serves merged weights in TRL's server mode. The loss, the
reference model and the old log-probabilities are computed by the policy as before, so when the sampler's precision
makes it differ slightly from the policy, GRPO's importance ratio sees it like any off-policy sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from trl import GRPOConfig, GRPOTrainer


@dataclass
class GRAPEConfig(GRPOConfig):
    """[`~trl.GRPOConfig`] plus grape_hf's sampling options.

    Example:
    ```python
    >>> from grape_hf.trainer import GRAPEConfig
    >>> GRAPEConfig(output_dir="out", use_cpu=True, merged_generation=True).generation_dtype
    'bfloat16'
    ```
    """

    merged_generation: bool = field(
        default=False,
        metadata={
            "help": "Sample completions from a merged copy of the LoRA policy in generation_dtype, refreshed before "
            "each generation round (transformers generation only; vLLM already serves merged weights)."
        },
    )
    generation_dtype: str = field(
        default="bfloat16", metadata={"help": "Weights of the merged sampling copy: 'bfloat16' or 'float32'."}
    )
    lora_autocast_inputs: bool = field(
        default=False,
        metadata={
            "help": "Under bf16 autocast, feed LoRA layers their bf16 inputs as they are instead of letting PEFT "
            "cast them to the fp32 adapter weights' dtype (autocast casts them back for the matmul): the same "
            "bf16 matmuls without two activation copies per layer. The adapter weights and their updates stay fp32."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.generation_dtype not in ("bfloat16", "float32", "float16"):
            raise ValueError(
                f"generation_dtype must be 'bfloat16', 'float16' or 'float32', got {self.generation_dtype!r}."
            )
        if self.merged_generation and self.use_vllm:
            raise ValueError("merged_generation samples with transformers; with use_vllm=True vLLM samples already.")


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

    def __init__(self, policy, dtype: torch.dtype = torch.bfloat16):
        from transformers import AutoModelForCausalLM

        base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
        self.model = AutoModelForCausalLM.from_config(base.config, dtype=dtype).to(base.device).eval()
        self.model.generation_config = base.generation_config
        self.synced_step: int | None = None
        self.sync(policy)

    @torch.no_grad()
    def sync(self, policy, step: int | None = None) -> None:
        self.model.load_state_dict(merged_state_dict(policy), strict=True)
        self.synced_step = step


class GRAPETrainer(GRPOTrainer):
    """[`~trl.GRPOTrainer`] with `merged_generation` (see the module doc); everything else is TRL's.

    Example:
    ```python
    >>> from grape_hf.trainer import GRAPEConfig, GRAPETrainer
    >>> args = GRAPEConfig(output_dir="out", use_cpu=True, merged_generation=True)  # doctest: +SKIP
    >>> GRAPETrainer(model=path, reward_funcs=[reward], args=args, train_dataset=ds, peft_config=lora).train()  # doctest: +SKIP
    ```
    """

    _sampler: MergedSampler | None = None

    def _uses_merged_sampler(self) -> bool:
        args = self.args
        if not getattr(args, "merged_generation", False):
            return False
        if self.use_vllm or getattr(self, "use_transformers_continuous_batching", False) or self._is_vlm or self.tools:
            return False
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise ValueError(
                "merged_generation keeps a full copy of the model per process; it is not supported under DeepSpeed "
                "or FSDP. Use vLLM there (use_vllm=True) or turn merged_generation off."
            )
        return True

    def merged_sampler(self) -> MergedSampler:
        """The sampling copy, synced with the policy's current weights (once per optimizer step at most)."""
        policy = self.accelerator.unwrap_model(self.model)
        step = self.state.global_step
        if self._sampler is None:
            self._sampler = MergedSampler(policy, getattr(torch, self.args.generation_dtype))
            self._sampler.synced_step = step
        elif self._sampler.synced_step != step:
            self._sampler.sync(policy, step)
        return self._sampler

    def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
        if getattr(self.args, "lora_autocast_inputs", False) and self.args.bf16:
            from peft.helpers import disable_input_dtype_casting

            with disable_input_dtype_casting(self.accelerator.unwrap_model(model)):
                return super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
        return super()._get_per_token_logps_and_entropies(model, *args, **kwargs)

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, has_tool_images=False):
        if not self._uses_merged_sampler() or images is not None:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, has_tool_images)
        from trl.trainer.utils import pad

        sampler = self.merged_sampler()
        device = self.accelerator.device
        prompts = [torch.tensor(ids) for ids in prompt_ids]
        input_ids = pad(prompts, padding_value=self._tokenizer.pad_token_id, padding_side="left").to(device)
        attention_mask = pad([torch.ones_like(t) for t in prompts], padding_value=0, padding_side="left").to(device)
        with torch.no_grad():
            generated = sampler.model.generate(
                input_ids=input_ids, attention_mask=attention_mask, generation_config=self.generation_config
            )
        completion_ids = generated[:, input_ids.size(1) :]
        # As TRL: keep each completion up to and including its first EOS.
        is_eos = completion_ids == self._tokenizer.eos_token_id
        eos_idx = torch.full((is_eos.size(0),), is_eos.size(1), dtype=torch.long, device=device)
        eos_idx[is_eos.any(dim=1)] = is_eos.int().argmax(dim=1)[is_eos.any(dim=1)]
        positions = torch.arange(is_eos.size(1), device=device).expand(is_eos.size(0), -1)
        keep = positions <= eos_idx.unsqueeze(1)
        return [c[m].tolist() for c, m in zip(completion_ids.cpu(), keep.cpu())], None
