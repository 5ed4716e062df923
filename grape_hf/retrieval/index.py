"""A FAISS index over a corpus, for serving large corpora: `grape-hf index build` writes one, [`GRAPERetriever`]
searches it.

Inner product on unit vectors (cosine similarity, as the scorer ranks). Below `flat_limit` items the index is exact
(`IndexFlatIP`); above it, approximate: IVF (`IndexIVFFlat`, `nlist ~ 4 sqrt(N)` lists, `nprobe` probed) or HNSW
(`IndexHNSWFlat`). The folder holds `index.faiss`, `index.safetensors` (the corpus id of each row) and `index.json`:
the retriever's identity (spec and weight fingerprint), the corpus hash and the measured recall@10 against exact
search. An index built with another retriever or corpus is refused. Training still ranks exactly with the scorer:
the index only serves search.

Needs the `faiss` extra (`pip install grape_hf[faiss]`).

[`GRAPERetriever`]: grape_hf.retrieval.search.GRAPERetriever
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

INDEX_KINDS = ("auto", "flat", "ivf", "hnsw")


def _faiss():
    try:
        import faiss
    except ImportError as err:
        raise ImportError("The FAISS index needs faiss: pip install 'grape_hf[faiss]' (faiss-cpu).") from err
    return faiss


class CorpusIndex:
    """A FAISS index of a scorer's corpus embeddings, tied to the retriever and corpus that produced them.

    Example:
    ```python
    >>> import torch
    >>> from grape_hf.retrieval.index import CorpusIndex
    >>> emb = torch.nn.functional.normalize(torch.randn(500, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    >>> index = CorpusIndex.build(emb, {"spec": "st:demo", "fingerprint": "f00d", "corpus": "c0ffee"})
    >>> index.kind, index.search(emb[[7]], k=1)[1].tolist()
    ('flat', [[7]])
    ```
    """

    def __init__(self, index, ids: torch.Tensor, identity: dict, kind: str, info: dict | None = None):
        self.index = index
        self.ids = ids
        self.identity = dict(identity)
        self.kind = kind
        self.info = dict(info or {})

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def build(
        cls,
        embeddings: torch.Tensor,
        identity: dict,
        kind: str = "auto",
        flat_limit: int = 100_000,
        approximate: str = "hnsw",
        nprobe: int = 32,
        hnsw_m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 256,
        seed: int = 0,
    ) -> CorpusIndex:
        """Index unit-norm `(N, D)` embeddings: flat below `flat_limit` items (kind `"auto"`), else `approximate`
        (`"hnsw"` or `"ivf"`)."""
        faiss = _faiss()
        if kind not in INDEX_KINDS:
            raise ValueError(f"Unknown index kind {kind!r}; choose one of {list(INDEX_KINDS)}.")
        if kind == "auto":
            if approximate not in ("ivf", "hnsw"):
                raise ValueError(f"approximate must be 'ivf' or 'hnsw', got {approximate!r}.")
            kind = "flat" if len(embeddings) <= flat_limit else approximate
        x = np.ascontiguousarray(embeddings.float().numpy())
        n, dim = x.shape
        info = {}
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_construction
            index.hnsw.efSearch = ef_search
            info = {"hnsw_m": hnsw_m, "ef_construction": ef_construction, "ef_search": ef_search}
        else:
            nlist = max(1, min(n // 39, int(4 * math.sqrt(n))))  # FAISS wants >= 39 training points per list
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            sample = x[np.random.default_rng(seed).permutation(n)[: max(nlist * 64, 10_000)]]
            index.train(sample)
            index.nprobe = min(nprobe, nlist)
            info = {"nlist": nlist, "nprobe": index.nprobe}
        index.add(x)
        return cls(index, torch.arange(n), identity, kind, info)

    def search(self, queries: torch.Tensor, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-`k` `(scores, ids)` per query, best first, like [`~grape_hf.RankScorer.search`]."""
        q = np.ascontiguousarray(torch.nn.functional.normalize(queries.float(), dim=-1).numpy())
        scores, rows = self.index.search(q, min(k, len(self)))
        rows = torch.from_numpy(rows)
        ids = torch.where(rows >= 0, self.ids[rows.clamp(min=0)], -1)
        return torch.from_numpy(scores), ids

    def recall_at_k(self, queries: torch.Tensor, exact_ids: torch.Tensor, k: int = 10) -> float:
        """Mean fraction of the exact top-`k` ids the index returns in its top `k`."""
        _, ids = self.search(queries, k)
        hits = [len(set(a.tolist()) & set(b[:k].tolist())) for a, b in zip(ids, exact_ids)]
        return sum(hits) / (k * len(hits))

    def check_matches(self, identity: dict) -> None:
        """Refuse an index built with another retriever or corpus, naming both."""
        for field, what in (("spec", "retriever"), ("fingerprint", "retriever weights"), ("corpus", "corpus")):
            mine, theirs = self.identity.get(field), identity.get(field)
            if mine != theirs:
                raise ValueError(
                    f"This index was built for {what} {mine!r}, but the scorer uses {theirs!r} (index: "
                    f"{self.identity.get('spec')!r} over corpus {self.identity.get('corpus')!r}; scorer: "
                    f"{identity.get('spec')!r} over corpus {identity.get('corpus')!r}). Rebuild it with "
                    "`grape-hf index build` for this retriever and corpus."
                )

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        _faiss().write_index(self.index, str(folder / "index.faiss"))
        save_file({"ids": self.ids.contiguous()}, str(folder / "index.safetensors"))
        meta = {"identity": self.identity, "kind": self.kind, "size": len(self), **self.info}
        (folder / "index.json").write_text(json.dumps(meta, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> CorpusIndex:
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "index.json").is_file():
            raise ValueError(
                f"{str(folder)!r} holds no grape_hf index (no index.json); build one with `grape-hf index build`."
            )
        meta = json.loads((folder / "index.json").read_text())
        index = _faiss().read_index(str(folder / "index.faiss"))
        ids = load_file(str(folder / "index.safetensors"))["ids"]
        if index.ntotal != len(ids):
            raise ValueError(f"The index in {str(folder)!r} has {index.ntotal} rows but {len(ids)} ids; rebuild it.")
        info = {k: v for k, v in meta.items() if k not in ("identity", "kind", "size")}
        return cls(index, ids, meta["identity"], meta["kind"], info)
