"""Group-aware decoding and log-probabilities: a GRPO group's prompt is computed once, not once per completion.

GRPO samples `num_generations` completions of each prompt and then scores every completion with the policy. Both
`generate` and TRL repeat the prompt before the forward pass, so a prompt of ~80 tokens with completions of ~30 is
computed eight times over, and on a CPU that is most of the work. The two functions here compute each distinct
prompt once and let its completions share the result through the KV cache:

- [`shared_prefix_generate`] prefills each distinct prompt once, repeats its cache for its completions, and decodes
  with inverse-CDF sampling (one uniform draw per row against the cumulative probabilities: the same categorical
  distribution as `torch.multinomial`, whose CPU kernel draws an exponential variate for every vocabulary entry);
- [`shared_prompt_logps`] gives the per-token log-probabilities of the completions, with gradients, from one prompt
  forward per distinct prompt and one forward of the completions over the repeated cache. The result equals the
  plain forward's (same positions, same mask); only the repeated prompt work is gone.

Both work on any causal LM of `transformers` that accepts `past_key_values` (PEFT-wrapped or not).
"""

from __future__ import annotations

import torch

# Sampling settings the inverse-CDF path reproduces; a generation config using any other warper falls back to
# `generate`'s own sampling.
_UNSUPPORTED_WARPERS = {"typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0}


def unique_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct rows of a 2-D tensor in order of first appearance, and each row's index among them.

    Example:
    ```python
    >>> import torch
    >>> from grape_hf.sampling import unique_rows
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


def _generation_positions(mask: torch.Tensor) -> torch.Tensor:
    # As `generate` computes them for left-padded rows.
    positions = mask.long().cumsum(-1) - 1
    return positions.masked_fill_(mask == 0, 1)


class InverseCDFSampler:
    """A logits processor that draws the next token from softmax(scores) and leaves only that token possible.

    Run it last, after the temperature/top-k/top-p warpers, inside a greedy `generate`: greedy decoding then picks
    exactly the drawn token. One uniform draw per row replaces `torch.multinomial`'s per-entry exponential draws.

    Example:
    ```python
    >>> import torch
    >>> from grape_hf.sampling import InverseCDFSampler
    >>> scores = torch.tensor([[0.0, float("-inf"), 0.0], [float("-inf"), 5.0, float("-inf")]])
    >>> out = InverseCDFSampler()(None, scores)
    >>> out.argmax(-1)[1].item(), bool(torch.isinf(out).sum(-1).eq(2).all())
    (1, True)
    ```
    """

    def __init__(self, recorder: ScoreRecorder | None = None):
        self.recorder = recorder
        self.logps: list[torch.Tensor] = []

    def __call__(self, input_ids, scores: torch.Tensor) -> torch.Tensor:
        cdf = scores.float().softmax(-1).cumsum(-1)
        # u in (0, total]: the leftmost index with cdf >= u always has a positive probability.
        u = (1.0 - torch.rand(cdf.size(0), 1, device=cdf.device)) * cdf[:, -1:]
        tokens = torch.searchsorted(cdf, u).clamp_(max=scores.size(-1) - 1)
        if self.recorder is not None:  # log-probability of the drawn token under the recorded scores
            recorded = self.recorder.scores.float()
            self.logps.append((recorded.gather(1, tokens) - recorded.logsumexp(-1, keepdim=True)).squeeze(1))
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, tokens, 0.0)


class ScoreRecorder:
    """A pass-through logits processor that keeps the latest scores (for [`InverseCDFSampler`]'s log-probabilities)."""

    scores: torch.Tensor | None = None

    def __call__(self, input_ids, scores: torch.Tensor) -> torch.Tensor:
        self.scores = scores
        return scores


def _sampling_processors(generation_config):
    """The warpers `generate` would apply when sampling with `generation_config`, then the inverse-CDF draw, which
    records each drawn token's log-probability after temperature and before top-k/top-p/min-p (as TRL's GRPO loss
    computes it); None when the config uses a warper this path does not reproduce."""
    from transformers import (
        LogitsProcessorList,
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    for name, neutral in _UNSUPPORTED_WARPERS.items():
        value = getattr(generation_config, name, None)
        if value is not None and value != neutral:
            return None
    processors = LogitsProcessorList()
    temperature = generation_config.temperature
    if temperature is not None and temperature != 1.0:
        processors.append(TemperatureLogitsWarper(temperature))
    recorder = ScoreRecorder()
    processors.append(recorder)
    if generation_config.top_k:
        processors.append(TopKLogitsWarper(generation_config.top_k))
    if generation_config.top_p is not None and generation_config.top_p < 1.0:
        processors.append(TopPLogitsWarper(generation_config.top_p))
    if getattr(generation_config, "min_p", None):
        processors.append(MinPLogitsWarper(generation_config.min_p))
    processors.append(InverseCDFSampler(recorder))
    return processors


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
    >>> from grape_hf.sampling import shared_prefix_generate
    >>> config = GenerationConfig(max_new_tokens=16, do_sample=True, temperature=1.0, eos_token_id=tok.eos_token_id)  # doctest: +SKIP
    >>> shared_prefix_generate(model, [ids, ids, ids, other], config, tok.pad_token_id).shape  # doctest: +SKIP
    torch.Size([4, 16])
    ```
    """
    import copy

    from transformers import DynamicCache

    device = model.device
    input_ids, attention_mask = _left_pad(prompt_ids, pad_token_id, device)
    config = copy.deepcopy(generation_config)
    config.pad_token_id = pad_token_id
    processors = _sampling_processors(config) if config.do_sample else None
    if processors is not None:
        config.do_sample = False
        config.temperature = config.top_p = config.top_k = config.min_p = None
    if input_ids.size(1) < 2:  # nothing to share before the last prompt token
        generated = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config,
                                   logits_processor=processors)  # fmt: skip
        return _with_logps(generated[:, input_ids.size(1) :], processors, return_logps)
    unique, inverse = unique_rows(torch.cat([input_ids, attention_mask], dim=1))
    unique_ids, unique_mask = unique[:, : input_ids.size(1)], unique[:, input_ids.size(1) :]
    cache = DynamicCache(config=model.config)
    model(
        input_ids=unique_ids[:, :-1],
        attention_mask=unique_mask[:, :-1],
        position_ids=_generation_positions(unique_mask[:, :-1]),
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    cache.batch_select_indices(inverse)
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
    >>> from grape_hf.sampling import shared_prompt_logps
    >>> logps, logits = shared_prompt_logps(model, input_ids, attention_mask, logits_to_keep=32)  # doctest: +SKIP
    ```
    """
    from transformers import DynamicCache
    from trl.trainer.utils import selective_log_softmax

    prompt_length = input_ids.size(1) - logits_to_keep
    if prompt_length < 1:
        raise ValueError(f"shared_prompt_logps needs a prompt before the completion; got {input_ids.size(1)} tokens "
                         f"with logits_to_keep={logits_to_keep}.")  # fmt: skip
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
