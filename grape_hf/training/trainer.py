"""`GRAPETrainer`: TRL's `GRPOTrainer` with a fast path for CPUs and GPUs without vLLM.

Without vLLM, `GRPOTrainer` samples completions with the policy itself: a PEFT model whose every linear layer adds
two small LoRA matmuls to each decoding step, in the training precision. Decoding is dominated by such per-layer
work, so on a CPU (and on a GPU without vLLM) sampling costs several times what it would with the LoRA folded into
the weights. With `merged_generation=True` the trainer keeps a second, plain copy of the model in
`generation_dtype` (`"auto"`: bf16 where the device runs it natively, else fp32; see [`grape_hf.rewriting.devices`]),
refreshes it with $W + \\frac{\\alpha}{r} BA$ before each generation round, and generates with it, the way vLLM serves
merged weights in TRL's server mode. The loss and the
reference model are computed by the policy as before, so when the sampler's precision makes it differ slightly from
the policy, GRPO's importance ratio sees it like any off-policy sample.

The other options cut the work GRPO repeats for every completion of a group (see [`grape_hf.training.group_decoding`]):
`shared_prompt_forward` computes each distinct prompt once in the loss forward (`pack_completions` also packs a
group's completions into one sequence, so that padding costs nothing), `group_batches` keeps a group's completions
in one training batch so that this sharing applies, and `old_logps_from_sampler` takes the old
log-probabilities of a multi-step generation round from the sampler instead of a second forward of the policy.
The sampler always computes each distinct prompt once and samples by inverse CDF. By default the output layer gets
a contiguous input ([`contiguous_lm_head_inputs`]).
"""

from __future__ import annotations

import torch
from trl import GRPOTrainer

from .merged_sampler import MergedSampler


