"""Group-aware decoding and log-probabilities: a GRPO group's prompt is computed once, not once per completion.

GRPO samples `num_generations` completions of each prompt and then scores every completion with the policy. Both
`generate` and TRL repeat the prompt before the forward pass, so a prompt of ~80 tokens with completions of ~30 is
computed eight times over, and on a CPU that is most of the work. The functions here compute each distinct prompt
once and let its completions share it:

- [`shared_prefix_generate`] prefills each distinct prompt once, repeats its cache for its completions, and decodes
  with inverse-CDF sampling (one uniform draw per row against the cumulative probabilities: the same categorical
  distribution as `torch.multinomial`, whose CPU kernel draws an exponential variate for every vocabulary entry);
- [`shared_prompt_logps`] gives the per-token log-probabilities of the completions, with gradients, from one prompt
  forward per distinct prompt and one forward of the completions over the repeated cache. The result equals the
  plain forward's (same positions, same mask); only the repeated prompt work is gone;
- [`packed_group_logps`] gives the same from one sequence per group: the prompt, then its completions each up to its
  own end, under a block mask, so that completions shorter than the batch's longest cost nothing either.

They work on causal LMs of `transformers` that accept `past_key_values` (and, for packing, a 4-D attention mask),
PEFT-wrapped or not. The inverse-CDF sampler itself lives in [`grape_hf.rewriting.generation`], the self-contained
generation path that rewriter folders ship with, and is re-exported here.
"""

from __future__ import annotations

import torch

from ..rewriting.generation import (
    InverseCDFSampler,
    ScoreRecorder,
    inverse_cdf_sampling,
    prefill_prompts,
    sampling_processors,
)

__all__ = [
    "GROUPED_DECODE_ATTENTION",
    "InverseCDFSampler",
    "ScoreRecorder",
    "grouped_decode_attention",
    "packed_group_logps",
    "register_grouped_decode_attention",
    "sampling_processors",
    "shared_prefix_generate",
    "shared_prompt_logps",
    "unique_rows",
]


def unique_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct rows of a 2-D tensor in order of first appearance, and each row's index among them.

    Example:
    ```python
    >>> import torch
    >>> from grape_hf.training.group_decoding import unique_rows
    >>> unique, inverse = unique_rows(torch.tensor([[5, 6], [1, 2], [5, 6]]))
    >>> unique.tolist(), inverse.tolist()
    ([[5, 6], [1, 2]], [0, 1, 0])
    ```
    """
    _, inverse = torch.unique(rows, dim=0, return_inverse=True)
    # torch.unique sorts; renumber by first appearance so groups keep the batch's order.
    first = torch.full((int(inverse.max()) + 1,), rows.size(0), dtype=torch.long, device=rows.device)
    first.scatter_reduce_(0, inverse, torch.arange(rows.size(0), device=rows.device), reduce="amin")
    order = torch.argsort(first)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=rows.device)
    return rows[first[order]], rank[inverse]


def _left_pad(sequences: list[list[int]], pad_token_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, length - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, length - len(seq) :] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def shared_prefix_generate(
    model, prompt_ids: list[list[int]], generation_config, pad_token_id: int, return_logps: bool = False
):
    """Generate one completion per prompt in `prompt_ids`, computing each distinct prompt once.

    Returns the completion token ids, shape `(len(prompt_ids), new_tokens)` (rows that stopped early are padded
    as `generate` pads them). With `do_sample=True` the tokens are drawn by [`InverseCDFSampler`] after the
    config's temperature/top-k/top-p/min-p warpers; any other sampling warper falls back to `generate`'s sampling
    (still with the shared prefill). With `return_logps=True` it returns `(ids, logps)`: the sampler's
    log-probability of each drawn token after temperature, the same shape as `ids` (None when not sampled by
    [`InverseCDFSampler`]).

    Example:
    ```python
    >>> from transformers import GenerationConfig
    >>> from grape_hf.training.group_decoding import shared_prefix_generate
    >>> config = GenerationConfig(max_new_tokens=16, do_sample=True, eos_token_id=tok.eos_token_id)  # doctest: +SKIP
    >>> shared_prefix_generate(model, [ids, ids, ids, other], config, tok.pad_token_id).shape  # doctest: +SKIP
    torch.Size([4, 16])
    ```
    """
    import copy

    input_ids, attention_mask = _left_pad(prompt_ids, pad_token_id, model.device)
    config = copy.deepcopy(generation_config)
    config.pad_token_id = pad_token_id
    processors = inverse_cdf_sampling(config)
    cache = None
    if input_ids.size(1) > 1:  # something to share before the last prompt token
        unique, inverse = unique_rows(torch.cat([input_ids, attention_mask], dim=1))
        length = input_ids.size(1)
        cache = prefill_prompts(model, unique[:, :length], unique[:, length:], inverse)
    generated = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        past_key_values=cache,
        generation_config=config,
        logits_processor=processors,
    )
    return _with_logps(generated[:, input_ids.size(1) :], processors, return_logps)


def _with_logps(ids: torch.Tensor, processors, return_logps: bool):
    if not return_logps:
        return ids
    if processors is None:
        return ids, None
    logps = processors[-1].logps
    return ids, torch.stack(logps, dim=1)[:, : ids.size(1)] if logps else ids.new_zeros(ids.shape, dtype=torch.float)


def shared_prompt_logps(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities of the last `logits_to_keep` tokens of each row, and the logits they came from.

    `input_ids` is a left-padded prompt followed by a completion of `logits_to_keep` tokens, as in TRL's GRPO
    loss. Rows with the same prompt share one forward of it (with gradients: the LoRA update still reaches the
    prompt's keys and values), and the completions run over its repeated cache. Positions and masking are those of
    a plain forward of the whole rows, so the result matches it up to floating-point rounding.

    Example:
    ```python
    >>> from grape_hf.training.group_decoding import shared_prompt_logps
    >>> logps, logits = shared_prompt_logps(model, input_ids, attention_mask, logits_to_keep=32)  # doctest: +SKIP
    ```
    """
    from transformers import DynamicCache
    from trl.trainer.utils import selective_log_softmax

    prompt_length = input_ids.size(1) - logits_to_keep
    if prompt_length < 1:
        raise ValueError(
            f"shared_prompt_logps needs a prompt before the completion; got {input_ids.size(1)} tokens "
            f"with logits_to_keep={logits_to_keep}."
        )
    prompt = torch.cat([input_ids[:, :prompt_length], attention_mask[:, :prompt_length]], dim=1)
    unique, inverse = unique_rows(prompt)
    cache = DynamicCache(config=getattr(model, "config", None))
    first = model(
        input_ids=unique[:, :prompt_length],
        attention_mask=unique[:, prompt_length:],
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    ).logits[:, -1:, :]
    logits = [first[inverse]]
    if logits_to_keep > 1:
        cache.batch_select_indices(inverse)
        logits.append(
            model(
                input_ids=input_ids[:, prompt_length:-1],
                attention_mask=attention_mask[:, :-1],
                past_key_values=cache,
                use_cache=True,
            ).logits
        )
    logits = torch.cat(logits, dim=1) / temperature
    return selective_log_softmax(logits, input_ids[:, prompt_length:]), logits


