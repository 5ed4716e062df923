"""`CLIPRankScorer`: the rank of the right item among a whole corpus, for a frozen retriever.

The corpus is embedded once (cached on disk) and every query is scored against all of it in chunks, so memory
stays bounded for corpora of millions of items. The rank is exact:

    rank(q, t) = 1 + |{ j != t : s(q, j) > s(q, t) }|

with cosine similarity `s`. Scores within `tie_tolerance` (default 1e-6) of the target's count as ties, so
duplicate corpus items never push each other down. With several relevant ids per query the best rank counts.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .retrievers import Retriever

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
    """

    ranks: torch.Tensor
    target_similarity: torch.Tensor
    nontarget_similarity: torch.Tensor
    topk_nontarget_similarity: torch.Tensor
    corpus_size: int


def _content_hash(corpus: Sequence) -> str:
    digest = hashlib.sha256()
    for item in corpus:
        if isinstance(item, str):
            digest.update(b"t")
            digest.update(item.encode("utf-8"))
        elif hasattr(item, "tobytes") and hasattr(item, "size"):  # PIL image
            digest.update(f"i{item.mode}{item.size}".encode())
            digest.update(item.tobytes())
        else:
            raise ValueError(f"Corpus items must be strings or PIL images, got {type(item).__name__}.")
        digest.update(b"\0")
    return digest.hexdigest()


def _normalize_targets(target_ids, num_queries: int, corpus_size: int) -> list[list[int]]:
    if isinstance(target_ids, torch.Tensor):
        target_ids = target_ids.tolist()
    if isinstance(target_ids, int):
        target_ids = [target_ids]
    target_ids = list(target_ids)
    if len(target_ids) != num_queries:
        raise ValueError(
            f"Got {len(target_ids)} target ids for {num_queries} queries; pass one (or a list) per query."
        )
    out = []
    for t in target_ids:
        ids = [t] if isinstance(t, int | float) or (hasattr(t, "__int__") and not isinstance(t, list | tuple)) else t
        ids = [int(i) for i in ids]
        if not ids:
            raise ValueError("A query has an empty list of target ids; give at least one relevant corpus id.")
        for i in ids:
            if not 0 <= i < corpus_size:
                raise ValueError(
                    f"target_id {i} is outside the corpus ({corpus_size} items); ids are 0-based positions in the corpus."
                )
        out.append(ids)
    return out


