import warnings

import pytest
import torch

from grape_hf import RankScorer


def brute_force_ranks(q, emb, targets):
    """rank = 1 + number of other items scoring strictly higher; best over the targets."""
    scores = q @ emb.T
    out = []
    for i, ts in enumerate(targets):
        ts = [ts] if isinstance(ts, int) else ts
        best = min(
            1 + sum(1 for j in range(emb.shape[0]) if j != t and scores[i, j] > scores[i, t] + 1e-6) for t in ts
        )
        out.append(best)
    return out


@pytest.fixture
def random_scorer(minilm):
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(103, 384), dim=-1)
    return RankScorer.from_embeddings(minilm, emb, chunk_size=10), emb


@pytest.mark.parametrize("chunk_size", [1, 7, 10, 103, 1000])
def test_ranks_match_brute_force_across_chunk_boundaries(minilm, chunk_size):
    torch.manual_seed(1)
    emb = torch.nn.functional.normalize(torch.randn(103, 384), dim=-1)
    scorer = RankScorer.from_embeddings(minilm, emb, chunk_size=chunk_size)
    q = torch.nn.functional.normalize(torch.randn(12, 384), dim=-1)
    targets = [0, 6, 7, 9, 10, 50, 99, 100, 101, 102, [3, 70], [102, 0, 55]]
    assert scorer.ranks(q, targets).tolist() == brute_force_ranks(q, emb, targets)


def test_ties_and_duplicates_do_not_push_the_target_down(minilm):
    emb = torch.nn.functional.normalize(torch.randn(6, 384), dim=-1)
    emb[3] = emb[1]  # a duplicate of the target
    emb[4] = emb[1]
    scorer = RankScorer.from_embeddings(minilm, emb, chunk_size=4)
    q = emb[1:2].clone()  # the query is the target itself
    assert scorer.ranks(q, [1]).tolist() == [1]
    assert scorer.ranks(q, [3]).tolist() == [1]
    # a query that prefers item 0 puts the target at rank 2, duplicates included
    q2 = torch.nn.functional.normalize(emb[0] * 2 + emb[1], dim=-1)[None]
    assert scorer.ranks(q2, [4]).tolist() == brute_force_ranks(q2, scorer.corpus_embeddings, [4]) == [2]


def test_rank_stats_similarities(random_scorer):
    scorer, emb = random_scorer
    q = torch.nn.functional.normalize(torch.randn(3, 384), dim=-1)
    stats = scorer.rank_stats(q, [5, 17, [20, 21]])
    scores = q @ emb.T
    torch.testing.assert_close(stats.target_similarity[:2], torch.stack([scores[0, 5], scores[1, 17]]))
    mask = torch.ones(103, dtype=torch.bool)
    mask[5] = False
    torch.testing.assert_close(stats.nontarget_similarity[0], scores[0, mask].mean(), atol=1e-5, rtol=0)
    top = scores[0, mask].topk(10).values.mean()
    torch.testing.assert_close(stats.topk_nontarget_similarity[0], top, atol=1e-5, rtol=0)
    expected = torch.stack([scores[0, 5], scores[1, 17], scores[2, 20]])
    torch.testing.assert_close(scorer.similarities(q, [5, 17, 20]), expected)


def test_search_matches_full_topk(random_scorer):
    scorer, emb = random_scorer
    q = torch.nn.functional.normalize(torch.randn(4, 384), dim=-1)
    scores, ids = scorer.search(q, k=15)
    full = (q @ emb.T).topk(15)
    assert ids.tolist() == full.indices.tolist()
    torch.testing.assert_close(scores, full.values)


def test_real_text_corpus_with_minilm(minilm):
    corpus = ["a dog runs on the grass", "two men play chess in a park", "a red car drives through snow"]
    scorer = RankScorer(minilm, corpus, show_progress_bar=False)
    assert scorer.ranks(["men playing a board game", "a puppy on a lawn"], [1, 0]).tolist() == [1, 1]
    q = minilm.encode_text(["a puppy on a lawn"])
    assert scorer.ranks(["a puppy on a lawn"], [2]).tolist() == brute_force_ranks(q, scorer.corpus_embeddings, [2])
    assert scorer.ranks(["a puppy on a lawn"], [2]).item() > 1


