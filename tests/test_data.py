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


def test_reward_corpus_descriptions_rank_images_by_their_mean_description(minilm, multi30k_path, tmp_path):
    """The reward's corpus of a Multi30k task2 run: image i is the mean of its first N descriptions' embeddings;
    evaluation (no seed) keeps description 1 alone; one description per item elsewhere is refused by name."""
    import torch

    from grape_hf import GRAPEScriptArguments, RankScorer
    from grape_hf.training.stages import build_scorer, load_split

    args = GRAPEScriptArguments(
        dataset_name=str(multi30k_path),
        max_train_images=12,
        max_train_samples=6,
        reward_corpus_descriptions=3,
        corpus_cache_dir=str(tmp_path),
    )
    views = [load_split(args, "train", 0, corpus_index=k) for k in (1, 2, 3)]
    assert [list(v.queries["query"]) for v in views[1:]] == [list(views[0].queries["query"])] * 2  # same queries
    assert views[1].corpus != views[0].corpus  # another annotator's descriptions of those images
    scorer = build_scorer(minilm, views[0], args, seed=0)
    each = [RankScorer(minilm, v.corpus, show_progress_bar=False).corpus_embeddings for v in views]
    expected = torch.nn.functional.normalize(torch.stack(each).mean(dim=0), dim=-1)
    assert len(scorer) == 12 and torch.allclose(scorer.corpus_embeddings, expected, atol=1e-5)
    assert torch.allclose(build_scorer(minilm, views[0], args).corpus_embeddings, each[0], atol=1e-6)
    task1 = GRAPEScriptArguments(
        dataset_name=str(multi30k_path),
        multi30k_task="task1",
        max_train_images=12,
        reward_corpus_descriptions=2,
        corpus_cache_dir=str(tmp_path),
    )
    with pytest.raises(ValueError, match="reward_corpus_descriptions=2 needs Multi30k task2"):
        build_scorer(minilm, load_split(task1, "train", 0), task1, seed=0)
    with pytest.raises(ValueError, match="reward_corpus_descriptions must be 1-5"):
        GRAPEScriptArguments(dataset_name=str(multi30k_path), reward_corpus_descriptions=6)


@pytest.mark.parametrize(("arg", "value"), [("max_queries", -1), ("max_queries", 0), ("max_images", -5)])
def test_a_non_positive_subset_size_is_refused(multi30k_path, arg, value):
    with pytest.raises(ValueError, match=f"{arg} must be a positive number of .*, got {value}"):
        load_multi30k(multi30k_path, split="validation", **{arg: value})
    if arg == "max_queries":
        with pytest.raises(ValueError, match=f"max_queries must be a positive number of queries .*, got {value}"):
            load_grape_dataset(str(multi30k_path), split="validation", max_queries=value)


def test_a_missing_dataset_is_a_value_error_naming_it(tmp_path):
    with pytest.raises(ValueError, match=r"Cannot load the dataset '.*nowhere'.*Check the path or the Hub id"):
        load_grape_dataset(str(tmp_path / "nowhere"))
