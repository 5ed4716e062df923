import json

import pytest
import torch

from grape_hf import GRAPERetriever, RankScorer
from grape_hf.cli import main
from grape_hf.retrieval.index import CorpusIndex

faiss = pytest.importorskip("faiss")


class EchoRewriter:
    """A user's rewriter that returns the query unchanged (GRAPERetriever accepts any object with `rewrite`)."""

    def rewrite(self, queries, references=None, num_rewrites=1, **kwargs):
        return [[q] * num_rewrites for q in queries]


@pytest.fixture
def clustered(minilm):
    torch.manual_seed(0)
    centers = torch.nn.functional.normalize(torch.randn(50, 384), dim=-1)
    emb = torch.nn.functional.normalize(centers.repeat(100, 1) + 0.3 * torch.randn(5000, 384) / 384**0.5 * 8, dim=-1)
    return RankScorer.from_embeddings(minilm, emb)


@pytest.mark.parametrize(("kind", "least_recall"), [("flat", 1.0), ("hnsw", 0.9), ("ivf", 0.8)])
def test_index_kinds_and_their_recall_against_exact_search(clustered, kind, least_recall, tmp_path):
    scorer = clustered
    index = CorpusIndex.build(scorer.corpus_embeddings, scorer.identity, kind=kind)
    queries = torch.nn.functional.normalize(scorer.corpus_embeddings[:200] + 0.02 * torch.randn(200, 384), dim=-1)
    _, exact = scorer.search(queries, k=10)
    assert index.recall_at_k(queries, exact, k=10) >= least_recall
    loaded = CorpusIndex.load(index.save(tmp_path / kind))
    assert loaded.kind == kind and loaded.identity == scorer.identity
    assert torch.equal(loaded.search(queries, 10)[1], index.search(queries, 10)[1])


def test_auto_is_flat_under_the_limit_and_approximate_above(clustered):
    emb, identity = clustered.corpus_embeddings, clustered.identity
    assert CorpusIndex.build(emb, identity).kind == "flat"
    assert CorpusIndex.build(emb, identity, flat_limit=1000).kind == "hnsw"
    assert CorpusIndex.build(emb, identity, flat_limit=1000, approximate="ivf").kind == "ivf"
    with pytest.raises(ValueError, match="Unknown index kind 'annoy'"):
        CorpusIndex.build(emb, identity, kind="annoy")


def test_an_index_of_another_corpus_or_retriever_is_refused(minilm, tmp_path):
    corpus = ["a dog runs on the grass", "two men play chess", "a red car in the snow"]
    scorer = RankScorer(minilm, corpus, show_progress_bar=False)
    other = RankScorer(minilm, corpus + ["a cat"], show_progress_bar=False)
    CorpusIndex.build(other.corpus_embeddings, other.identity).save(tmp_path / "other")
    with pytest.raises(ValueError, match=r"built for corpus '[0-9a-f]{64}', but the scorer uses '[0-9a-f]{64}'"):
        GRAPERetriever(EchoRewriter(), scorer, index=tmp_path / "other")
    foreign = dict(scorer.identity, spec="open_clip:ViT-B-32@openai", fingerprint="0" * 64)
    CorpusIndex.build(scorer.corpus_embeddings, foreign).save(tmp_path / "foreign")
    with pytest.raises(ValueError, match=r"built for retriever 'open_clip:ViT-B-32@openai', but the scorer uses "):
        GRAPERetriever(EchoRewriter(), scorer, index=tmp_path / "foreign")
    own = CorpusIndex.build(scorer.corpus_embeddings, scorer.identity)
    search = GRAPERetriever(EchoRewriter(), scorer, index=own)
    assert (
        search.search("men playing a board game", k=2)["rewritten"]["ids"]
        == scorer.search(["men playing a board game"], k=2)[1][0].tolist()
    )


def test_cli_index_build_on_multi30k(multi30k_path, tmp_path, capsys, minilm):
    out = tmp_path / "index"
    args = ["index", "build", "--dataset", str(multi30k_path), "--max_images", "100", "--output_dir", str(out)]
    assert main([*args, "--cache_dir", str(tmp_path / "cache"), "--kind", "hnsw"]) == 0
    printed = capsys.readouterr().out
    assert "hnsw index of 100 items" in printed and "recall@10 against exact search on 100 queries" in printed
    meta = json.loads((out / "index.json").read_text())
    assert meta["identity"]["spec"] == "sentence-transformers:all-MiniLM-L6-v2"
    assert meta["identity"]["fingerprint"] == minilm.fingerprint()
    assert 0.9 <= meta["recall@10_vs_exact"] <= 1.0
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SystemExit):
        main(["index", "build", "--dataset", "/nonexistent", "--output_dir", str(blocker)])
    assert f"--output_dir '{blocker}' is a file" in capsys.readouterr().err


@pytest.fixture
def saved(minilm, tmp_path):
    """A small flat index saved to a folder, and the scorer it belongs to."""
    torch.manual_seed(0)
    scorer = RankScorer.from_embeddings(minilm, torch.nn.functional.normalize(torch.randn(40, 384), dim=-1))
    folder = CorpusIndex.build(scorer.corpus_embeddings, scorer.identity).save(tmp_path / "index")
    return scorer, folder


