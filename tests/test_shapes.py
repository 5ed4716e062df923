"""The shapes world, its shifted query sets and the shipped grape-shapes-clip checkpoint."""

from __future__ import annotations

import copy
import io
import json
import random
import re
import warnings

import pytest
import torch

from grape_hf.shapes import (
    COLOURS,
    EDIT_KINDS,
    POSITIONS,
    SHAPES,
    Scene,
    ShapeObject,
    apply_random_edit,
    build_shift,
    build_shift_dataset,
    describe,
    describe_object,
    generate_scenes,
    long_form_description,
    referring_expression,
)
from grape_hf.shapes.long_form import (
    CHATTER,
    LONG_FORM_PREFIX_TOKENS,
    POSITION_WORDS,
    SIZE_WORDS,
    long_form_sentences,
)

SPEC = "open_clip:grape-shapes-clip@grape-shapes"
_OBJECT = (
    r"a (small|large) ("
    + "|".join(COLOURS)
    + ") ("
    + "|".join(SHAPES)
    + r") (at the top|on the left|in the middle|on the right|at the bottom)"
)
CAPTION = re.compile(rf"^{_OBJECT}(?:(?:, {_OBJECT})? and {_OBJECT})?$")


@pytest.fixture(scope="module")
def clip_tokenizer():
    import open_clip

    return open_clip.SimpleTokenizer(context_length=32)


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_same_seed_same_images_and_captions():
    first, second = generate_scenes(12, seed=7), generate_scenes(12, seed=7)
    assert [s.caption for s in first] == [s.caption for s in second]
    assert [_png(s.render()) for s in first] == [_png(s.render()) for s in second]
    other = generate_scenes(12, seed=8)
    assert [s.caption for s in other] != [s.caption for s in first]
    assert first[0].render().size == (64, 64) and first[0].render().mode == "RGB"


def test_render_seed_changes_pixels_not_caption():
    scene = generate_scenes(1, seed=0)[0]
    moved = Scene(scene.objects, render_seed=scene.render_seed + 1)
    assert moved == scene and moved.caption == scene.caption
    assert moved.render().tobytes() != scene.render().tobytes()


def test_captions_follow_the_grammar_in_reading_order(clip_tokenizer):
    scenes = generate_scenes(300, seed=3)
    assert len({s.caption for s in scenes}) == 300
    for scene in scenes:
        assert CAPTION.match(scene.caption), scene.caption
        order = [POSITIONS.index(obj.position) for obj in scene.objects]
        assert order == sorted(order)
        assert len(clip_tokenizer.encode(scene.caption)) + 2 <= 32  # fits grape-shapes-clip's context
    assert {len(s.objects) for s in scenes} == {1, 2, 3}
    shuffled = Scene(tuple(reversed(scenes[0].objects)))
    assert shuffled.caption == scenes[0].caption


def test_scene_validation_names_the_problem():
    with pytest.raises(ValueError, match="'hexagon'"):
        ShapeObject("hexagon", "red", "small", "left")
    with pytest.raises(ValueError, match="share a position"):
        Scene((ShapeObject("circle", "red", "small", "left"), ShapeObject("cross", "blue", "large", "left")))


@pytest.mark.parametrize(
    ("obj", "language", "expected"),
    [
        (("circle", "red", "small", "left"), "de", "ein kleiner roter Kreis links"),
        (("diamond", "orange", "large", "top"), "de", "eine große orangefarbene Raute oben"),
        (("square", "purple", "small", "middle"), "de", "ein kleines violettes Quadrat in der Mitte"),
        (("circle", "red", "small", "left"), "fr", "un petit cercle rouge à gauche"),
        (("cross", "green", "large", "bottom"), "fr", "une grande croix verte en bas"),
        (("cross", "purple", "small", "right"), "fr", "une petite croix violette à droite"),
        (("circle", "red", "small", "left"), "es", "un círculo rojo pequeño a la izquierda"),
        (("cross", "yellow", "small", "top"), "es", "una cruz amarilla pequeña arriba"),
        (("triangle", "orange", "large", "middle"), "es", "un triángulo naranja grande en el centro"),
        (("circle", "red", "small", "left"), "zh", "左边有一个红色的小圆形"),
        (("square", "blue", "large", "bottom"), "zh", "下面有一个蓝色的大正方形"),
    ],
)
def test_languages_agree_in_gender_and_order_words(obj, language, expected):
    assert describe_object(ShapeObject(*obj), language) == expected


