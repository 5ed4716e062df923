"""Rewrite, then retrieve: a trained rewriter in front of a frozen retriever's corpus search.

[`GRAPERetriever`] ranks the corpus for the original query and for its rewrite, and can fuse several sampled rewrites
with the original by reciprocal-rank fusion (Cormack, Clarke & Büttcher, SIGIR 2009):

    RRF(d) = sum over rankings r of 1 / (rrf_k + rank_r(d)),   rank from 1, items below the fusion depth add 0.
"""

from __future__ import annotations

from typing import Any


class GRAPERetriever:
    """Search a corpus with rewritten queries.

    Args:
        rewriter: A `pipeline("grape-rewrite")` or a [`~grape_hf.rewriting.rewriter.QueryRewriter`].
        scorer ([`~grape_hf.retrieval.scorer.RankScorer`]): The frozen retriever and its embedded corpus.
        rrf_k (`int`, *optional*, defaults to `60`): The fusion constant; larger flattens the rank weights.
        depth (`int`, *optional*, defaults to `100`): How deep each ranking is read for fusion.
        index ([`~grape_hf.retrieval.index.CorpusIndex`], `str` or `Path`, *optional*): A FAISS index of the scorer's
        corpus
            (or the folder `grape-hf index build` wrote) to search instead of the exact chunked scan. It must have
            been built with the scorer's retriever and corpus; another one is refused, naming both.

    Example:
    ```python
    >>> import os; os.environ["HF_HUB_OFFLINE"] = "1"
    >>> from grape_hf import RankScorer, GRAPERetriever, load_retriever
    >>> corpus = ["a dog runs on the grass", "two men play chess", "a red car in the snow"]
    >>> scorer = RankScorer(load_retriever("sentence-transformers:all-MiniLM-L6-v2", device="cpu"), corpus,
    ...                         show_progress_bar=False)
    >>> search = GRAPERetriever(rewriter, scorer)  # doctest: +SKIP
    >>> search.search("Zwei Männer spielen Schach", k=2)["rewritten"]["ids"]  # doctest: +SKIP
    [1, 0]
    ```
    """

    def __init__(self, rewriter: Any, scorer: Any, rrf_k: int = 60, depth: int = 100, index: Any = None):
        if rrf_k < 0:
            raise ValueError(f"rrf_k must be >= 0, got {rrf_k}.")
        if depth < 1:
            raise ValueError(f"depth must be a positive number of corpus items, got {depth}.")
        self.rewriter = rewriter
        self.scorer = scorer
        self.rrf_k = rrf_k
        self.depth = depth
        if index is not None and not hasattr(index, "search"):
            from .index import CorpusIndex

            index = CorpusIndex.load(index)
        if index is not None:
            index.check_matches(scorer.identity)
        self.index = index

    def rewrite(
        self, queries: list[str], references: list[str] | None = None, num_rewrites: int = 1, **generate_kwargs
    ) -> list[list[str]]:
        """`num_rewrites` rewrites per query (sampled when more than one)."""
        if callable(getattr(self.rewriter, "rewrite", None)):  # QueryRewriter
            return self.rewriter.rewrite(queries, references, num_rewrites=num_rewrites, **generate_kwargs)
        outputs = self.rewriter(queries, reference=references, num_rewrites=num_rewrites, **generate_kwargs)
        return [out["rewrites"] for out in outputs]

    def search(
        self,
        query: str | list[str],
        k: int = 10,
        reference: str | list[str] | None = None,
        ensemble: int = 0,
        **generate_kwargs,
    ) -> dict | list[dict]:
        """Rank the corpus for each query, as written and as rewritten.

        Args:
            query (`str` or `list[str]`): The queries.
            k (`int`, *optional*, defaults to `10`): Results per ranking.
            reference (`str` or `list[str]`, *optional*): Reference captions (composed queries); reference images
                (PIL) for a vision-language rewriter.
            ensemble (`int`, *optional*, defaults to `0`): If > 0, sample this many rewrites and add an `"ensemble"`
                ranking that fuses them and the original query by reciprocal-rank fusion.
            **generate_kwargs: Generation settings for the rewriter.

        Returns:
            `dict` (a list of them for a list of queries): `{"query", "rewrite", "rewrites", "original": {"ids",
            "scores"}, "rewritten": {"ids", "scores"}}`, plus `"ensemble": {"ids", "scores"}` (RRF scores) in
            ensemble mode. Ids index the scorer's corpus, best first.
        """
        single = isinstance(query, str)
        queries = [query] if single else list(query)
        if not queries:
            return []
        for i, q in enumerate(queries):
            if not isinstance(q, str):
                raise TypeError(f"Query {i} is a {type(q).__name__} ({q!r:.60}), not a string.")
        if k < 1:
            raise ValueError(f"k must be a positive number of results, got {k}.")
        if ensemble < 0:
            raise ValueError(f"ensemble must be 0 (off) or a number of sampled rewrites, got {ensemble}.")
        references = [reference] if single and reference is not None and not isinstance(reference, list) else reference
        rewrites = self.rewrite(queries, references, num_rewrites=max(ensemble, 1), **generate_kwargs)

        texts = queries + [r for per_query in rewrites for r in per_query]
        depth = min(len(self.scorer), max(k, self.depth if ensemble else k))
        if self.index is not None:
            scores, ids = self.index.search(self.scorer.embed_queries(texts), k=depth)
        else:
            scores, ids = self.scorer.search(texts, k=depth)
        scores, ids = scores.tolist(), ids.tolist()
        results, row = [], len(queries)
        for i, q in enumerate(queries):
            n = len(rewrites[i])
            rewrite_rows = range(row, row + n)
            row += n
            result = {
                "query": q,
                "rewrite": rewrites[i][0],
                "rewrites": rewrites[i],
                "original": {"ids": ids[i][:k], "scores": scores[i][:k]},
                "rewritten": {"ids": ids[rewrite_rows[0]][:k], "scores": scores[rewrite_rows[0]][:k]},
            }
            if ensemble:
                fused = reciprocal_rank_fusion([ids[i]] + [ids[r] for r in rewrite_rows], rrf_k=self.rrf_k)[:k]
                result["ensemble"] = {"ids": [d for d, _ in fused], "scores": [s for _, s in fused]}
            results.append(result)
        return results[0] if single else results


def reciprocal_rank_fusion(rankings: list[list[int]], rrf_k: int = 60) -> list[tuple[int, float]]:
    """Fuse rankings (ids, best first) into `[(id, score), ...]`, best first; ties keep first-seen order.

    Example:
    ```python
    >>> reciprocal_rank_fusion([[3, 1, 2], [1, 3, 0]], rrf_k=0)
    [(3, 1.5), (1, 1.5), (2, 0.3333333333333333), (0, 0.3333333333333333)]
    ```
    """
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (rrf_k + rank)
    return sorted(scores.items(), key=lambda pair: -pair[1])