def contiguous_lm_head_inputs(model) -> None:
    """Make the output layer's input contiguous before its matmul.

    Causal LMs slice the hidden states to the last `logits_to_keep` positions, a strided view. When that view needs a
    gradient, `torch.matmul` cannot fold it into one matrix product and falls back to a batched product over a copy
    of the vocabulary matrix for every row (a 16 x 576 x 49,152 copy a forward for SmolLM2: 2.4 s of a 7.7 s forward
    and backward on this project's CPU). Copying the small slice instead gives the same logits.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "_grape_contiguous_inputs", False):
        return
    head.register_forward_pre_hook(lambda module, args: (args[0].contiguous(), *args[1:]) if args else None)
    head._grape_contiguous_inputs = True


def shuffle_groups(batch: dict, group_size: int) -> dict:
    """Permute a generation round's rows by whole groups of `group_size` consecutive rows (one prompt's completions).

    Falls back to TRL's row shuffle when the rows are not such groups (the prompt differs inside a group).

    Example:
    ```python
    >>> import torch
    >>> from grape_hf.training.trainer import shuffle_groups
    >>> batch = {"prompt_ids": torch.tensor([[1], [1], [2], [2], [3], [3]]), "advantages": torch.arange(6.0)}
    >>> rows = shuffle_groups(batch, 2)["prompt_ids"].flatten().tolist()
    >>> sorted(rows) == [1, 1, 2, 2, 3, 3] and all(rows[i] == rows[i + 1] for i in (0, 2, 4))
    True
    ```
    """
    from trl.trainer.utils import shuffle_sequence_dict

    prompts = batch["prompt_ids"]
    rows, groups = prompts.size(0), prompts.size(0) // group_size
    grouped = rows % group_size == 0 and bool(
        (prompts.view(groups, group_size, -1) == prompts[::group_size, None]).all()
    )
    if not grouped:
        return shuffle_sequence_dict(batch)
    order = (torch.randperm(groups) * group_size).repeat_interleave(group_size) + torch.arange(group_size).repeat(
        groups
    )

    def permute(value):
        if isinstance(value, torch.Tensor):
            return value[order.to(value.device)] if value.dim() else value
        return value if value is None else [value[i] for i in order.tolist()]

    return {key: permute(value) for key, value in batch.items()}


class GRAPETrainer(GRPOTrainer):
    """[`~trl.GRPOTrainer`] with `merged_generation` (see the module doc); everything else is TRL's.

    Example:
    ```python
    >>> from grape_hf.training.configs import GRAPEConfig
    >>> from grape_hf.training.trainer import GRAPETrainer
    >>> args = GRAPEConfig(output_dir="out", use_cpu=True, merged_generation=True)  # doctest: +SKIP
    >>> trainer = GRAPETrainer(  # doctest: +SKIP
    ...     model=path, reward_funcs=[reward], args=args, train_dataset=ds, peft_config=lora
    ... )
    >>> trainer.train()  # doctest: +SKIP
    ```
    """

    _sampler: MergedSampler | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if getattr(self.args, "contiguous_lm_head_inputs", True):
            contiguous_lm_head_inputs(self.accelerator.unwrap_model(self.model))
        self._stop_ids: set[int] | None = None
        if getattr(self.args, "stop_at_newline", False):
            if self.use_vllm:
                raise ValueError("stop_at_newline works with transformers generation; with vLLM, pass stop strings.")
            from ..rewriting.generation import stop_token_ids

            ids = stop_token_ids(self._tokenizer, stop_at_newline=True)
            self._stop_ids = set(ids)
            # Decoding stops at a newline too (each row on its own), instead of running on to max_completion_length.
            self.generation_config.eos_token_id = ids
            self.generation_kwargs["eos_token_id"] = ids

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
            from ..rewriting.devices import resolve_dtype

            self._sampler = MergedSampler(policy, resolve_dtype(self.args.generation_dtype, policy))
            self._sampler.synced_step = step
        elif self._sampler.synced_step != step:
            self._sampler.sync(policy, step)
        return self._sampler

    @property
    def _generate_every(self) -> int:
        """Optimizer micro-steps per generation round, as TRL counts them."""
        return self.args.steps_per_generation * self.num_iterations

    def _uses_sampler_logps(self) -> bool:
        return (
            getattr(self.args, "old_logps_from_sampler", False)
            and self.model.training
            and self._uses_merged_sampler()
            and self.args.gradient_accumulation_steps % self._generate_every != 0  # TRL would recompute them
        )

    def _generate_and_score_completions(self, inputs):
        if not self._uses_sampler_logps():
            return super()._generate_and_score_completions(inputs)
        # TRL recomputes old log-probabilities with the policy when a round spans several optimizer steps; the
        # sampler recorded them already. Present the round as aligned for that one check, then hand TRL the
        # sampler's values as the old log-probabilities (its vLLM-only correction field stays unused).
        accumulation = self.args.gradient_accumulation_steps
        self.args.gradient_accumulation_steps = self._generate_every
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self.args.gradient_accumulation_steps = accumulation
        sampled = output.pop("sampling_per_token_logps", None)
        if sampled is None:
            raise ValueError(
                "old_logps_from_sampler needs the sampler's log-probabilities, but this generation config samples "
                "with a warper grape_hf.training.group_decoding does not reproduce (typical_p, epsilon_cutoff or "
                "eta_cutoff). "
                "Remove it from generation_kwargs or set old_logps_from_sampler=False."
            )
        output["old_per_token_logps"] = sampled
        return output

    def _prepare_inputs(self, generation_batch):
        if not (getattr(self.args, "group_batches", False) and self.model.training) or self._is_vlm:
            return super()._prepare_inputs(generation_batch)
        from trl.trainer.utils import split_tensor_dict

        if self._step % self._generate_every == 0 or self._buffered_inputs is None:
            batch = self._generate_and_score_completions(generation_batch)
            self._buffered_inputs = split_tensor_dict(
                shuffle_groups(batch, self.num_generations), self.args.steps_per_generation
            )
        return self._buffered_inputs[self._step % self.args.steps_per_generation]

    def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
        if getattr(self.args, "lora_autocast_inputs", False) and self.args.bf16:
            from peft.helpers import disable_input_dtype_casting

            with disable_input_dtype_casting(self.accelerator.unwrap_model(model)):
                return self._logps_and_entropies(model, *args, **kwargs)
        return self._logps_and_entropies(model, *args, **kwargs)

    def _logps_and_entropies(
        self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False, **kwargs
    ):
        packed = getattr(self.args, "pack_completions", False)
        shared = (
            (packed or getattr(self.args, "shared_prompt_forward", False))
            and not self._is_vlm
            and not kwargs.get("compute_aux_loss")
            and not any(value is not None for key, value in kwargs.items() if key != "compute_aux_loss")
            and input_ids.size(1) > logits_to_keep
        )
        if not shared:
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, **kwargs
            )
        from trl.trainer.utils import entropy_from_logits

        from .group_decoding import packed_group_logps, shared_prompt_logps

        batch_size = batch_size or input_ids.size(0)
        all_logps, all_entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            rows = slice(start, start + batch_size)
            args = (model, input_ids[rows], attention_mask[rows], logits_to_keep, self.temperature)
            if packed:  # entropies from the packed positions' logits, kept differentiable only for the bonus
                logps, entropies = packed_group_logps(*args, compute_entropy=compute_entropy)
                all_logps.append(logps)
                if compute_entropy:
                    all_entropies.append(entropies if self._entropy_bonus_enabled else entropies.detach())
                continue
            logps, logits = shared_prompt_logps(*args)
            all_logps.append(logps)
            if compute_entropy:
                if self._entropy_bonus_enabled:
                    all_entropies.append(entropy_from_logits(logits))
                else:
                    with torch.no_grad():
                        all_entropies.append(entropy_from_logits(logits))
        entropies = torch.cat(all_entropies, dim=0) if compute_entropy else None
        return torch.cat(all_logps, dim=0), entropies, None

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, has_tool_images=False):
        completions, logps = self._sample_single_turn(prompt_ids, images, multimodal_fields, has_tool_images)
        if self._stop_ids is None:
            return completions, logps
        # TRL cuts a completion after the tokenizer's EOS only; a completion-format rewrite ends at its newline.
        ends = [next((i + 1 for i, t in enumerate(c) if t in self._stop_ids), len(c)) for c in completions]
        completions = [c[:end] for c, end in zip(completions, ends)]
        return completions, None if logps is None else [lp[:end] for lp, end in zip(logps, ends)]

    def _sample_single_turn(self, prompt_ids, images, multimodal_fields, has_tool_images=False):
        if not self._uses_merged_sampler() or images is not None:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, has_tool_images)
        from .group_decoding import shared_prefix_generate

        sampler = self.merged_sampler()
        device = self.accelerator.device
        completion_ids, logps = shared_prefix_generate(
            sampler.model, prompt_ids, self.generation_config, self._tokenizer.pad_token_id, return_logps=True
        )
        # As TRL: keep each completion up to and including its first EOS (or, with stop_at_newline, a newline).
        stop = torch.tensor(sorted(self._stop_ids or {self._tokenizer.eos_token_id}), device=completion_ids.device)
        is_eos = torch.isin(completion_ids, stop)
        eos_idx = torch.full((is_eos.size(0),), is_eos.size(1), dtype=torch.long, device=device)
        eos_idx[is_eos.any(dim=1)] = is_eos.int().argmax(dim=1)[is_eos.any(dim=1)]
        positions = torch.arange(is_eos.size(1), device=device).expand(is_eos.size(0), -1)
        keep = (positions <= eos_idx.unsqueeze(1)).cpu()
        completions = [c[m].tolist() for c, m in zip(completion_ids.cpu(), keep)]
        if logps is None:
            return completions, None
        return completions, [lp[m].tolist() for lp, m in zip(logps.float().cpu(), keep)]