def test_languages_join_objects():
    scene = Scene(
        (
            ShapeObject("circle", "red", "small", "left"),
            ShapeObject("cross", "blue", "large", "right"),
            ShapeObject("triangle", "green", "small", "top"),
        )
    )
    assert (
        describe(scene, "de")
        == "ein kleines grünes Dreieck oben, ein kleiner roter Kreis links und ein großes blaues Kreuz rechts"
    )
    assert describe(scene, "fr").endswith(" et une grande croix bleue à droite")
    assert describe(scene, "es").endswith(" y una cruz azul grande a la derecha")
    assert describe(scene, "zh") == "上面有一个绿色的小三角形，左边有一个红色的小圆形，右边有一个蓝色的大十字形"
    with pytest.raises(ValueError, match="'it'"):
        describe(scene, "it")


def _attribute_words():
    words = set(SHAPES) | set(COLOURS) | {"top", "left", "middle", "right", "bottom", "centre", "center"}
    words |= {
        w
        for phrases in SIZE_WORDS.values()
        for phrase in phrases
        for w in phrase.split()
        if w not in ("quite", "on", "the", "side")
    }
    return words


def test_long_form_is_long_scattered_and_complete(clip_tokenizer):
    forbidden = _attribute_words()
    for sentence in CHATTER:
        assert not forbidden & set(re.findall(r"[a-z]+", sentence.lower())), sentence
    for index, scene in enumerate(generate_scenes(25, seed=11)):
        rng_seed = 100 + index
        text = long_form_description(scene, rng_seed)
        assert len(clip_tokenizer.encode(text)) > 100
        for obj in scene.objects:
            assert obj.shape in text and obj.colour in text
            assert any(phrase in text for phrase in SIZE_WORDS[obj.size])
            assert any(phrase in text for phrase in POSITION_WORDS[obj.position])
        # Facts in sentences that start inside CLIP's 77-token window: at most one (real tokenizer counts).
        start, facts = 0, 0
        for sentence, count in long_form_sentences(scene, random.Random(rng_seed)):
            if start < LONG_FORM_PREFIX_TOKENS:
                facts += count
            start += len(clip_tokenizer.encode(sentence))
        assert facts <= 1
        assert long_form_description(scene, rng_seed) == text


def test_referring_expressions_are_minimal_and_unique():
    a = ShapeObject("circle", "red", "small", "left")
    b = ShapeObject("circle", "red", "large", "right")
    c = ShapeObject("circle", "red", "large", "top")
    assert referring_expression(a, Scene((a,))) == "circle"
    assert referring_expression(a, Scene((a, b))) == "small red circle"
    assert referring_expression(b, Scene((a, b, c))) == "circle on the right"


def test_each_edit_kind_changes_what_it_says():
    scene = Scene((ShapeObject("circle", "red", "small", "left"), ShapeObject("square", "blue", "large", "right")))
    for kind in EDIT_KINDS:
        edit = apply_random_edit(scene, random.Random(0), kinds=(kind,))
        assert edit.kind == kind and edit.target != scene
        before, after = set(scene.objects), set(edit.target.objects)
        if kind == "add":
            assert before < after and edit.text == f"add {(after - before).pop().phrase}"
        elif kind == "remove":
            assert after < before and edit.text.startswith("remove the ")
        else:
            (old,), (new,) = before - after, after - before
            changed = [f for f in ("shape", "colour", "size", "position") if getattr(old, f) != getattr(new, f)]
            assert changed == [{"move": "position"}.get(kind, kind)]
    with pytest.raises(ValueError, match="'recolour'"):
        apply_random_edit(scene, random.Random(0), kinds=("recolour",))


def test_composed_targets_exist_and_differ_from_the_reference():
    rows, corpus = build_shift("composed", num_images=90, seed=4)
    assert len(rows) == 90 // 4
    captions = [scene.caption for scene in corpus]
    assert len(set(captions)) == len(corpus)
    for row in rows:
        assert row["target_id"] != row["reference_id"]
        assert captions[row["reference_id"]] == row["reference"] != captions[row["target_id"]]
    assert len({row["edit_kind"] for row in rows}) >= 4
    with pytest.raises(ValueError, match="at least 300 images"):
        build_shift("composed", num_images=200, num_queries=100)


def test_composed_negatives_put_more_edits_of_the_reference_in_the_corpus():
    rows, corpus = build_shift("composed", num_images=60, seed=4, composed_negatives=4)
    assert len(rows) == 60 // 7 and len({scene.key for scene in corpus}) == 60
    for row in rows:
        reference = corpus[row["reference_id"]]
        # the reference's neighbours: scenes one edit away (the target and the 4 negatives, at least)
        near = [s for s in corpus if s.key != reference.key and _one_edit_apart(reference, s)]
        assert corpus[row["target_id"]] in near and len(near) >= 5
    with pytest.raises(ValueError, match=r"7 images per query \(reference, target, 5 other edit"):
        build_shift("composed", num_images=20, num_queries=3, composed_negatives=5)


