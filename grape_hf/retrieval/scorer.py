"""`RankScorer`: the rank of the right item among a whole corpus, for a frozen retriever.

The corpus is embedded once (cached on disk, see [`~grape_hf.retrieval.cache.CorpusCache`]) and every query is scored
against all of it in chunks, so memory stays bounded for corpora of millions of items. The rank is exact:

    rank(q, t) = 1 + |{ j != t : s(q, j) > s(q, t) }|

with cosine similarity `s`. Scores within `tie_tolerance` (default 1e-6) of the target's count as ties, so
duplicate corpus items never push each other down. With several relevant ids per query the best rank counts.

A query whose embedding is NaN, infinite or zero ("degenerate") cannot be ranked: it gets the worst rank (the corpus
size), target similarity -1 and top-k non-target similarity +1, so every reward variant gives it its lowest value,
and `RankStats.degenerate` flags it. Corpus rows like that are refused when the corpus is embedded or loaded.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .cache import CorpusCache, content_hash
from .retrievers import Retriever
from .targets import normalize_targets

logger = logging.getLogger(__name__)


@dataclass
class RankStats:
    """What one scoring pass over the corpus yields, per query (all tensors of length Q).

    Attributes:
        ranks (`LongTensor`): 1-based rank of the best-ranked target.
        target_similarity (`FloatTensor`): cosine similarity to that target.
        nontarget_similarity (`FloatTensor`): mean similarity to every non-target item (score-inflation monitor).
        topk_nontarget_similarity (`FloatTensor`): mean similarity to the `top_k` highest-scoring non-targets.
        corpus_size (`int`): number of items ranked against.
        degenerate (`BoolTensor`, *optional*): queries whose embedding was NaN, infinite or zero (worst rank).
    """

    ranks: torch.Tensor
    target_similarity: torch.Tensor
    nontarget_similarity: torch.Tensor
    topk_nontarget_similarity: torch.Tensor
    corpus_size: int
    degenerate: torch.Tensor | None = None


def check_corpus_embeddings(embeddings: torch.Tensor, source: str) -> torch.Tensor:
    """Refuse corpus rows that are NaN, infinite or all zero: such a row would rank first for every query."""
    bad = ~torch.isfinite(embeddings).all(dim=1) | (embeddings.abs().sum(dim=1) == 0)
    if bool(bad.any()):
        rows = bad.nonzero().squeeze(1).tolist()
        shown = ", ".join(map(str, rows[:10])) + (", ..." if len(rows) > 10 else "")
        raise ValueError(
            f"{len(rows)} corpus embedding row(s) from {source} are NaN, infinite or all zero (rows {shown}); the "
            "retriever failed on those items. Remove or fix them (e.g. empty or corrupt items) and embed again."
        )
    return embeddings


def _count_per_row(beats: torch.Tensor) -> torch.Tensor:
    """Number of True per row of a contiguous `(Q, C)` bool matrix.

    Reducing bytes is slow in torch; reducing 8 bytes at a time as int64 words is ~10x faster. Sums of 64 words keep
    each byte lane at most 64, so lanes never carry into each other (nor into the sign bit); the lane sums are then
    added up as bytes.
    """
    rows, cols = beats.shape
    if cols % 512:
        return beats.view(torch.uint8).sum(1, dtype=torch.int32)
    lanes = beats.view(torch.int64).view(rows, cols // 512, 64).sum(2)
    return lanes.view(torch.uint8).view(rows, -1).sum(1, dtype=torch.int32)


def degenerate_rows(q: torch.Tensor) -> torch.Tensor:
    """Queries whose embedding is NaN, infinite or (near) zero: they carry no direction to rank by."""
    return ~torch.isfinite(q).all(dim=1) | (torch.nan_to_num(q).norm(dim=1) < 1e-6)


class RankScorer:
    """Ranks a corpus for a frozen retriever (CLIP, SigLIP, sentence-transformers) and reports where the right item
    lands.

    Args:
        retriever ([`~grape_hf.retrieval.retrievers.Retriever`]): Encodes queries (and the corpus).
        corpus (`list[str]` or `list[PIL.Image.Image]`): The items to retrieve from; a `datasets` column works too.
        cache_dir (`str` or `Path`, *optional*): Where to cache the corpus embeddings (safetensors, keyed by the
            retriever's identity, i.e. spec, weights and settings, and a hash of the corpus; see
            [`~grape_hf.retrieval.cache`]). A valid cache is read even from a read-only folder; otherwise the folder
            must be writable, which is checked before anything is embedded. If writing the cache fails (a full disk), a
            warning is shown and the embeddings are kept in memory, uncached. No caching if `None`.
        chunk_size (`int`, *optional*, defaults to `65536`): Corpus items scored at once. Beyond the corpus itself,
            exact ranking holds one `num_queries x chunk_size` float32 score block, a boolean block of the same shape
            and the matmul's working memory (about one more score block): about `9 x num_queries x chunk_size`
            bytes, 36 MB for 64 queries (a bare chunked `queries @ chunk.T` peaks at about 12x).
        sampled_negatives (`int`, *optional*): If set, estimate each rank from this many negatives instead of
            scanning the whole corpus (see [`~grape_hf.retrieval.negatives.SampledNegatives`]): deterministic per
            (targets, seed), so identical completions get identical rewards in any batch order.
        top_k (`int`, *optional*, defaults to `10`): How many top non-targets the margin statistic averages.
        tie_tolerance (`float`, *optional*, defaults to `1e-6`): Scores this close to the target's count as ties.
        show_progress_bar (`bool`, *optional*, defaults to `True`): Show a bar while embedding the corpus.
        seed (`int`, *optional*, defaults to `0`): Seed of the random negatives.

    Example:
    ```python
    >>> import os; os.environ["HF_HUB_OFFLINE"] = "1"
    >>> from grape_hf import RankScorer, load_retriever
    >>> retriever = load_retriever("sentence-transformers:all-MiniLM-L6-v2", device="cpu")
    >>> corpus = ["a dog runs on the grass", "two men play chess", "a red car in the snow"]
    >>> scorer = RankScorer(retriever, corpus, show_progress_bar=False)
    >>> scorer.ranks(["men playing a board game", "a dog on a lawn"], [1, 1]).tolist()
    [1, 3]
    ```
    """

    def __init__(
        self,
        retriever: Retriever,
        corpus: Sequence,
        cache_dir: str | Path | None = None,
        chunk_size: int = 65536,
        sampled_negatives: int | None = None,
        top_k: int = 10,
        tie_tolerance: float = 1e-6,
        show_progress_bar: bool = True,
        seed: int = 0,
        _embeddings: torch.Tensor | None = None,
    ):
        self.retriever = retriever
        self.chunk_size = int(chunk_size)
        self.top_k = int(top_k)
        self.tie_tolerance = float(tie_tolerance)
        self.sampled_negatives = sampled_negatives
        self.seed = seed
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive number of corpus items, got {chunk_size}.")
        if sampled_negatives is not None and (isinstance(sampled_negatives, bool) or sampled_negatives < 1):
            raise ValueError(f"sampled_negatives must be a positive count or None, got {sampled_negatives}.")
        if _embeddings is not None:
            self.corpus_embeddings = check_corpus_embeddings(_embeddings, "the given embeddings")
            digest = hashlib.sha256(memoryview(_embeddings.float().contiguous().numpy())).hexdigest()
            self.corpus_hash = f"embeddings:{digest}"
        else:
            corpus = list(corpus)
            if not corpus:
                raise ValueError("The corpus is empty; give at least one text or image to retrieve from.")
            self.corpus_embeddings = self._embed_corpus(corpus, cache_dir, show_progress_bar)
        self._sampler = None

    #: Whether the corpus embeddings came from the cache (None without a cache), and the cache file.
    cache_hit: bool | None = None
    cache_file: Path | None = None

    @classmethod
    def from_embeddings(cls, retriever: Retriever, embeddings: torch.Tensor, **kwargs) -> RankScorer:
        """Build a scorer from precomputed corpus embeddings (`(N, D)`, normalised here), skipping the embedding."""
        embeddings = torch.as_tensor(embeddings, dtype=torch.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] == 0:
            raise ValueError(
                f"Corpus embeddings must be a non-empty (N, D) matrix, got shape {tuple(embeddings.shape)}."
            )
        dim = retriever.embedding_dim
        if embeddings.shape[1] != dim:
            raise ValueError(
                f"The corpus embeddings have size {embeddings.shape[1]} but retriever {retriever.spec!r} embeds to "
                f"{dim}; embed the corpus with the same retriever."
            )
        check_corpus_embeddings(embeddings, "the given embeddings")
        embeddings = torch.nn.functional.normalize(embeddings, dim=-1)
        return cls(retriever, (), _embeddings=embeddings, **kwargs)

    def __len__(self) -> int:
        return self.corpus_embeddings.shape[0]

    def _corpus_sum(self) -> torch.Tensor:
        if getattr(self, "_sum", None) is None:
            # Chunked: summing in float64 at once would first copy the whole corpus to float64.
            emb = self.corpus_embeddings
            total = torch.zeros(emb.shape[1], dtype=torch.float64)
            for start in range(0, len(emb), self.chunk_size):
                total += emb[start : start + self.chunk_size].sum(0).double()
            self._sum = total
        return self._sum

    # ------------------------------------------------------------------ corpus embedding and its cache
    @property
    def identity(self) -> dict[str, str]:
        """What produced the corpus embeddings: the retriever's
        [`~grape_hf.retrieval.retrievers.Retriever.identity`] (spec, weight fingerprint, settings hash) and the corpus
        hash under `"corpus"`. The corpus cache and the FAISS index ([`~grape_hf.retrieval.index.CorpusIndex`]) store
        it and refuse another."""
        return {**self.retriever.identity(), "corpus": self.corpus_hash}

    def _embed_corpus(self, corpus: list, cache_dir, show_progress_bar: bool) -> torch.Tensor:
        is_text = isinstance(corpus[0], str)
        encode = self.retriever.encode_text if is_text else self.retriever.encode_image
        self.corpus_hash = content_hash(corpus)  # also checks the item types, with or without a cache
        if cache_dir is None:
            return check_corpus_embeddings(encode(corpus, show_progress_bar=show_progress_bar), self.retriever.spec)
        cache = CorpusCache(cache_dir)
        identity = self.identity
        key = cache.key(identity)
        shape = (len(corpus), self.retriever.embedding_dim)
        self.cache_file = cache.path(key)
        with cache.lock(key):  # under several processes, one embeds and writes; the others wait and load
            embeddings = cache.load(key, shape, identity)
            self.cache_hit = embeddings is not None
            if embeddings is not None:
                return embeddings
            if not cache.writable:  # a read-only folder serves a valid cache, but cannot take a new one
                raise ValueError(
                    f"cache_dir {str(cache.dir)!r} is not writable and holds no cache of this corpus for "
                    f"{self.retriever.spec!r}; give a writable folder (or None to not cache)."
                )
            embeddings = check_corpus_embeddings(
                encode(corpus, show_progress_bar=show_progress_bar), self.retriever.spec
            )
            try:
                cache.save(key, embeddings, identity)
            except OSError as err:  # a full disk must not lose the embedding pass
                warnings.warn(
                    f"Could not write the corpus cache {self.cache_file} ({err}); continuing with the embeddings in "
                    "memory, uncached. Free some space or pass another cache_dir to cache them next time.",
                    stacklevel=3,
                )
                self.cache_file = None
        return embeddings

    # ------------------------------------------------------------------ scoring
    def embed_queries(self, queries) -> torch.Tensor:
        """Embed text queries (a `(Q, D)` tensor of embeddings is passed through, normalised)."""
        if isinstance(queries, torch.Tensor):
            return torch.nn.functional.normalize(queries.float(), dim=-1)
        if isinstance(queries, str):
            queries = [queries]
        return self.retriever.encode_text(list(queries))

    def rank_stats(self, queries, target_ids) -> RankStats:
        """Score queries against the corpus (exact, chunked) or sampled negatives; see [`RankStats`]."""
        q = self.embed_queries(queries)
        n = len(self)
        targets = normalize_targets(target_ids, q.shape[0], n)
        degenerate = degenerate_rows(q)
        if bool(degenerate.any()):
            q = q.clone()
            q[degenerate] = 0.0  # scored harmlessly, then overwritten below
        if self.sampled_negatives is not None and self.sampled_negatives < n - 1:
            if self._sampler is None:
                from .negatives import SampledNegatives

                self._sampler = SampledNegatives(
                    self.corpus_embeddings, self.sampled_negatives, seed=self.seed, chunk_size=self.chunk_size
                )
            estimate = self._sampler.estimate(q, targets, top_k=self.top_k, tie_tolerance=self.tie_tolerance)
            stats = RankStats(*estimate, corpus_size=n)
        else:
            stats = self._exact_stats(q, targets)
        stats.degenerate = degenerate
        if bool(degenerate.any()):
            stats.ranks[degenerate] = n
            stats.target_similarity[degenerate] = -1.0
            stats.nontarget_similarity[degenerate] = 0.0
            stats.topk_nontarget_similarity[degenerate] = 1.0
        return stats

    def _exact_stats(self, q: torch.Tensor, targets: list[list[int]]) -> RankStats:
        num_q, n = q.shape[0], len(self)
        emb = self.corpus_embeddings
        # Targets as a (Q, W) slot matrix (W = most targets of any query), padded with -1.
        width = max(len(ts) for ts in targets)
        tid = torch.full((num_q, width), -1, dtype=torch.long)
        for qi, ts in enumerate(targets):
            tid[qi, : len(ts)] = torch.tensor(ts)
        valid = tid >= 0
        target_score = (q[:, None, :] * emb[tid.clamp(min=0)]).sum(-1)  # (Q, W)
        threshold = torch.where(valid, target_score + self.tie_tolerance, torch.inf)
        higher = torch.zeros(num_q, width, dtype=torch.long)
        k = min(self.top_k, max(n - 1, 1))
        top = torch.full((num_q, k), -torch.inf)
        chunk = min(self.chunk_size, n)
        # One score block and one boolean block, reused for every chunk: the documented memory bound. Each chunk
        # costs the matmul plus three passes over its scores (compare, count, top-k); the mean non-target
        # similarity needs none, since sum_j s(q, j) = q . sum_j e_j.
        score_buf = torch.empty(num_q * chunk)
        beats_buf = torch.empty(num_q * chunk, dtype=torch.bool)
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            size = stop - start
            scores = torch.matmul(q, emb[start:stop].T, out=score_buf[: num_q * size].view(num_q, size))
            beats = beats_buf[: num_q * size].view(num_q, size)
            for w in range(width):
                torch.gt(scores, threshold[:, w : w + 1], out=beats)
                higher[:, w] += _count_per_row(beats)
            here = valid & (tid >= start) & (tid < stop)
            if bool(here.any()):
                qi, wi = here.nonzero(as_tuple=True)
                cols = tid[qi, wi] - start
                # An item never counts against itself; then targets leave the top-k of non-targets.
                higher[qi, wi] -= (scores[qi, cols] > threshold[qi, wi]).long()
                scores[qi, cols] = -torch.inf
            top = torch.cat([top, scores.topk(min(k, size), dim=1).values], dim=1).topk(k, dim=1).values
        sum_all = q.double() @ self._corpus_sum()
        pair_rank = torch.where(valid, higher + 1, n + 1)
        ranks, best = pair_rank.min(dim=1)
        target_sim = target_score.gather(1, best[:, None]).squeeze(1)
        n_targets = valid.sum(1)
        sum_targets = torch.where(valid, target_score, 0.0).sum(1)
        n_other = n - n_targets
        nontarget = torch.where(
            n_other > 0,
            (sum_all - sum_targets.double()) / n_other.clamp(min=1),
            torch.zeros(num_q, dtype=torch.float64),
        ).float()
        top = torch.where(torch.isfinite(top), top, torch.nan)
        topk_mean = torch.nan_to_num(top.nanmean(1), nan=0.0)
        return RankStats(ranks, target_sim, nontarget, topk_mean, n)

    def ranks(self, queries, target_ids) -> torch.Tensor:
        """1-based rank of each query's target among the whole corpus (`LongTensor` of shape `(Q,)`).

        Args:
            queries (`list[str]` or `Tensor`): Text queries, or their `(Q, D)` embeddings.
            target_ids (`list[int]`, `list[list[int]]` or `Tensor`): The right corpus id per query, or a list of
                relevant ids (the best rank counts). Ids must be integers: strings, bools and fractional floats are
                refused rather than guessed at.
        """
        return self.rank_stats(queries, target_ids).ranks

    def similarities(self, queries, target_ids) -> torch.Tensor:
        """Cosine similarity of each query to its (best-ranked) target, shape `(Q,)`."""
        return self.rank_stats(queries, target_ids).target_similarity

    def search(self, queries, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-`k` corpus items per query: `(scores, ids)`, each `(Q, k)`, best first (chunked).

        A degenerate query (NaN, infinite or zero embedding) matches nothing: its scores are all `-inf` and its ids
        the placeholders `0..k-1` ([`~grape_hf.retrieval.index.CorpusIndex.search`] answers the same).
        """
        q = self.embed_queries(queries)
        degenerate = degenerate_rows(q)
        q = torch.where(degenerate[:, None], 0.0, q)
        k = min(k, len(self))
        best_scores = torch.full((q.shape[0], 0), -float("inf"))
        best_ids = torch.zeros((q.shape[0], 0), dtype=torch.long)
        for start in range(0, len(self), self.chunk_size):
            scores = q @ self.corpus_embeddings[start : start + self.chunk_size].T
            s, i = scores.topk(min(k, scores.shape[1]), dim=1)
            best_scores = torch.cat([best_scores, s], dim=1)
            best_ids = torch.cat([best_ids, i + start], dim=1)
            best_scores, order = best_scores.topk(min(k, best_scores.shape[1]), dim=1)
            best_ids = best_ids.gather(1, order)
        best_scores[degenerate] = -float("inf")
        best_ids[degenerate] = torch.arange(k)
        return best_scores, best_ids


# The first name, from when only CLIP retrievers were ranked; kept so that existing code keeps working.
CLIPRankScorer = RankScorer
