"""The one generation path of grape_hf: rewrites from left-padded prompts, fast on a CPU.

[`generate_rewrite_tokens`] prefills each prompt once and repeats its KV cache for its rewrites, decodes into a
cache with room to grow ([`ReservedLayer`]) and samples by inverse CDF ([`InverseCDFSampler`]) inside a greedy
`generate`; [`decode_rewrites`] turns the tokens into clean rewrites. [`~grape_hf.rewriting.rewriter.QueryRewriter`],
the `"grape-rewrite"` pipeline, the evaluation and GRPO's sampler ([`~grape_hf.training.group_decoding`]) all use it.

Part of a saved rewriter folder's remote code (see [`~grape_hf.rewriting.saving.add_pipeline_files`]): it imports
only torch, transformers and [`~grape_hf.rewriting.prompting`].
"""

from __future__ import annotations

import torch
from transformers import (
    DynamicCache,
    GenerationConfig,
    LogitsProcessorList,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.cache_utils import DynamicLayer

from .prompting import clean_rewrite

# Sampling settings the inverse-CDF path reproduces; a generation config using any other warper keeps `generate`'s
# own sampling.
_UNSUPPORTED_WARPERS = {"typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0}


class ScoreRecorder:
    """A pass-through logits processor that keeps the latest scores (for [`InverseCDFSampler`]'s log-probabilities)."""

    scores: torch.Tensor | None = None

    def __call__(self, input_ids, scores: torch.Tensor) -> torch.Tensor:
        self.scores = scores
        return scores


class InverseCDFSampler:
    """A logits processor that draws the next token from softmax(scores) and leaves only that token possible.

    Run it last, after the temperature/top-k/top-p warpers, inside a greedy `generate`: greedy decoding then picks
    exactly the drawn token. One uniform draw per row replaces `torch.multinomial`'s per-entry exponential draws.

    Example:
    ```python
    >>> import torch
    >>> from grape_hf.rewriting.generation import InverseCDFSampler
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
        # Unnormalised: exp(scores - max), summed up; the draw scales u by the total instead of normalising.
        shift = scores.amax(-1, keepdim=True).float()
        cdf = torch.sub(scores, shift, out=torch.empty_like(scores, dtype=torch.float32)).exp_()
        cdf = torch.cumsum(cdf, -1, out=cdf)
        total = cdf[:, -1:]
        # u in (0, total]: the leftmost index with cdf >= u always has a positive probability.
        u = (1.0 - torch.rand(cdf.size(0), 1, device=cdf.device)) * total
        tokens = torch.searchsorted(cdf, u).clamp_(max=scores.size(-1) - 1)
        if self.recorder is not None:  # log-probability of the drawn token under the recorded scores
            recorded = self.recorder.scores
            if recorded is scores:  # no warper after the recorder: reuse this step's normaliser
                logps = scores.gather(1, tokens).float() - shift - total.log()
            else:
                recorded = recorded.float()
                logps = recorded.gather(1, tokens) - recorded.logsumexp(-1, keepdim=True)
            self.logps.append(logps.squeeze(1))
        # A new tensor: `generate` may keep `scores` itself (output_logits).
        return torch.full_like(scores, float("-inf")).scatter_(1, tokens, 0.0)


def sampling_processors(generation_config):
    """The warpers `generate` would apply when sampling with `generation_config`, then the inverse-CDF draw, which
    records each drawn token's log-probability after temperature and before top-k/top-p/min-p (as TRL's GRPO loss
    computes it); None when the config uses a warper this path does not reproduce."""
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


def inverse_cdf_sampling(config: GenerationConfig) -> LogitsProcessorList | None:
    """When `config` samples with warpers [`sampling_processors`] reproduces, turn it into a greedy search and return
    the processors that sample inside it (pass them as `logits_processor`); otherwise None and `config` is
    unchanged."""
    processors = sampling_processors(config) if config.do_sample else None
    if processors is not None:
        config.do_sample = False
        config.temperature = config.top_p = config.top_k = config.min_p = None
    return processors


class ReservedLayer(DynamicLayer):
    """A [`~transformers.DynamicLayer`] that keeps room to grow: its keys and values are views into buffers with
    `reserve` spare positions, so a decoding step writes its token in place instead of concatenating (copying) the
    whole cache, as `DynamicLayer` does at every step.

    Anything that replaces the tensors (`batch_select_indices`, `batch_repeat_interleave`, `reorder_cache`) or fills
    the spare room makes the next update copy once into fresh buffers; `crop` keeps the buffers.

    Example:
    ```python
    >>> import torch
    >>> from grape_hf.rewriting.generation import ReservedLayer
    >>> layer = ReservedLayer(reserve=4)
    >>> keys, values = layer.update(torch.ones(2, 1, 3, 8), torch.ones(2, 1, 3, 8))
    >>> keys, values = layer.update(torch.zeros(2, 1, 1, 8), torch.zeros(2, 1, 1, 8))
    >>> keys.shape, layer.get_seq_length()
    (torch.Size([2, 1, 4, 8]), 4)
    ```
    """

    def __init__(self, reserve: int = 32):
        super().__init__()
        self.reserve = reserve
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def _room(self, new: int) -> bool:
        if self._buffers is None or self.keys.numel() == 0:
            return False
        key_buffer, value_buffer = self._buffers
        return (
            self.keys.data_ptr() == key_buffer.data_ptr()
            and self.values.data_ptr() == value_buffer.data_ptr()
            and self.keys.shape[:-2] == key_buffer.shape[:-2]
            and self.keys.shape[-2] + new <= key_buffer.shape[-2]
        )

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length, new = self.get_seq_length(), key_states.shape[-2]
        if not self._room(new):
            capacity = length + new + self.reserve
            self._buffers = tuple(
                states.new_empty((*states.shape[:-2], capacity, states.shape[-1]))
                for states in (key_states, value_states)
            )
            if length:
                self._buffers[0][..., :length, :] = self.keys
                self._buffers[1][..., :length, :] = self.values
        key_buffer, value_buffer = self._buffers
        key_buffer[..., length : length + new, :] = key_states
        value_buffer[..., length : length + new, :] = value_states
        self.keys, self.values = key_buffer[..., : length + new, :], value_buffer[..., : length + new, :]
        return self.keys, self.values


def prefill_prompts(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor) -> DynamicCache:
    """Prefill left-padded prompts but their last token, once each, into a cache whose batch rows are `rows`
    (indices into the prompts, repeats allowed): pass it to `generate` with the prompts of those rows. Its full
    attention layers are [`ReservedLayer`]s, so decoding appends in place."""
    cache = DynamicCache(config=model.config)
    cache.layers = [ReservedLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    positions = (attention_mask.long().cumsum(-1) - 1).masked_fill_(attention_mask == 0, 1)  # as generate's
    model(
        input_ids=input_ids[:, :-1],
        attention_mask=attention_mask[:, :-1],
        position_ids=positions[:, :-1],
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    cache.batch_select_indices(rows)
    return cache


@torch.no_grad()
def newline_token_ids(tokenizer) -> list[int]:
    """Ids of the tokens whose text holds a newline (`"\\n"`, `"\\n\\n"`, `".\\n"`, ...): where a completion-format
    rewrite ends. Computed once per tokenizer.

    Example:
    ```python
    >>> from transformers import AutoTokenizer
    >>> from grape_hf.models import smollm2_tokenizer_path
    >>> from grape_hf.rewriting.generation import newline_token_ids
    >>> tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_path())
    >>> tokenizer("a\\nb", add_special_tokens=False).input_ids[1] in newline_token_ids(tokenizer)
    True
    ```
    """
    cached = getattr(tokenizer, "_grape_newline_ids", None)
    if cached is not None:
        return cached
    # Byte-level BPE vocabularies spell a newline "Ċ"; SentencePiece ones (Gemma) hold it as text.
    candidates = [i for token, i in tokenizer.get_vocab().items() if "\n" in token or "Ċ" in token]
    ids = sorted(i for i in candidates if "\n" in tokenizer.decode([i]))
    tokenizer._grape_newline_ids = ids
    return ids


def stop_token_ids(tokenizer, stop_at_newline: bool) -> list[int]:
    """The ids that end a rewrite: the tokenizer's EOS, and with `stop_at_newline` every newline token."""
    eos = tokenizer.eos_token_id
    ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    return ids + [i for i in newline_token_ids(tokenizer) if i not in ids] if stop_at_newline else ids


def context_length(model) -> int | None:
    """The most positions `model` takes (`max_position_embeddings` of its text config), or `None` if it says none."""
    config = getattr(model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(config, "max_position_embeddings", None)


def check_context(model, attention_mask: torch.Tensor, max_new_tokens: int | None, queries) -> None:
    """Refuse prompts that, with `max_new_tokens` more, pass the model's positions: it would generate past what it
    was trained on, slowly and without an answer. `queries` (one per row of `attention_mask`) name the culprit."""
    limit = context_length(model)
    if not limit:
        return
    queries = [queries] if isinstance(queries, str) else list(queries)
    for row, length in enumerate(attention_mask.sum(dim=-1).tolist()):
        if length + (max_new_tokens or 0) > limit:
            query = queries[row] if row < len(queries) else ""
            raise ValueError(
                f"The query {query[:60]!r}... ({len(query):,} characters) makes a prompt of {length:,} tokens; with "
                f"max_new_tokens={max_new_tokens} that passes the model's {limit:,} positions. Shorten the query "
                "(or split it into several) before rewriting."
            )


def generate_rewrite_tokens(
    model,
    tokenizer,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    num_rewrites: int = 1,
    generation_config: GenerationConfig | None = None,
    stop_at_newline: bool = False,
    **generate_kwargs,
) -> torch.Tensor:
    """The new tokens of `num_rewrites` rewrites per left-padded prompt (greedy for one, sampled for more).

    Several rewrites of a prompt share one forward of it (its KV cache is repeated), and sampling draws by inverse
    CDF ([`InverseCDFSampler`]) after the config's temperature/top-k/top-p/min-p warpers: the distribution
    `generate`'s sampling draws from, at less cost on a CPU.

    With `stop_at_newline` (completion-format prompts) a rewrite also ends at its first newline token. A
    vision-language rewriter's image inputs (`pixel_values=`, ...) are passed on to `generate` with the other kwargs.

    With [`decode_rewrites`], the one generation path of grape_hf: [`~grape_hf.rewriting.rewriter.QueryRewriter`], the
    `"grape-rewrite"` pipeline, the evaluation and the R@10 curve callback all come here.

    Returns:
        `torch.Tensor`: `(num_prompts, num_rewrites, new_length)` token ids.
    """
    config = GenerationConfig.from_dict((generation_config or model.generation_config).to_dict())
    do_sample = generate_kwargs.pop("do_sample", num_rewrites > 1)
    if not do_sample:  # plain greedy: drop the sampling settings a model's generation config may carry
        for key in ("temperature", "top_p", "top_k"):
            generate_kwargs.setdefault(key, None)
    generate_kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
    if stop_at_newline and "eos_token_id" not in generate_kwargs:
        generate_kwargs["eos_token_id"] = stop_token_ids(tokenizer, True)
    model_kwargs = config.update(do_sample=do_sample, num_return_sequences=num_rewrites, **generate_kwargs)
    if config.max_new_tokens is not None:
        config.max_length = None  # max_new_tokens wins; leaving both set only earns a warning
    num_prompts, prompt_length = input_ids.shape
    # A vision-language model's image inputs (pixel_values, image_grid_thw, ...) go to generate, which repeats them
    # for the rewrites; the shared prefill below is text-only.
    images = any(key.startswith(("pixel_values", "image_")) for key in model_kwargs)
    if num_rewrites > 1 and prompt_length > 1 and "past_key_values" not in model_kwargs and not images:
        # Each prompt once: prefill it and repeat its cache for its rewrites (generate would repeat the prompt).
        rows = torch.arange(num_prompts, device=input_ids.device).repeat_interleave(num_rewrites)
        model_kwargs["past_key_values"] = prefill_prompts(model, input_ids, attention_mask, rows)
        input_ids, attention_mask = input_ids[rows], attention_mask[rows]
        config.num_return_sequences = 1
    # Sample by inverse CDF inside a greedy search (InverseCDFSampler), but not several rewrites of an image prompt:
    # only generate knows how to repeat a model's image inputs for them, and its greedy search returns one sequence.
    if "logits_processor" not in model_kwargs and not (images and config.num_return_sequences > 1):
        processors = inverse_cdf_sampling(config)
        if processors is not None:
            model_kwargs["logits_processor"] = processors
    generated = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, generation_config=config, **model_kwargs
    )
    return generated[:, prompt_length:].reshape(num_prompts, num_rewrites, -1)


def decode_rewrites(tokenizer, new_tokens: torch.Tensor) -> list[list[str]]:
    """`(num_prompts, num_rewrites, length)` token ids -> per prompt, its cleaned rewrites ([`clean_rewrite`])."""
    texts = tokenizer.batch_decode(
        new_tokens.reshape(-1, new_tokens.shape[-1]), skip_special_tokens=True, clean_up_tokenization_spaces=False
    )
    per_prompt = new_tokens.shape[1]
    rewrites = [clean_rewrite(t) for t in texts]
    return [rewrites[i : i + per_prompt] for i in range(0, len(rewrites), per_prompt)]