def _one_edit_apart(a, b) -> bool:
    objects_a, objects_b = set(a.objects), set(b.objects)
    return len(objects_a ^ objects_b) <= 2 and abs(len(objects_a) - len(objects_b)) <= 1


def test_shift_datasets_have_exact_ground_truth():
    data = build_shift_dataset("multilingual", num_images=8, seed=2)
    queries, corpus = data["queries"], data["corpus"]
    assert set(queries.column_names) == {"query", "target_id", "shift", "language"}
    assert len(queries) == 8 * 4 and set(queries["language"]) == {"de", "fr", "es", "zh"}
    scenes = generate_scenes(8, seed=2)
    for row in queries:
        assert row["query"] == describe(scenes[row["target_id"]], row["language"])
    assert corpus[3]["image"].size == (64, 64) and corpus[3]["caption"] == scenes[3].caption
    long_form = build_shift_dataset("long_form", num_images=4, seed=2)["queries"]
    assert set(long_form["shift"]) == {"long_form"} and len(long_form) == 4
    with pytest.raises(ValueError, match="'paraphrase'"):
        build_shift("paraphrase")


def test_grape_task_holds_out_the_evaluation_scenes():
    from grape_hf.shapes import build_grape_task

    task = build_grape_task("multilingual", train_images=40, eval_images=40, eval_queries=8)
    val, train = task["validation"], task["train"]
    assert len(val) == 8 and sorted(set(val["language"])) == ["de", "es", "fr", "zh"]
    assert len({(t, lang) for t, lang in zip(val["target_id"], val["language"])}) == 8
    assert len(set(val["target_id"])) == 2  # the same two images in each language
    held_out = set(task["validation_corpus"]["caption"])
    assert train["target_caption"] and not held_out.intersection(train["target_caption"])
    corpus = task["validation_corpus"]
    assert all(corpus[t]["caption"] == c for t, c in zip(val["target_id"], val["target_caption"]))


def test_grape_task_composed_edits_change_what_is_retrieved(tmp_path):
    """The edit must matter: the target differs from the reference, which is in the corpus (so copying the reference
    caption finds the reference, not the target)."""
    from grape_hf.data import load_grape_dataset
    from grape_hf.shapes import build_grape_task

    task = build_grape_task("composed", train_images=48, eval_images=48, eval_queries=6)
    task.save_to_disk(str(tmp_path / "task"))
    data = load_grape_dataset(str(tmp_path / "task"), split="validation")
    assert len(data.queries) == 6 and len(data.corpus) == 48 and data.corpus[0].size == (64, 64)
    captions = task["validation_corpus"]["caption"]
    for row in data.queries:
        assert captions[row["reference_id"]] == row["reference"] != row["target_caption"] == captions[row["target_id"]]
    with pytest.raises(ValueError, match="'paraphrase'"):
        build_grape_task("paraphrase")


@pytest.fixture(scope="module")
def _shapes_clip():
    from grape_hf import load_retriever

    return load_retriever(SPEC, device="cpu")


@pytest.fixture
def shapes_clip(_shapes_clip):
    """The shipped checkpoint, loaded once; each test gets a copy (with its own once-only truncation warning)."""
    return copy.copy(_shapes_clip)


def test_word_probe_counts_named_and_falsely_named_attribute_words():
    from grape_hf.shapes.word_probe import word_recall

    rows, corpus = build_shift("multilingual", num_images=6, seed=1, languages=("de", "fr"))
    captions = [corpus[row["target_id"]].caption for row in rows]
    groups = [row["language"] for row in rows]
    # The target's caption itself names every attribute word and no other: recall 1, false 0 everywhere.
    exact = word_recall([[c] for c in captions], captions, groups)
    assert set(exact) == {"all", "de", "fr"}
    assert all(v == {"recall": 1.0, "false": 0.0} for per_word in exact.values() for v in per_word.values())
    # A synonym ("violet") names no colour; a wrong colour is a false hit of that word.
    rewrites = [["a large violet circle"], ["a small red circle"]]
    probe = word_recall(rewrites, ["a large red circle", "a small blue circle"])
    assert probe["all"]["red"] == {"recall": 0.0, "false": 1.0}
    assert probe["all"]["blue"] == {"recall": 0.0, "false": 0.0}
    assert probe["all"]["circle"] == {"recall": 1.0, "false": 0.0} and probe["all"]["large"]["recall"] == 1.0
    assert "square" not in probe["all"]  # no target has it
    with pytest.raises(ValueError, match="one entry per query: 1 sample lists, 2 captions"):
        word_recall([["a red circle"]], ["a red circle", "a blue square"])


