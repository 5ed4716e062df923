r"""Ranks estimated from sampled negatives, for corpora too large to scan at every GRPO step.

The corpus (less the query's targets) is split in two strata for each target set `T`:

- the `h` **hard** negatives: the items nearest to the first target in the corpus embedding space, counted exactly;
- the rest, of size `m = N - |T| - h`, from which `r` **random** items are drawn (with replacement).

The rank estimate is stratified: the hard negatives that beat the target, plus the random ones that do scaled up to
the size of their stratum,

$$ \widehat{\mathrm{rank}} = 1 + |\{j \in H : s(q,j) > s(q,t)\}| + \frac{m}{r}\,|\{j \in R : s(q,j) > s(q,t)\}| $$

rounded to an integer in `[1, N]`. Both strata are fixed by `(targets, seed)` alone, so identical completions of one
prompt get identical rewards whatever the batch, its order or its split across processes: GRPO's group advantages
see no sampling noise. The hard negatives of each target set are found once (one chunked pass over the corpus for
all new targets of a call) and kept.
"""

from __future__ import annotations

import hashlib

import torch


class SampledNegatives:
    """Deterministic stratified rank estimates against `num_negatives` negatives per target set.

    Args:
        corpus_embeddings (`Tensor`): The `(N, D)` unit-norm corpus.
        num_negatives (`int`): Negatives per target set; half hard, half random.
        seed (`int`, *optional*, defaults to `0`): Seed of the random stratum.
        chunk_size (`int`, *optional*, defaults to `65536`): Corpus items per block when finding hard negatives.

    Example:
    ```python
    >>> import torch
    >>> from grape_hf.retrieval.negatives import SampledNegatives
    >>> generator = torch.Generator().manual_seed(0)
    >>> corpus = torch.nn.functional.normalize(torch.randn(1000, 16, generator=generator), dim=1)
    >>> sampler = SampledNegatives(corpus, num_negatives=100, seed=0)
    >>> ranks, *_ = sampler.estimate(corpus[[3, 7]], [[3], [3]])  # item 7 as a query for target 3
    >>> ranks.tolist()  # exact: [1, 617]
    [1, 654]
    ```
    """

    def __init__(self, corpus_embeddings: torch.Tensor, num_negatives: int, seed: int = 0, chunk_size: int = 65536):
        self.emb = corpus_embeddings
        self.num_hard = num_negatives // 2
        self.num_random = num_negatives - self.num_hard
        self.seed = int(seed)
        self.chunk_size = int(chunk_size)
        self._hard: dict[tuple[int, ...], torch.Tensor] = {}

    def _find_hard(self, keys: list[tuple[int, ...]]) -> None:
        """Hard negatives of every new target set, in one chunked pass over the corpus."""
        new = [key for key in dict.fromkeys(keys) if key not in self._hard]
        if not new or self.num_hard == 0:
            for key in new:
                self._hard[key] = torch.empty(0, dtype=torch.long)
            return
        n = self.emb.shape[0]
        anchors = self.emb[torch.tensor([key[0] for key in new])]
        want = min(self.num_hard + max(len(key) for key in new), n)
        best_s = torch.full((len(new), 0), -torch.inf)
        best_i = torch.zeros((len(new), 0), dtype=torch.long)
        for start in range(0, n, self.chunk_size):
            sims = anchors @ self.emb[start : start + self.chunk_size].T
            s, i = sims.topk(min(want, sims.shape[1]), dim=1)
            best_s, order = torch.cat([best_s, s], 1).topk(min(want, best_s.shape[1] + s.shape[1]), dim=1)
            best_i = torch.cat([best_i, i + start], 1).gather(1, order)
        for row, key in enumerate(new):
            ids = best_i[row]
            ids = ids[~torch.isin(ids, torch.tensor(key))][: self.num_hard]
            self._hard[key] = ids

    def _random(self, key: tuple[int, ...], exclude: torch.Tensor) -> torch.Tensor:
        """`num_random` draws from the corpus outside `exclude`, fixed by (key, seed)."""
        n = self.emb.shape[0]
        if self.num_random == 0 or n - len(exclude) <= 0:
            return torch.empty(0, dtype=torch.long)
        digest = hashlib.sha256(f"{self.seed}:{','.join(map(str, key))}".encode()).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
        picked = torch.empty(0, dtype=torch.long)
        while len(picked) < self.num_random:
            draw = torch.randint(0, n, (2 * self.num_random,), generator=generator)
            picked = torch.cat([picked, draw[~torch.isin(draw, exclude)]])
        return picked[: self.num_random]

    def estimate(
        self, q: torch.Tensor, targets: list[list[int]], top_k: int = 10, tie_tolerance: float = 1e-6
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per query: the estimated rank among the whole corpus, the target similarity, the mean similarity of the
        random stratum (an unbiased estimate of the mean non-target similarity) and the mean of the `top_k` highest
        sampled negatives."""
        n, num_q = self.emb.shape[0], q.shape[0]
        keys = [tuple(ts) for ts in targets]
        self._find_hard(keys)
        ranks = torch.empty(num_q, dtype=torch.long)
        tsim, nsim, ksim = torch.empty(num_q), torch.empty(num_q), torch.empty(num_q)
        groups: dict[tuple[int, ...], list[int]] = {}
        for qi, key in enumerate(keys):
            groups.setdefault(key, []).append(qi)
        # Completions of one prompt share their negatives: one gather and one matmul per target set.
        for key, rows in groups.items():
            rows = torch.tensor(rows)
            target_ids = torch.tensor(key)
            hard = self._hard[key]
            random = self._random(key, torch.cat([target_ids, hard]))
            qs = q[rows].T  # (D, G)
            best = (self.emb[target_ids] @ qs).amax(0)  # (G,)
            scores = self.emb[torch.cat([hard, random])] @ qs  # (h + r, G)
            beats = scores > best + tie_tolerance
            estimate = beats[: len(hard)].sum(0).double()
            if len(random):
                rest = n - len(key) - len(hard)
                estimate += beats[len(hard) :].sum(0).double() * rest / len(random)
            ranks[rows] = (1 + estimate.round().long()).clamp(max=n)
            tsim[rows] = best
            nsim[rows] = scores[len(hard) :].mean(0) if len(random) else scores.mean(0)
            ksim[rows] = scores.topk(min(top_k, len(scores)), dim=0).values.mean(0)
        return ranks, tsim, nsim, ksim
