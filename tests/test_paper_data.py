"""The paper's benchmark loaders on small fixtures written here in each publisher's own schema (parquet with the Hub
card's columns and a README declaring the splits, or the authors' TSV / JSON files), so the real loading code runs
offline; each checks that query, target and corpus line up."""

import base64
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from grape_hf.data import PAPER_DATASETS, load_cirr, load_cvlue, load_docci, load_flickr30k_cn, load_xm3600

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]


def png(colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def colour_of(image) -> tuple:
    return image.convert("RGB").getpixel((0, 0))


def hub_repo(folder, splits: dict[str, pa.Table]):
    """A local copy of a Hub dataset repo: `data/<split>-00000-of-00001.parquet` and the README's `configs` block."""
    (folder / "data").mkdir(parents=True)
    lines = ["---", "configs:", "- config_name: default", "  data_files:"]
    for split, table in splits.items():
        pq.write_table(table, folder / "data" / f"{split}-00000-of-00001.parquet")
        lines += [f"  - split: {split}", f"    path: data/{split}-*"]
    (folder / "README.md").write_text("\n".join([*lines, "---", ""]))
    return folder


def image_struct(colours: list[str]) -> pa.Array:
    """What XM3600 stores: a plain `{bytes, path}` struct column (no `Image` feature)."""
    kind = pa.struct([("bytes", pa.binary()), ("path", pa.null())])
    return pa.array([{"bytes": png(c), "path": None} for c in colours], type=kind)


def image_feature_table(columns: dict, image_columns: tuple) -> pa.Table:
    """A table whose image columns are `datasets.Image` features (CIRR's and DOCCI's parquet)."""
    from datasets import Dataset, Features, Image, Value

    features = Features({k: Image() if k in image_columns else Value("string") for k in columns})
    rows = {k: [{"bytes": png(c), "path": None} for c in v] if k in image_columns else v for k, v in columns.items()}
    return Dataset.from_dict(rows, features=features).data.table


@pytest.fixture(scope="module")
def xm3600(tmp_path_factory):
    ids = ["a1", "b2", "c3"]

    def split(captions):
        return pa.table(
            {
                "image_id": ids,
                "image_locale": ["de", "fr", "zh"],
                "captions": captions,
                "captions_tokenized": captions,
                "captions_tokenized_lowercase": captions,
                "image": image_struct(COLOURS[:3]),
            }
        )

    return hub_repo(
        tmp_path_factory.mktemp("xm3600"),
        {
            "de": split([["ein roter Ball", "rot"], ["ein grünes Blatt"], ["ein blaues Auto", " "]]),
            "en": split([["a red ball", "red"], ["a green leaf"], ["a blue car"]]),
        },
    )


def test_xm3600_each_caption_is_a_query_for_its_image(xm3600):
    data = load_xm3600("de", source=str(xm3600))
    assert list(data.queries["query"]) == ["ein roter Ball", "rot", "ein grünes Blatt", "ein blaues Auto"]
    assert list(data.queries["target_id"]) == [0, 0, 1, 2]  # the blank caption is dropped
    assert [colour_of(data.corpus[t]) for t in data.queries["target_id"]] == [(255, 0, 0)] * 2 + [
        (0, 128, 0),
        (0, 0, 255),
    ]
    assert list(data.queries["image_id"]) == ["a1", "a1", "b2", "c3"] and data.info["num_images"] == 3
    captions = load_xm3600("de", corpus="captions", source=str(xm3600))
    assert captions.corpus == ["a red ball", "a green leaf", "a blue car"]  # each image's first English caption
    assert [captions.corpus[t] for t in captions.queries["target_id"]][2] == "a green leaf"
    subset = load_xm3600("de", source=str(xm3600), max_images=2, seed=1)
    assert len(subset.corpus) == 2 and max(subset.queries["target_id"]) == 1


def test_xm3600_names_a_missing_language_and_an_unreachable_id(xm3600):
    with pytest.raises(ValueError, match=r"has no split 'sw'"):
        load_xm3600("sw", source=str(xm3600))
    with pytest.raises(ValueError, match=r"corpus must be 'images' or 'captions', got 'text'"):
        load_xm3600("de", corpus="text", source=str(xm3600))
    # HF_HUB_OFFLINE=1 (the suite's setting): the Hub id cannot be reached; the error says how to get a copy
    with pytest.raises(ValueError, match=r"Cannot load the dataset 'floschne/xm3600' .*huggingface-cli download"):
        load_xm3600("de")


def test_cirr_pairs_point_into_the_image_split_and_test_labels_are_refused(tmp_path):
    ids = ["dev-0-0-img0", "dev-0-1-img1", "dev-1-0-img0", "dev-1-1-img1"]
    images = image_feature_table(
        {"id": ids, "img": COLOURS[:4], "category": ["x"] * 4, "split": ["val"] * 4}, ("img",)
    )
    gallery = hub_repo(tmp_path / "imgs", {"val": images})
    pairs = image_feature_table(
        {
            "candidate": ["red", "blue"],
            "candidate_id": [ids[0], ids[2]],
            "caption": ["make it green ", "make it yellow"],
            "target": ["green", "yellow"],
            "target_id": [ids[1], ids[3]],
            "split": ["val", "val"],
        },
        ("candidate", "target"),
    )
    source = hub_repo(tmp_path / "pairs", {"val": pairs})
    data = load_cirr(source=str(source), images=str(gallery))
    assert list(data.queries["query"]) == ["make it green", "make it yellow"]
    assert list(data.queries["target_id"]) == [1, 3] and list(data.queries["reference_id"]) == [0, 2]
    assert [colour_of(data.corpus[t]) for t in data.queries["target_id"]] == [(0, 128, 0), (255, 255, 0)]
    assert colour_of(data.queries[1]["reference"]) == colour_of(data.corpus[2])
    test = pairs.drop(["target", "target_id"])
    source = hub_repo(tmp_path / "test_pairs", {"test": test})
    with pytest.raises(ValueError, match="CIRR's test targets are withheld"):
        load_cirr("test", source=str(source), images=str(gallery))


def test_docci_descriptions_target_their_images(tmp_path):
    table = image_feature_table(
        {"image": COLOURS[:3], "example_id": ["t1", "t2", "t3"], "description": ["A red square. " * 40, "b", "c"]},
        ("image",),
    )
    data = load_docci(source=str(hub_repo(tmp_path / "docci", {"test": table})))
    assert data.queries["query"][0].startswith("A red square.") and list(data.queries["target_id"]) == [0, 1, 2]
    assert colour_of(data.corpus[0]) == (255, 0, 0) and list(data.queries["example_id"]) == ["t1", "t2", "t3"]
    # the mirror's later revisions name the description `answer`
    renamed = table.rename_columns(["image", "example_id", "answer"])
    data = load_docci(source=str(hub_repo(tmp_path / "docci_new", {"test": renamed})), max_images=2)
    assert len(data.corpus) == 2 and len(data.queries) == 2


def test_flickr30k_cn_reads_chinese_clips_tsv_and_jsonl(tmp_path):
    lines = [f"{100 + i}\t{base64.urlsafe_b64encode(png(c)).decode()}" for i, c in enumerate(COLOURS[:3])]
    (tmp_path / "test_imgs.tsv").write_text("\n".join(lines) + "\n")
    texts = [
        {"text_id": 7, "text": "一个红色的球", "image_ids": [100]},
        {"text_id": 8, "text": "蓝色的车", "image_ids": [102]},
    ]
    (tmp_path / "test_texts.jsonl").write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in texts))
    data = load_flickr30k_cn(tmp_path)
    assert list(data.queries["query"]) == ["一个红色的球", "蓝色的车"] and list(data.queries["target_id"]) == [0, 2]
    assert colour_of(data.corpus[2]) == (0, 0, 255) and list(data.queries["text_id"]) == [7, 8]
    with pytest.raises(ValueError, match=r"valid_imgs.tsv is missing .*Flickr30k-CN.zip"):
        load_flickr30k_cn(tmp_path, split="valid")
    with pytest.raises(ValueError, match="is not a folder"):
        load_flickr30k_cn(tmp_path / "nowhere")