def packed_group_logps(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    logits_to_keep: int,
    temperature: float = 1.0,
    compute_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[`shared_prompt_logps`] without padding: each group's completions packed after its prompt in one sequence.

    Rows with the same prompt become one sequence: the prompt's tokens, then each row's completion up to its mask's
    end, with a block mask (a completion sees the prompt and its own earlier tokens) and the positions a plain
    forward of the row would give. Completions shorter than the batch's longest cost nothing, and the prompt is
    computed once. The output layer and the softmax run only from the first prompt's last token on, once per packed
    position, and the per-row values are gathered from there (no `(rows, logits_to_keep, vocabulary)` tensor).
    Needs a model that accepts a 4-D additive attention mask (transformers' eager and SDPA attention).

    Returns the log-probabilities, 0 past a row's completion mask, and with `compute_entropy` the entropy of each
    predicted distribution (as TRL's `entropy_from_logits`, differentiable, 0 past the mask), else None.

    Example:
    ```python
    >>> from grape_hf.training.group_decoding import packed_group_logps
    >>> out = packed_group_logps(model, input_ids, attention_mask, 32, compute_entropy=True)  # doctest: +SKIP
    >>> logps, entropies = out  # doctest: +SKIP
    ```
    """
    from trl.trainer.utils import entropy_from_logits

    rows, total = input_ids.shape
    prompt_length = total - logits_to_keep
    if prompt_length < 1:
        raise ValueError(
            f"packed_group_logps needs a prompt before the completion; got {total} tokens with "
            f"logits_to_keep={logits_to_keep}."
        )
    completion_mask = attention_mask[:, prompt_length:].bool()
    lengths = completion_mask.sum(1)
    positions_in_row = torch.arange(logits_to_keep, device=input_ids.device)
    if not torch.equal(completion_mask, positions_in_row < lengths[:, None]):
        raise ValueError("packed_group_logps needs each completion mask to be ones then zeros (no holes).")
    unique, inverse = unique_rows(torch.cat([input_ids[:, :prompt_length], attention_mask[:, :prompt_length]], 1))
    groups = unique.size(0)

    # Layout: per group, its prompt's real tokens, then its rows' completions in batch order.
    sequences, positions, segments, starts, prompt_ends = [], [], [], torch.zeros_like(lengths), []
    for group in range(groups):
        prompt_mask = unique[group, prompt_length:].bool()
        prompt_ids = unique[group, :prompt_length][prompt_mask]
        tokens = [prompt_ids]
        position = [torch.arange(prompt_length - prompt_ids.numel(), prompt_length, device=input_ids.device)]
        segment = [torch.zeros_like(prompt_ids)]
        offset = prompt_ids.numel()
        prompt_ends.append(offset - 1)
        for number, row in enumerate((inverse == group).nonzero().flatten().tolist(), start=1):
            n = int(lengths[row])
            tokens.append(input_ids[row, prompt_length : prompt_length + n])
            position.append(prompt_length + positions_in_row[:n])
            segment.append(torch.full((n,), number, dtype=prompt_ids.dtype, device=input_ids.device))
            starts[row] = offset
            offset += n
        sequences.append(torch.cat(tokens))
        positions.append(torch.cat(position))
        segments.append(torch.cat(segment))
    length = max(s.numel() for s in sequences)
    packed = input_ids.new_zeros(groups, length)
    packed_positions = input_ids.new_zeros(groups, length)
    packed_segments = input_ids.new_full((groups, length), -1)
    for group, (tokens, position, segment) in enumerate(zip(sequences, positions, segments)):
        packed[group, : tokens.numel()] = tokens
        packed_positions[group, : tokens.numel()] = position
        packed_segments[group, : tokens.numel()] = segment
    index = torch.arange(length, device=input_ids.device)
    valid = packed_segments >= 0
    allowed = (index[:, None] >= index[None, :]) & (
        (packed_segments[:, None, :] == 0) | (packed_segments[:, :, None] == packed_segments[:, None, :])
    )
    allowed &= valid[:, None, :]
    allowed |= torch.eye(length, dtype=torch.bool, device=input_ids.device) & ~valid[:, :, None]  # padding: itself
    dtype = next(model.parameters()).dtype
    mask = torch.zeros(allowed.shape, dtype=dtype, device=input_ids.device).masked_fill_(
        ~allowed, torch.finfo(dtype).min
    )
    # Completion token j of a row is predicted at its prompt's last token (j = 0) or at its own token j - 1; nothing
    # before the earliest prompt end is needed.
    prompt_ends = torch.tensor(prompt_ends, device=input_ids.device)
    first = int(prompt_ends.min())
    logits = model(
        input_ids=packed, attention_mask=mask[:, None], position_ids=packed_positions, logits_to_keep=length - first
    ).logits
    logits = logits.float() / temperature  # (groups, length - first, vocabulary)
    source = torch.where(
        positions_in_row[None, :] == 0, prompt_ends[inverse][:, None], starts[:, None] + positions_in_row[None, :] - 1
    )
    source = torch.where(completion_mask, source, prompt_ends[inverse][:, None]) - first
    group = inverse[:, None].expand_as(source)
    token_logits = logits[group, source, input_ids[:, prompt_length:]]
    logps = (token_logits - torch.logsumexp(logits, dim=-1)[group, source]) * completion_mask
    entropies = entropy_from_logits(logits)[group, source] * completion_mask if compute_entropy else None
    return logps, entropies


GROUPED_DECODE_ATTENTION = "grape_grouped_sdpa"


def grouped_decode_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """SDPA attention that decodes grouped-query models without repeating the cache.

    Under SDPA with a padding mask, `transformers` repeats each key/value head for its query heads (`repeat_kv`)
    before every call, so each decoding step copies the whole cache `num_key_value_groups` times (SmolLM2 on a 2-core
    CPU, 64 rows, ~100 cached positions: 1.8-2.8 ms a layer, against 0.6-0.8 ms without the copy). A single new token
    needs no copy: the query heads that share a key/value head are laid out as that head's "query positions", one
    SDPA call over the cache as stored. Prefill and any step with more than one query position go to
    `transformers`' own SDPA path. Register it with [`register_grouped_decode_attention`].

    Example:
    ```python
    >>> from transformers import AutoModelForCausalLM
    >>> from grape_hf.training.group_decoding import register_grouped_decode_attention
    >>> name = register_grouped_decode_attention()
    >>> model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=name)  # doctest: +SKIP
    ```
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    if query.shape[2] != 1 or groups == 1 or kwargs.get("output_attentions", False) or (module.training and dropout):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    batch, heads, _, dim = query.shape
    # Query head h attends with key/value head h // groups (repeat_kv's layout): (batch, kv_heads, groups, dim).
    grouped = query.reshape(batch, key.shape[1], groups, dim)
    if attention_mask is not None and attention_mask.dim() == 4:
        attention_mask = attention_mask[:, :, -1:, : key.shape[2]]  # (batch, 1, 1, kv_len) broadcasts over groups
    out = torch.nn.functional.scaled_dot_product_attention(
        grouped, key, value, attn_mask=attention_mask, scale=scaling
    )
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None


def register_grouped_decode_attention() -> str:
    """Register [`grouped_decode_attention`] with `transformers` (attention and mask) and return its name, to pass as
    `attn_implementation`.

    Example:
    ```python
    >>> from grape_hf.training.group_decoding import register_grouped_decode_attention
    >>> register_grouped_decode_attention()
    'grape_grouped_sdpa'
    ```
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    if GROUPED_DECODE_ATTENTION not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionInterface.register(GROUPED_DECODE_ATTENTION, grouped_decode_attention)
        AttentionMaskInterface.register(GROUPED_DECODE_ATTENTION, sdpa_mask)
    return GROUPED_DECODE_ATTENTION
