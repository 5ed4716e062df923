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
