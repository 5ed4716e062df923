"""Multi30k and generic `datasets` loaders (grape_hf.data)."""

import pytest

from grape_hf.data import load_grape_dataset, load_multi30k


def test_multi30k_task2_pairs_queries_with_the_same_image(multi30k_path):
    data = load_multi30k(multi30k_path, split="validation")
    assert len(data.corpus) == 1014 == len(data.queries)
    first = data.queries[0]
    assert first["target_id"] == 0 and first["image_file"].endswith(".jpg")
    assert first["query"] == "Baumwolllager mit LKW"
    assert data.corpus[0] == "A group of people stand in the back of a truck filled with cotton."


def test_multi30k_subsets_are_seeded(multi30k_path):
    a = load_multi30k(multi30k_path, split="train", max_images=50, seed=1)
    b = load_multi30k(multi30k_path, split="train", max_images=50, seed=1)
    c = load_multi30k(multi30k_path, split="train", max_images=50, seed=2)
    assert a.corpus == b.corpus != c.corpus
    assert sorted(a.queries["target_id"]) == list(range(50))
    q = load_multi30k(multi30k_path, split="validation", max_queries=10)
    assert len(q.queries) == 10 and len(q.corpus) == 1014
    t1 = load_multi30k(multi30k_path, split="validation", task="task1", max_images=5)
    assert t1.info["task"] == "task1" and len(t1.corpus) == 5


def test_multi30k_bad_arguments(multi30k_path):
    with pytest.raises(ValueError, match="Unknown Multi30k split 'test'"):
        load_multi30k(multi30k_path, split="test")
    with pytest.raises(ValueError, match="descriptions 1-5 per image; got index 7"):
        load_multi30k(multi30k_path, query_index=7)
    with pytest.raises(ValueError, match="Unknown Multi30k task"):
        load_multi30k(multi30k_path, task="task3")


def test_generic_dataset_from_disk(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict(
        {
            "train": Dataset.from_dict({"question": ["a", "b"], "doc": [1, 0]}),
            "corpus": Dataset.from_dict({"text": ["zero", "one"]}),
        }
    ).save_to_disk(str(tmp_path / "ds"))
    data = load_grape_dataset(str(tmp_path / "ds"), split="train", query_column="question", target_column="doc")
    assert data.corpus == ["zero", "one"] and data.queries["target_id"] == [1, 0]
    with pytest.raises(ValueError, match="no split 'validation'; it has \\['train', 'corpus'\\]"):
        load_grape_dataset(str(tmp_path / "ds"), split="validation")
    with pytest.raises(ValueError, match="no column 'query'"):
        load_grape_dataset(str(tmp_path / "ds"), split="train")
    with pytest.raises(ValueError, match="only apply to a Multi30k folder"):
        load_grape_dataset(str(tmp_path / "ds"), max_images=3)