class CLIPRankScorer:
    """Ranks a corpus for a frozen retriever and reports where the right item lands.

    Args:
        retriever ([`~grape_hf.retrievers.Retriever`]): Encodes queries (and the corpus).
        corpus (`list[str]` or `list[PIL.Image.Image]`): The items to retrieve from; a `datasets` column works too.
        cache_dir (`str` or `Path`, *optional*): Where to cache the corpus embeddings (safetensors, keyed by the
            retriever spec and a hash of the corpus content). No caching if `None`.
        chunk_size (`int`, *optional*, defaults to `65536`): Corpus items scored at once; bounds memory at
            `num_queries x chunk_size` floats.
        sampled_negatives (`int`, *optional*): If set, rank each target among itself and this many sampled
            negatives instead of the whole corpus (approximate; for corpora too large to scan each step). Half are
            hard negatives (the target's nearest corpus neighbours), half random.
        top_k (`int`, *optional*, defaults to `10`): How many top non-targets the margin statistic averages.
        tie_tolerance (`float`, *optional*, defaults to `1e-6`): Scores this close to the target's count as ties.
        show_progress_bar (`bool`, *optional*, defaults to `True`): Show a bar while embedding the corpus.
        seed (`int`, *optional*, defaults to `0`): Seed of the random negatives.

    Example:
    ```python
    >>> import os; os.environ["HF_HUB_OFFLINE"] = "1"
    >>> from grape_hf import CLIPRankScorer, load_retriever
    >>> retriever = load_retriever("sentence-transformers:all-MiniLM-L6-v2", device="cpu")
    >>> corpus = ["a dog runs on the grass", "two men play chess", "a red car in the snow"]
    >>> scorer = CLIPRankScorer(retriever, corpus, show_progress_bar=False)
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
        if _embeddings is not None:
            self.corpus_embeddings = _embeddings
        else:
            corpus = list(corpus)
            if not corpus:
                raise ValueError("The corpus is empty; give at least one text or image to retrieve from.")
            self.corpus_embeddings = self._embed_corpus(corpus, cache_dir, show_progress_bar)
        if sampled_negatives is not None and sampled_negatives < 1:
            raise ValueError(f"sampled_negatives must be a positive count or None, got {sampled_negatives}.")
        self._hard_negatives: dict[int, torch.Tensor] = {}

    @classmethod
    def from_embeddings(cls, retriever: Retriever, embeddings: torch.Tensor, **kwargs) -> CLIPRankScorer:
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
        embeddings = torch.nn.functional.normalize(embeddings, dim=-1)
        return cls(retriever, (), _embeddings=embeddings, **kwargs)

    def __len__(self) -> int:
        return self.corpus_embeddings.shape[0]

    # ------------------------------------------------------------------ corpus embedding and its cache
    def _embed_corpus(self, corpus: list, cache_dir, show_progress_bar: bool) -> torch.Tensor:
        is_text = isinstance(corpus[0], str)
        cache_file = None
        if cache_dir is not None:
            key = hashlib.sha256(f"{self.retriever.spec}\n{_content_hash(corpus)}".encode()).hexdigest()[:32]
            cache_file = Path(cache_dir).expanduser() / f"corpus-{key}.safetensors"
            cached = self._load_cache(cache_file, len(corpus))
            if cached is not None:
                return cached
        encode = self.retriever.encode_text if is_text else self.retriever.encode_image
        embeddings = encode(corpus, show_progress_bar=show_progress_bar)
        if cache_file is not None:
            from safetensors.torch import save_file

            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(".tmp")
            save_file({"embeddings": embeddings.contiguous()}, str(tmp), metadata={"spec": self.retriever.spec})
            tmp.replace(cache_file)
        return embeddings

    def _load_cache(self, path: Path, expected_rows: int) -> torch.Tensor | None:
        if not path.is_file():
            return None
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                spec = (f.metadata() or {}).get("spec")
                embeddings = f.get_tensor("embeddings")
        except Exception as err:  # noqa: BLE001 - any unreadable file is rebuilt
            warnings.warn(f"The corpus cache {path} is unreadable ({err}); re-embedding the corpus.", stacklevel=3)
            return None
        dim = self.retriever.embedding_dim
        if spec != self.retriever.spec or embeddings.shape != (expected_rows, dim):
            warnings.warn(
                f"The corpus cache {path} holds {tuple(embeddings.shape)} embeddings from {spec!r}, but "
                f"{(expected_rows, dim)} from {self.retriever.spec!r} are needed; re-embedding the corpus.",
                stacklevel=3,
            )
            return None
        return embeddings.float()

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
        targets = _normalize_targets(target_ids, q.shape[0], n)
        if self.sampled_negatives is not None and self.sampled_negatives < n - 1:
            return self._sampled_stats(q, targets)
        return self._exact_stats(q, targets)

    def _exact_stats(self, q: torch.Tensor, targets: list[list[int]]) -> RankStats:
        num_q, n = q.shape[0], len(self)
        emb = self.corpus_embeddings
        # Flatten (query, target) pairs so that multi-target queries need no padding.
        pair_query = torch.tensor([i for i, ts in enumerate(targets) for _ in ts], dtype=torch.long)
        pair_target = torch.tensor([t for ts in targets for t in ts], dtype=torch.long)
        pair_score = (q[pair_query] * emb[pair_target]).sum(-1)
        higher = torch.zeros(len(pair_target), dtype=torch.long)
        sum_all = torch.zeros(num_q)
        k = min(self.top_k, max(n - 1, 1))
        top = torch.full((num_q, k), -float("inf"))
        for start in range(0, n, self.chunk_size):
            stop = min(start + self.chunk_size, n)
            scores = q @ emb[start:stop].T  # (Q, C)
            sum_all += scores.sum(1)
            beats = scores[pair_query] > (pair_score[:, None] + self.tie_tolerance)
            rows = ((pair_target >= start) & (pair_target < stop)).nonzero().squeeze(1)
            beats[rows, pair_target[rows] - start] = False  # an item never counts against itself
            higher += beats.sum(1)
            masked = scores.clone()
            masked[pair_query[rows], pair_target[rows] - start] = -float("inf")
            chunk_k = min(k, stop - start)
            top = torch.cat([top, masked.topk(chunk_k, dim=1).values], dim=1).topk(k, dim=1).values
        pair_rank = higher + 1
        ranks = torch.empty(num_q, dtype=torch.long)
        target_sim = torch.empty(num_q)
        sum_targets = torch.zeros(num_q)
        n_targets = torch.zeros(num_q)
        offset = 0
        for qi, ts in enumerate(targets):
            r = pair_rank[offset : offset + len(ts)]
            s = pair_score[offset : offset + len(ts)]
            best = int(torch.argmin(r))
            ranks[qi] = r[best]
            target_sim[qi] = s[best]
            sum_targets[qi] = s.sum()
            n_targets[qi] = len(ts)
            offset += len(ts)
        n_other = (n - n_targets).clamp(min=1)
        nontarget = torch.where(n - n_targets > 0, (sum_all - sum_targets) / n_other, torch.zeros(num_q))
        top = torch.where(torch.isfinite(top), top, torch.nan)
        topk_mean = torch.nan_to_num(top.nanmean(1), nan=0.0)
        return RankStats(ranks, target_sim, nontarget, topk_mean, n)

    def _hard_negatives_for(self, target: int, count: int) -> torch.Tensor:
        cached = self._hard_negatives.get(target)
        if cached is None or len(cached) < count:
            sims = self.corpus_embeddings @ self.corpus_embeddings[target]
            sims[target] = -float("inf")
            cached = sims.topk(min(count, len(self) - 1)).indices
            self._hard_negatives[target] = cached
        return cached[:count]

    def _sampled_stats(self, q: torch.Tensor, targets: list[list[int]]) -> RankStats:
        generator = torch.Generator().manual_seed(self.seed)
        n = len(self)
        num_hard = self.sampled_negatives // 2
        num_random = self.sampled_negatives - num_hard
        ranks, tsim, nsim, ksim = [], [], [], []
        for qi, ts in enumerate(targets):
            exclude = set(ts)
            hard = [int(i) for i in self._hard_negatives_for(ts[0], num_hard + len(ts)) if int(i) not in exclude]
            hard = hard[:num_hard]
            pool = set(hard) | exclude
            randoms: list[int] = []
            while len(randoms) < num_random and len(pool) < n:
                for i in torch.randint(0, n, (num_random * 2,), generator=generator).tolist():
                    if i not in pool:
                        pool.add(i)
                        randoms.append(i)
                        if len(randoms) == num_random:
                            break
            negatives = torch.tensor(hard + randoms, dtype=torch.long)
            neg_scores = self.corpus_embeddings[negatives] @ q[qi]
            target_scores = self.corpus_embeddings[torch.tensor(ts)] @ q[qi]
            best = target_scores.max()
            ranks.append(1 + int((neg_scores > best + self.tie_tolerance).sum()))
            tsim.append(best)
            nsim.append(neg_scores.mean())
            ksim.append(neg_scores.topk(min(self.top_k, len(neg_scores))).values.mean())
        return RankStats(
            torch.tensor(ranks), torch.stack(tsim), torch.stack(nsim), torch.stack(ksim), self.sampled_negatives + 1
        )

    def ranks(self, queries, target_ids) -> torch.Tensor:
        """1-based rank of each query's target among the whole corpus (`LongTensor` of shape `(Q,)`).

        Args:
            queries (`list[str]` or `Tensor`): Text queries, or their `(Q, D)` embeddings.
            target_ids (`list[int]`, `list[list[int]]` or `Tensor`): The right corpus id per query, or a list of
                relevant ids (the best rank counts).
        """
        return self.rank_stats(queries, target_ids).ranks

    def similarities(self, queries, target_ids) -> torch.Tensor:
        """Cosine similarity of each query to its (best-ranked) target, shape `(Q,)`."""
        return self.rank_stats(queries, target_ids).target_similarity

    def search(self, queries, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-`k` corpus items per query: `(scores, ids)`, each `(Q, k)`, best first (chunked)."""
        q = self.embed_queries(queries)
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
        return best_scores, best_ids