def test_a_rebuild_killed_between_its_files_is_refused(saved, tmp_path):
    scorer, folder = saved
    other = RankScorer.from_embeddings(scorer.retriever, scorer.corpus_embeddings[:30])
    CorpusIndex.build(other.corpus_embeddings, other.identity).save(tmp_path / "other")
    # What the old save left when killed after index.faiss: the new FAISS file next to the old index.json.
    (folder / "index.faiss").write_bytes((tmp_path / "other" / "index.faiss").read_bytes())
    with pytest.raises(ValueError, match=r"index.faiss does not match the SHA-256 that index.json names"):
        CorpusIndex.load(folder)
    # The new save removes index.json first and writes it last: a folder without it is no index.
    (folder / "index.json").unlink()
    with pytest.raises(ValueError, match="holds no grape_hf index"):
        CorpusIndex.load(folder)
    assert len(CorpusIndex.load(CorpusIndex.build(scorer.corpus_embeddings, scorer.identity).save(folder))) == 40


def _rewrite_ids(folder, ids, fix_hash):
    import hashlib

    from safetensors.torch import save

    data = save({"ids": ids})
    (folder / "index.safetensors").write_bytes(data)
    if fix_hash:  # a deliberate edit, hash updated too: the ids themselves must still be checked
        meta = json.loads((folder / "index.json").read_text())
        meta["files"]["index.safetensors"] = hashlib.sha256(data).hexdigest()
        (folder / "index.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("fix_hash", [False, True])
def test_edited_ids_are_refused(saved, fix_hash):
    _, folder = saved
    _rewrite_ids(folder, torch.arange(40).flip(0) if not fix_hash else torch.arange(40) + 5, fix_hash)
    message = "not a permutation of the corpus positions 0..39" if fix_hash else "index.safetensors does not match"
    with pytest.raises(ValueError, match=message):
        CorpusIndex.load(folder)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncate faiss", "index.faiss does not match the SHA-256"),
        ("remove faiss", "has index.json but no index.faiss"),
        ("no identity", "has no valid 'identity'"),
        ("bad json", r"index.json is not valid JSON"),
        ("old format", "has format 1, not 2"),
    ],
)
def test_a_damaged_index_folder_is_a_clear_error(saved, damage, message):
    _, folder = saved
    meta = json.loads((folder / "index.json").read_text())
    if damage == "truncate faiss":
        (folder / "index.faiss").write_bytes((folder / "index.faiss").read_bytes()[:100])
    elif damage == "remove faiss":
        (folder / "index.faiss").unlink()
    elif damage == "no identity":
        (folder / "index.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "identity"}))
    elif damage == "bad json":
        (folder / "index.json").write_text('{"format": 2, ')
    else:  # written by grape_hf before index.json held file hashes
        (folder / "index.json").write_text(json.dumps({"identity": meta["identity"], "kind": "flat", "size": 40}))
    with pytest.raises(ValueError, match=message) as info:
        CorpusIndex.load(folder)
    assert "rebuild it with `grape-hf index build`" in str(info.value)


def test_degenerate_queries_match_nothing_in_the_index_as_in_exact_search(saved):
    scorer, folder = saved
    index = CorpusIndex.load(folder)
    queries = torch.stack([torch.full((384,), float("nan")), torch.zeros(384), scorer.corpus_embeddings[5]])
    exact_scores, exact_ids = scorer.search(queries, k=4)
    scores, ids = index.search(queries, k=4)
    assert torch.equal(ids, exact_ids) and ids[:2].tolist() == [[0, 1, 2, 3]] * 2 and ids[2, 0] == 5
    assert torch.isinf(scores[:2]).all() and (scores[:2] < 0).all() and torch.equal(scores[:2], exact_scores[:2])
    assert index.search(queries[:0], k=4)[1].shape == (0, 4)


def test_an_index_of_another_retriever_setting_is_refused(saved):
    scorer, folder = saved
    index = CorpusIndex.load(folder)
    with pytest.raises(ValueError, match="built for retriever settings '[0-9a-f]{64}', but the scorer uses 'x'"):
        index.check_matches(dict(scorer.identity, settings="x"))


def test_cli_index_build_without_recall_queries(multi30k_path, tmp_path, capsys):
    out = tmp_path / "index"
    args = ["index", "build", "--dataset", str(multi30k_path), "--max_images", "30", "--output_dir", str(out),
            "--cache_dir", str(tmp_path / "cache")]  # fmt: skip
    assert main([*args, "--recall_queries", "0"]) == 0
    assert "recall not measured (--recall_queries 0)" in capsys.readouterr().out
    assert len(CorpusIndex.load(out)) == 30 and CorpusIndex.load(out).info["recall_queries"] == 0
    with pytest.raises(SystemExit):
        main([*args, "--recall_queries", "-1"])
    assert "--recall_queries must be a number >= 0, got -1" in capsys.readouterr().err