def test_corpus_cache_is_reused_and_rebuilt(minilm, tmp_path):
    corpus = ["a cat", "a dog", "a bird"]
    first = RankScorer(minilm, corpus, cache_dir=tmp_path, show_progress_bar=False)
    files = list(tmp_path.glob("corpus-*.safetensors"))
    assert len(files) == 1
    # A cache hit must not re-embed: prove it by planting different (valid) embeddings in the file.
    from safetensors.torch import save_file

    from grape_hf.retrieval.cache import CorpusCache

    planted = torch.nn.functional.normalize(torch.ones(3, 384), dim=-1)
    identity = first.identity
    assert CorpusCache(tmp_path).save(CorpusCache.key(identity), planted, identity) == files[0]
    assert torch.equal(RankScorer(minilm, corpus, cache_dir=tmp_path).corpus_embeddings, planted)
    # Another corpus gets another file.
    RankScorer(minilm, corpus + ["a fish"], cache_dir=tmp_path, show_progress_bar=False)
    assert len(list(tmp_path.glob("corpus-*.safetensors"))) == 2
    # Corrupted: rebuilt with a warning.
    files[0].write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="unreadable"):
        again = RankScorer(minilm, corpus, cache_dir=tmp_path, show_progress_bar=False)
    torch.testing.assert_close(again.corpus_embeddings, first.corpus_embeddings)
    # Mismatched shape: rebuilt with a warning.
    save_file({"embeddings": torch.ones(3, 8)}, str(files[0]), metadata=identity)
    with pytest.warns(UserWarning, match="re-embedding"):
        again = RankScorer(minilm, corpus, cache_dir=tmp_path, show_progress_bar=False)
    torch.testing.assert_close(again.corpus_embeddings, first.corpus_embeddings)


def test_sampled_negatives_mode(random_scorer, minilm):
    _, emb = random_scorer
    scorer = RankScorer.from_embeddings(minilm, emb, sampled_negatives=20, seed=3)
    q = emb[[4, 8]] + 0.01
    stats = scorer.rank_stats(q, [4, 8])
    assert stats.corpus_size == 103  # ranks are estimated among the whole corpus
    assert stats.ranks.tolist() == [1, 1]
    far = -emb[[4]]  # the query points away from the target: every negative beats it
    assert scorer.ranks(far, [4]).tolist() == [103]


def test_bad_inputs(minilm):
    with pytest.raises(ValueError, match="corpus is empty"):
        RankScorer(minilm, [])
    scorer = RankScorer(minilm, ["a", "b"], show_progress_bar=False)
    with pytest.raises(ValueError, match=r"target_id 1200 is outside the corpus \(2 items\)"):
        scorer.ranks(["a"], [1200])
    with pytest.raises(ValueError, match="target_id -1"):
        scorer.ranks(["a"], [-1])
    with pytest.raises(ValueError, match="2 target ids for 1 queries"):
        scorer.ranks(["a"], [0, 1])
    with pytest.raises(ValueError, match="have size 8 but retriever .* embeds to 384"):
        RankScorer.from_embeddings(minilm, torch.ones(4, 8))
    with pytest.raises(ValueError, match="strings or PIL images"):
        RankScorer(minilm, [1, 2], cache_dir="/tmp/unused-grape-cache")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RankScorer.from_embeddings(minilm, torch.ones(2, 384))


# ---------------------------------------------------------------- wrong results that used to pass silently
@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("12", "the string '12'"),
        ("40", "the string '40'"),
        (1.7, "target_id 1.7 .* is not a whole number"),
        (True, "the bool True"),
        ([1, "2"], "the string '2'"),
    ],
)
def test_target_ids_are_integers_never_guessed(minilm, target, message):
    scorer = RankScorer.from_embeddings(minilm, torch.nn.functional.normalize(torch.randn(50, 384), dim=-1))
    with pytest.raises(ValueError, match=message):
        scorer.ranks(torch.randn(1, 384), [target])


def test_integer_like_target_ids_still_work(random_scorer):
    import numpy as np

    scorer, emb = random_scorer
    q = emb[[12, 40, 7, 3]]
    ids = [np.int64(12), 40.0, torch.tensor(7), [np.int32(3), 5]]
    assert scorer.ranks(q, ids).tolist() == [1, 1, 1, 1]
    assert scorer.ranks(q[:1], 12).tolist() == [1]


@pytest.mark.parametrize("bad", ["nan", "inf", "zero"])
def test_degenerate_query_embedding_gets_the_worst_rank(random_scorer, bad):
    scorer, emb = random_scorer
    q = emb[[5, 6]].clone()
    q[1] = {"nan": torch.nan, "inf": torch.inf, "zero": 0.0}[bad]
    stats = scorer.rank_stats(q, [5, 6])
    assert stats.ranks.tolist() == [1, 103]
    assert stats.degenerate.tolist() == [False, True]
    assert stats.target_similarity[1] == -1 and stats.topk_nontarget_similarity[1] == 1
    assert torch.isfinite(stats.target_similarity).all() and torch.isfinite(stats.nontarget_similarity).all()
    scores, _ = scorer.search(q, k=3)
    assert scores[1].tolist() == [-float("inf")] * 3


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0.0])
def test_degenerate_corpus_rows_are_refused(minilm, bad):
    emb = torch.nn.functional.normalize(torch.randn(20, 384), dim=-1)
    emb[[3, 11]] = bad
    with pytest.raises(ValueError, match=r"2 corpus embedding row\(s\) .* \(rows 3, 11\)"):
        RankScorer.from_embeddings(minilm, emb)