def test_visible_facts_counts_the_attribute_words_in_clips_window(clip_tokenizer):
    from grape_hf.shapes.word_probe import visible_facts

    caption = "a small red circle at the top"
    chatter = "well, let me tell you about this lovely picture that I looked at for a long while today " * 3
    seen = visible_facts([caption, chatter + caption], [caption, caption], clip_tokenizer)
    # the caption alone: all 4 words seen; after ~60 tokens of chatter: none of them in the 32-token window
    assert seen["visible_facts"] == 0.5
    lengths = [len(clip_tokenizer.encode(text)) + 2 for text in (caption, chatter + caption)]
    assert seen["clip_tokens"] == sum(lengths) / 2 and lengths[1] > 32


def test_few_shot_examples_differ_in_language_and_come_from_training_scenes():
    from grape_hf.shapes import build_grape_task
    from grape_hf.shapes.prompts import few_shot_examples

    task = build_grape_task("multilingual", train_images=40, eval_images=40, eval_queries=4)
    shots = few_shot_examples("multilingual", task["train"])
    by_query = {row["query"]: row for row in task["train"]}
    assert len(shots) == 2 and len({by_query[s["query"]]["language"] for s in shots}) == 2
    assert all(by_query[s["query"]]["target_caption"] == s["rewrite"] for s in shots)
    assert few_shot_examples("multilingual", task["train"]) == shots  # seeded
    with pytest.raises(ValueError, match="No few-shot prompt for the shapes shift 'in_distribution'"):
        few_shot_examples("in_distribution", task["train"])


def test_shipped_checkpoint_ranks_in_distribution_captions(shapes_clip):
    rows, corpus = build_shift("in_distribution", num_images=40, seed=5)
    images = shapes_clip.encode_image([scene.render() for scene in corpus])
    text = shapes_clip.encode_text([row["query"] for row in rows])
    assert images.shape == text.shape == (40, 96)
    top1 = (text @ images.T).argmax(dim=1)
    accuracy = (top1 == torch.tensor([row["target_id"] for row in rows])).float().mean().item()
    assert accuracy >= 0.75
    german = shapes_clip.encode_text([describe(scene, "de") for scene in corpus])
    assert (german @ images.T).argmax(dim=1).eq(top1).float().mean() < accuracy


def test_truncation_warning_counts_clip_tokens(shapes_clip, clip_tokenizer):
    retriever = shapes_clip
    caption = generate_scenes(1, seed=0)[0].caption
    long_query = long_form_description(generate_scenes(1, seed=0)[0], 0)
    assert retriever._count_text_tokens([caption]) == [len(clip_tokenizer(caption)[0].nonzero())]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        retriever.encode_text([caption])
    with pytest.warns(UserWarning, match="text context of 32 tokens"):
        retriever.encode_text([long_query])


def test_tiny_open_clip_trains_on_shapes_and_round_trips(tmp_path):
    """A tiny open_clip from a JSON config in tmp_path: one contrastive step on shapes pairs, then saved in
    open_clip's format and reloaded through `load_retriever`."""
    import numpy as np
    import open_clip
    from open_clip.loss import ClipLoss
    from safetensors.torch import save_file

    from grape_hf import load_retriever

    config = {
        "model_cfg": {
            "embed_dim": 16,
            "vision_cfg": {"image_size": 64, "layers": 1, "width": 16, "head_width": 8, "patch_size": 16},
            "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
        },
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    }
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp_path}", output_dict=True)
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tmp_path}")
    scenes = generate_scenes(6, seed=0)
    images = torch.stack([preprocess(scene.render()) for scene in scenes])
    raw = torch.from_numpy(np.stack([np.asarray(scene.render()) for scene in scenes])).permute(0, 3, 1, 2)
    mean, std = (torch.tensor(config["preprocess_cfg"][k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    torch.testing.assert_close(images, (raw.float() / 255 - mean) / std)  # the training script's shortcut
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    out = model(images, tokenizer([scene.caption for scene in scenes]))
    loss = ClipLoss()(out["image_features"], out["text_features"], out["logit_scale"])
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(before["visual.conv1.weight"], model.visual.conv1.weight)

    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "open_clip_model.safetensors")
    )
    retriever = load_retriever(f"open_clip:local-dir:{tmp_path}", device="cpu")
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.eval().encode_image(images), dim=-1)
    torch.testing.assert_close(retriever.encode_image([scene.render() for scene in scenes]), expected)
