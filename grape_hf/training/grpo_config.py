"""`GRAPEConfig`: TRL's `GRPOConfig` plus grape_hf's fast path for CPUs and GPUs without vLLM (the merged sampler,
packed completions, the generation dtype), as TRL keeps a trainer's config beside it."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig


@dataclass
class GRAPEConfig(GRPOConfig):
    """[`~trl.GRPOConfig`] plus grape_hf's sampling options.

    Example:
    ```python
    >>> from grape_hf.training.configs import GRAPEConfig
    >>> args = GRAPEConfig(output_dir="out", use_cpu=True, merged_generation=True)
    >>> args.generation_dtype
    'auto'
    >>> from grape_hf.rewriting.devices import native_bf16
    >>> args.bf16 == native_bf16("cpu")  # bf16 autocast, when not set, only where bf16 is native
    True
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
        default="auto",
        metadata={
            "help": "Weights of the merged sampling copy: 'auto' (bf16 where the device runs it natively: CUDA from "
            "Ampere on, CPUs with AMX or AVX-512-BF16; else fp32), 'bfloat16', 'float16' or 'float32'."
        },
    )
    lora_autocast_inputs: bool = field(
        default=False,
        metadata={
            "help": "Under bf16 autocast, feed LoRA layers their bf16 inputs as they are instead of letting PEFT "
            "cast them to the fp32 adapter weights' dtype (autocast casts them back for the matmul): the same "
            "bf16 matmuls without two activation copies per layer. The adapter weights and their updates stay fp32."
        },
    )

    shared_prompt_forward: bool = field(
        default=False,
        metadata={
            "help": "Compute each distinct prompt once per batch in the loss and old-log-probability forwards, and "
            "let its completions share it through the KV cache "
            "(grape_hf.training.group_decoding.shared_prompt_logps); the result equals the plain forward's. "
            "Text-only models without a custom loss path."
        },
    )

    pack_completions: bool = field(
        default=False,
        metadata={
            "help": "In the loss and old-log-probability forwards, pack each group's completions after its prompt "
            "in one sequence with a block mask (grape_hf.training.group_decoding.packed_group_logps): the prompt "
            "computed once and no work on padding. Needs eager or SDPA attention; text-only models."
        },
    )
    contiguous_lm_head_inputs: bool = field(
        default=True,
        metadata={
            "help": "Give the output layer a contiguous input (see "
            "grape_hf.training.trainer.contiguous_lm_head_inputs): the same logits, without a copy of the vocabulary "
            "matrix per row in the loss forward. On by default; off reproduces plain GRPOTrainer."
        },
    )
    old_logps_from_sampler: bool = field(
        default=False,
        metadata={
            "help": "With merged_generation and several optimizer steps per generation round, take GRPO's old "
            "log-probabilities from the sampler (its log-probability of each drawn token, recorded while sampling) "
            "instead of a second forward of the policy over every completion: the sampler is the policy that drew "
            "them, so the importance ratio also covers its low-precision copy's difference from the policy."
        },
    )
    group_batches: bool = field(
        default=False,
        metadata={
            "help": "Split a generation round into training batches of whole groups (all completions of a prompt "
            "together, groups in random order) instead of TRL's shuffle of single completions, so that "
            "shared_prompt_forward computes each batch's few prompts once. Text-only, single process."
        },
    )
    stop_at_newline: bool = field(
        default=False,
        metadata={
            "help": "End each completion at its first newline token (kept, like an EOS), as inference does for a "
            "completion-format prompt: a base model's rewrite is one line. The GRPO stage sets it from the template; "
            "transformers generation only."
        },
    )

    def __post_init__(self):
        if self.bf16 is None and not self.fp16:
            # TRL turns bf16 autocast on whenever it is not set; on a CPU without native bf16 that is the slow path.
            from ..rewriting.devices import native_bf16

            self.bf16 = native_bf16("cpu" if self.use_cpu else None)
        super().__post_init__()
        if self.generation_dtype not in ("auto", "bfloat16", "float32", "float16"):
            raise ValueError(
                f"generation_dtype must be 'auto', 'bfloat16', 'float16' or 'float32', got {self.generation_dtype!r}."
            )
        if self.merged_generation and self.use_vllm:
            raise ValueError("merged_generation samples with transformers; with use_vllm=True vLLM samples already.")