def test_exact_stats_match_brute_force_with_multi_targets_and_ties(minilm):
    torch.manual_seed(4)
    emb = torch.nn.functional.normalize(torch.randn(57, 384), dim=-1)
    emb[10] = emb[2]
    scorer = RankScorer.from_embeddings(minilm, emb, chunk_size=8, top_k=5)
    q = torch.cat([emb[[2, 10]], torch.nn.functional.normalize(torch.randn(4, 384), dim=-1)])
    targets = [10, [2, 10], [0, 56, 9], 33, [8, 16], 7]
    stats = scorer.rank_stats(q, targets)
    assert stats.ranks.tolist() == brute_force_ranks(q, emb, targets)
    scores = q @ emb.T
    for i, ts in enumerate(targets):
        ts = [ts] if isinstance(ts, int) else ts
        others = torch.ones(57, dtype=torch.bool)
        others[ts] = False
        torch.testing.assert_close(stats.nontarget_similarity[i], scores[i, others].mean(), atol=1e-5, rtol=0)
        top = scores[i, others].topk(5).values.mean()
        torch.testing.assert_close(stats.topk_nontarget_similarity[i], top, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- sampled negatives
def test_sampled_negatives_are_deterministic_per_target_whatever_the_batch(random_scorer, minilm):
    _, emb = random_scorer
    scorer = RankScorer.from_embeddings(minilm, emb, sampled_negatives=30, seed=1)
    torch.manual_seed(2)
    q = torch.nn.functional.normalize(emb[[4] * 4 + [9] * 4] + 0.15 * torch.randn(8, 384), dim=-1)
    targets = [4] * 4 + [9] * 4
    ranks = scorer.ranks(q, targets)
    # Identical completions of one prompt: identical ranks.
    assert scorer.ranks(q[[0, 0, 0]], [4, 4, 4]).unique().numel() == 1
    # Another order, another split, another scorer with the same seed: the same ranks.
    order = torch.randperm(8)
    assert scorer.ranks(q[order], [targets[i] for i in order]).tolist() == ranks[order].tolist()
    assert scorer.ranks(q[5:], targets[5:]).tolist() == ranks[5:].tolist()
    again = RankScorer.from_embeddings(minilm, emb, sampled_negatives=30, seed=1)
    assert again.ranks(q[3:], targets[3:]).tolist() == ranks[3:].tolist()


def test_sampled_ranks_estimate_the_exact_ranks(minilm):
    torch.manual_seed(5)
    emb = torch.nn.functional.normalize(torch.randn(2000, 384), dim=-1)
    q = torch.nn.functional.normalize(emb[:200] + 0.6 * torch.randn(200, 384), dim=-1)
    exact = RankScorer.from_embeddings(minilm, emb).ranks(q, list(range(200))).float()
    estimate = RankScorer.from_embeddings(minilm, emb, sampled_negatives=200).ranks(q, list(range(200))).float()
    assert exact.median() > 10  # a spread of ranks, not all at the top
    spearman = torch.corrcoef(torch.stack([exact.argsort().argsort().float(), estimate.argsort().argsort().float()]))
    assert spearman[0, 1] > 0.9


@pytest.mark.parametrize("chunk_size", [512, 1024, 1500])
def test_ranks_match_brute_force_on_word_counted_chunks(minilm, chunk_size):
    """Chunks of a multiple of 512 items count beats 8 bytes at a time; others byte by byte."""
    torch.manual_seed(7)
    emb = torch.nn.functional.normalize(torch.randn(3000, 384), dim=-1)
    q = torch.nn.functional.normalize(emb[:40] + 0.9 * torch.randn(40, 384) / 384**0.5 * 8, dim=-1)
    q[0] = -emb[0]  # the target last: 2999 items beat it
    targets = list(range(40))
    scorer = RankScorer.from_embeddings(minilm, emb, chunk_size=chunk_size)
    scores = q @ emb.T
    expected = 1 + (scores > scores[torch.arange(40), targets][:, None] + 1e-6).sum(1)
    assert scorer.ranks(q, targets).tolist() == expected.tolist()
    assert scorer.ranks(q[:1], [0]).item() == 3000


def test_clip_rank_scorer_is_the_rank_scorer():
    """The first name stays importable: it ranks for any retriever, not only CLIP."""
    from grape_hf import CLIPRankScorer, RankScorer

    assert CLIPRankScorer is RankScorer