def test_cvlue_captions_target_their_image_files(tmp_path):
    for i, colour in enumerate(COLOURS[:2]):
        (tmp_path / "images" / "val").mkdir(parents=True, exist_ok=True)
        (tmp_path / "images" / "val" / f"A-{i}.png").write_bytes(png(colour))
    entries = [
        {"image": "images/val/A-0.png", "caption": ["红色的方块", "一块红布"]},
        {"image": "images/val/A-1.png", "caption": ["绿色的叶子"]},
    ]
    (tmp_path / "val.json").write_text(json.dumps(entries, ensure_ascii=False))
    data = load_cvlue(tmp_path)
    assert list(data.queries["target_id"]) == [0, 0, 1] and len(data.corpus) == 2
    assert colour_of(data.corpus[data.queries["target_id"][2]]) == (0, 128, 0)
    with pytest.raises(ValueError, match="shared on request"):
        load_cvlue(tmp_path, annotations="test.json")


def test_every_paper_benchmark_has_a_loader():
    assert sorted(PAPER_DATASETS) == ["cirr", "cvlue", "docci", "flickr30k_cn", "xm3600"]


def test_paper_splits_hold_out_images_or_use_the_benchmarks_own(xm3600, tmp_path):
    from grape_hf.data import load_paper_split

    train = load_paper_split("xm3600", str(xm3600), "train", config="de", eval_images=1)
    held = load_paper_split("xm3600", str(xm3600), "eval", config="de", eval_images=1)
    assert len(train.corpus) == 2 and len(held.corpus) == 1
    assert not set(train.queries["image_id"]) & set(held.queries["image_id"])  # no held-out image is trained on
    assert len(train.queries) + len(held.queries) == 4 and set(held.queries["target_id"]) == {0}
    assert all(0 <= t < 2 for t in train.queries["target_id"])
    by_id = {"a1": (255, 0, 0), "b2": (0, 128, 0), "c3": (0, 0, 255)}  # each part's targets still point at their image
    for part in (train, held):
        for row in part.queries:
            assert colour_of(part.corpus[row["target_id"]]) == by_id[row["image_id"]]
    with pytest.raises(ValueError, match="xm3600 needs the query language"):
        load_paper_split("xm3600", str(xm3600), "train")
    with pytest.raises(ValueError, match="Unknown paper benchmark 'coco'"):
        load_paper_split("coco", str(xm3600))
    with pytest.raises(ValueError, match="flickr30k_cn is not on the Hub"):
        load_paper_split("flickr30k_cn")


def test_a_recipe_reads_a_paper_benchmark_through_its_script_arguments(xm3600):
    from grape_hf import GRAPEScriptArguments
    from grape_hf.training.stages import load_split

    args = GRAPEScriptArguments(
        dataset_name=str(xm3600), paper_dataset="xm3600", dataset_config="de", paper_eval_images=1
    )
    train, held = load_split(args, args.dataset_train_split, seed=0), load_split(args, args.dataset_test_split, 0)
    assert (len(train.corpus), len(held.corpus)) == (2, 1) and train.info["part"] == "train"
    with pytest.raises(ValueError, match="paper_dataset 'coco' is not a paper benchmark"):
        GRAPEScriptArguments(dataset_name=str(xm3600), paper_dataset="coco")
