"""Rebuilding the tokenizer of a GGUF file whose `tokenizer.ggml.model` is `llama` (SentencePiece BPE).

transformers' GGUF converter turns some of these (Gemma's, `gemma3_text`) into a Unigram model over the GGUF's
`tokenizer.ggml.scores`. Those scores are BPE merge priorities (minus the merge rank), which is how llama.cpp's SPM
tokenizer reads them, so as Unigram log-probabilities they make every word cost more than its characters: words
come out as single characters, no BOS is added, and a model fed that way generates garbage.
"""

from __future__ import annotations

from os import PathLike
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

# llama.cpp's token types (`gguf.TokenType`), spelled out so this module imports without `gguf`.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SUPPORTED_MODELS = ("llama",)


def _field(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.get_field(key)
    return default if field is None else field.contents()


def tokenizer_from_gguf(path: str | PathLike) -> PreTrainedTokenizerFast:
    """Build the BPE tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata (weights are not read).

    The vocabulary is `tokenizer.ggml.tokens`; the merges are `tokenizer.ggml.merges` when the file has them,
    else derived from the scores with `transformers.convert_slow_tokenizer.generate_merges` (a merge `l + r` ranks
    by the score of the piece `l + r`, highest first, as llama.cpp's SPM tokenizer merges). Spaces become `▁` before
    the model, unknown characters fall back to their UTF-8 bytes (`<0x..>` tokens), and decoding undoes both.
    Control tokens (`<bos>`, `<start_of_turn>`, ...) are special tokens; user-defined ones (`\\n`, `\\n\\n`, runs
    of spaces or tabs, `<table>`) are ordinary added tokens matched on the raw text, so
    `decode(..., skip_special_tokens=True)` keeps newlines. BOS/EOS are added as
    `tokenizer.ggml.add_bos_token` / `add_eos_token` say (llama.cpp's defaults: BOS yes, EOS no).

    Args:
        path (`str` or `os.PathLike`): A `.gguf` file whose `tokenizer.ggml.model` is `"llama"`.

    Returns:
        [`~transformers.PreTrainedTokenizerFast`]: The tokenizer, ready for `save_pretrained`.

    Raises:
        `ValueError`: The file's tokenizer is another kind (`gpt2`, `t5`, ...), or its metadata is inconsistent.

    Example:
    ```python
    >>> import os, tempfile
    >>> import gguf
    >>> from grape_hf.gguf_tokenizer import tokenizer_from_gguf
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny-tokenizer.gguf")
    >>> tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "\\n", "▁", "h", "i", "hi", "▁hi"]
    >>> writer = gguf.GGUFWriter(path, arch="llama")
    >>> writer.add_tokenizer_model("llama")
    >>> writer.add_token_list(tokens)
    >>> writer.add_token_scores([0.0] * 5 + [-3.0, -1.0, -2.0, -4.0, -5.0])
    >>> writer.add_token_types([3, 3, 3, 2, 4] + [1] * 5)
    >>> writer.add_bos_token_id(2); writer.add_eos_token_id(1); writer.add_unk_token_id(3)
    >>> writer.write_header_to_file(); writer.write_kv_data_to_file(); writer.write_tensors_to_file(); writer.close()
    >>> tokenizer = tokenizer_from_gguf(path)
    >>> tokenizer.convert_ids_to_tokens(tokenizer("hi hi\\n").input_ids)
    ['<bos>', 'hi', '▁hi', '\\n']
    >>> tokenizer.decode(tokenizer("hi hi\\n").input_ids, skip_special_tokens=True)
    'hi hi\\n'
    ```
    """
    from gguf import GGUFReader  # lazy: the `gguf` extra
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import generate_merges

    reader = GGUFReader(path)
    kind = _field(reader, "tokenizer.ggml.model")
    if kind not in SUPPORTED_MODELS:
        raise ValueError(
            f"{path} has tokenizer.ggml.model {kind!r}; tokenizer_from_gguf rebuilds only {SUPPORTED_MODELS} "
            "(SentencePiece BPE ranked by score). Load that tokenizer with "
            "`AutoTokenizer.from_pretrained(folder, gguf_file=name)` instead."
        )
    tokens = _field(reader, "tokenizer.ggml.tokens", [])
    scores = _field(reader, "tokenizer.ggml.scores", [])
    types = _field(reader, "tokenizer.ggml.token_type", [NORMAL] * len(tokens))
    if not tokens or len(scores) != len(tokens) or len(types) != len(tokens):
        raise ValueError(
            f"{path}: tokenizer.ggml.tokens ({len(tokens)}), .scores ({len(scores)}) and .token_type ({len(types)}) "
            "must be non-empty and of the same length."
        )
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError(f"{path}: tokenizer.ggml.tokens repeats {len(tokens) - len(vocab)} token(s).")

    def token_at(key: str) -> str | None:
        index = _field(reader, f"tokenizer.ggml.{key}")
        if index is None:
            return None
        if not 0 <= index < len(tokens):
            raise ValueError(f"{path}: tokenizer.ggml.{key} {index} is outside the vocabulary ({len(tokens)} tokens).")
        return tokens[index]

    bos, eos, unk, pad = (
        token_at(key) for key in ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id")
    )
    add_bos = bool(_field(reader, "tokenizer.ggml.add_bos_token", True))
    add_eos = bool(_field(reader, "tokenizer.ggml.add_eos_token", False))
    add_prefix_space = bool(_field(reader, "tokenizer.ggml.add_space_prefix", False))
    if (add_bos and bos is None) or (add_eos and eos is None):
        raise ValueError(f"{path} asks to add BOS/EOS ({add_bos}/{add_eos}) but names no token id for it.")

    merges = _field(reader, "tokenizer.ggml.merges")
    if merges:
        merges = [tuple(merge.split(" ", 1)) for merge in merges]
    else:
        # Only normal pieces take part in merges: control, user-defined, unused and byte tokens are reached whole.
        not_normal = {token for token, token_type in zip(tokens, types) if token_type != NORMAL}
        merges = generate_merges(vocab, dict(zip(tokens, scores)), skip_tokens=not_normal)

    backend = Tokenizer(BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    replace = normalizers.Replace(" ", "▁")
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), replace]) if add_prefix_space else replace
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    backend.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if add_prefix_space else []))
    # User-defined tokens are stored as raw text (llama.cpp writes `▁` back as a space), so they match before the
    # normalizer; they are text, not markup, so skip_special_tokens must not drop them.
    backend.add_tokens(
        [
            AddedToken(token, special=False, normalized=False)
            for token, token_type in zip(tokens, types)
            if token_type == USER_DEFINED
        ]
    )
    specials = [token for token, token_type in zip(tokens, types) if token_type in (CONTROL, UNKNOWN)]
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
    single = " ".join([f"{bos}:0"] * add_bos + ["$A:0"] + [f"{eos}:0"] * add_eos)
    pair = single + " " + " ".join([f"{bos}:1"] * add_bos + ["$B:1"] + [f"{eos}:1"] * add_eos)
    backend.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(t, vocab[t]) for t in {bos, eos} if t is not None]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        unk_token=unk,
        pad_token=pad,
        add_bos_token=add_bos,
        add_eos_token=add_eos,
        clean_up_tokenization_spaces=False,
    )
