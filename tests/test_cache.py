import os
import subprocess
import sys

import pytest
import torch

from grape_hf import RankScorer, load_retriever
from grape_hf.retrieval.cache import CorpusCache

CORPUS = ["a dog runs on the grass", "two men play chess", "a red car in the snow", "a woman reads a book"]


def _save_minilm(minilm, folder, perturb: float = 0.0):
    model = minilm.model
    if perturb:
        import copy

        model = copy.deepcopy(model)
        with torch.no_grad():
            torch.manual_seed(0)
            for p in model.parameters():
                p.add_(perturb * torch.randn_like(p))
    model.save(str(folder))
    return folder


def test_a_model_retrained_at_the_same_path_is_not_served_stale_embeddings(minilm, tmp_path):
    folder = _save_minilm(minilm, tmp_path / "model")
    first = RankScorer(load_retriever(f"st:{folder}", device="cpu"), CORPUS, cache_dir=tmp_path / "cache")
    assert first.cache_hit is False
    _save_minilm(minilm, folder, perturb=0.05)  # "retrained", saved over the old one
    retrained = load_retriever(f"st:{folder}", device="cpu")
    second = RankScorer(retrained, CORPUS, cache_dir=tmp_path / "cache", show_progress_bar=False)
    assert second.cache_hit is False
    torch.testing.assert_close(second.corpus_embeddings, retrained.encode_text(CORPUS))
    assert not torch.allclose(second.corpus_embeddings, first.corpus_embeddings)
    # A query equal to its target caption ranks it first.
    assert second.ranks(CORPUS, list(range(4))).tolist() == [1, 1, 1, 1]
    again = RankScorer(load_retriever(f"st:{folder}", device="cpu"), CORPUS, cache_dir=tmp_path / "cache")
    assert again.cache_hit is True


def test_a_relative_path_meaning_another_model_is_not_served_stale_embeddings(minilm, tmp_path, monkeypatch):
    _save_minilm(minilm, tmp_path / "a" / "model")
    _save_minilm(minilm, tmp_path / "b" / "model", perturb=0.05)
    monkeypatch.chdir(tmp_path / "a")
    in_a = RankScorer(load_retriever("st:model", device="cpu"), CORPUS, cache_dir=tmp_path / "cache")
    monkeypatch.chdir(tmp_path / "b")
    retriever_b = load_retriever("st:model", device="cpu")
    in_b = RankScorer(retriever_b, CORPUS, cache_dir=tmp_path / "cache", show_progress_bar=False)
    assert in_b.cache_hit is False
    torch.testing.assert_close(in_b.corpus_embeddings, retriever_b.encode_text(CORPUS))
    assert not torch.allclose(in_b.corpus_embeddings, in_a.corpus_embeddings)


def test_loaded_embeddings_do_not_depend_on_the_file(minilm, tmp_path):
    RankScorer(minilm, CORPUS, cache_dir=tmp_path, show_progress_bar=False)
    scorer = RankScorer(minilm, CORPUS, cache_dir=tmp_path)
    assert scorer.cache_hit
    before = scorer.rank_stats(["men playing chess"], [1])
    scorer.cache_file.write_bytes(scorer.cache_file.read_bytes()[:-1000] + b"\0" * 1000)  # rewritten in place
    after = scorer.rank_stats(["men playing chess"], [1])
    assert torch.equal(before.target_similarity, after.target_similarity)
    with open(scorer.cache_file, "r+b") as f:
        f.truncate(100)  # used to be a bus error with the file memory-mapped
    assert scorer.ranks(["men playing chess"], [1]).tolist() == [1]


def test_temp_files_are_unique_and_cleaned_up(tmp_path):
    cache = CorpusCache(tmp_path)
    key = cache.key("st:x", "f", "c")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"{cache.path(key).name}.{int(dead.stdout)}-deadbeef.tmp"
    live = tmp_path / f"{cache.path(key).name}.{os.getpid()}-cafecafe.tmp"
    stale.write_bytes(b"x" * 100)
    live.write_bytes(b"x" * 100)
    cache.save(key, torch.eye(3), {"spec": "st:x"})
    assert not stale.exists()  # left by a killed process: removed
    assert live.exists()  # another (running) process is still writing it
    live.unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == [cache.path(key).name]
    with pytest.raises(Exception):  # noqa: B017 - a failed save (here: not a tensor) leaves no temp file behind
        cache.save(key, "not a tensor", {"spec": "st:x"})
    assert sorted(p.name for p in tmp_path.iterdir()) == [cache.path(key).name]


def test_cache_dir_that_is_a_file_fails_before_embedding(minilm, tmp_path):
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("")
    with pytest.raises(ValueError, match=r"cache_dir '.*cache' is a file, not a folder"):
        RankScorer(minilm, CORPUS * 10_000, cache_dir=not_a_folder)
    with pytest.raises(ValueError, match=r"cache_dir '.*sub' cannot be created"):
        RankScorer(minilm, CORPUS, cache_dir=not_a_folder / "sub")


# Two processes building the same scorer at once (one embeds and writes, the other waits and loads): see
# tests/test_distributed.py, which checks it under `accelerate launch`.
