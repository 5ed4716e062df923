"""A FAISS index over a corpus, for serving large corpora: `grape-hf index build` writes one, [`GRAPERetriever`]
searches it.

Inner product on unit vectors (cosine similarity, as the scorer ranks). Below `flat_limit` items the index is exact
(`IndexFlatIP`); above it, approximate: IVF (`IndexIVFFlat`, `nlist ~ 4 sqrt(N)` lists, `nprobe` probed) or HNSW
(`IndexHNSWFlat`). The folder holds `index.faiss`, `index.safetensors` (the corpus id of each row) and `index.json`:
the retriever's identity (spec, weight fingerprint and settings hash, see
[`~grape_hf.retrieval.retrievers.Retriever.identity`]), the corpus hash, the measured recall@10 against exact search,
and the SHA-256 of the two other files. `index.json` is written last (and removed first), so a build killed half-way
leaves a folder that is refused, not one that mixes two builds. Loading checks the files against their hashes and the
ids (a permutation of the corpus positions); an index built with another retriever or corpus is refused. Training
still ranks exactly with the scorer: the index only serves search.

Needs the `faiss` extra (`pip install grape_hf[faiss]`).

[`GRAPERetriever`]: grape_hf.retrieval.search.GRAPERetriever
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
from pathlib import Path

import numpy as np
import torch

INDEX_KINDS = ("auto", "flat", "ivf", "hnsw")
#: The layout of `index.json`; format 1 (no file hashes, no retriever settings) is refused: rebuild it.
INDEX_FORMAT = 2
INDEX_FILES = ("index.faiss", "index.safetensors")
IDENTITY_FIELDS = (
    ("spec", "retriever"),
    ("fingerprint", "retriever weights"),
    ("settings", "retriever settings"),
    ("corpus", "corpus"),
)


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
    >>> identity = {"spec": "st:demo", "fingerprint": "f00d", "settings": "5e77", "corpus": "c0ffee"}
    >>> index = CorpusIndex.build(emb, identity)
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
        """Top-`k` `(scores, ids)` per query, best first, like [`~grape_hf.RankScorer.search`].

        As there, a degenerate query (NaN, infinite or zero embedding) matches nothing: its scores are all `-inf`
        and its ids the placeholders `0..k-1`. Where an approximate index finds fewer than `k` items, the missing
        places have id `-1` and score `-inf`.
        """
        from .scorer import degenerate_rows

        queries = queries.float()
        degenerate = degenerate_rows(queries)
        q = torch.nn.functional.normalize(torch.where(degenerate[:, None], 0.0, queries), dim=-1)
        k = min(k, len(self))
        scores, rows = self.index.search(np.ascontiguousarray(q.numpy()), k)
        scores, rows = torch.from_numpy(scores), torch.from_numpy(rows)
        ids = torch.where(rows >= 0, self.ids[rows.clamp(min=0)], -1)
        scores = torch.where(rows >= 0, scores, -torch.inf)
        scores[degenerate] = -torch.inf
        ids[degenerate] = torch.arange(k)
        return scores, ids

    def recall_at_k(self, queries: torch.Tensor, exact_ids: torch.Tensor, k: int = 10) -> float:
        """Mean fraction of the exact top-`k` ids the index returns in its top `k`."""
        if len(queries) == 0:
            raise ValueError("recall_at_k needs at least one query.")
        _, ids = self.search(queries, k)
        hits = [len(set(a.tolist()) & set(b[:k].tolist())) for a, b in zip(ids, exact_ids)]
        return sum(hits) / (min(k, len(self)) * len(hits))

    def check_matches(self, identity: dict) -> None:
        """Refuse an index built with another retriever (spec, weights, settings) or corpus, naming both."""
        for field, what in IDENTITY_FIELDS:
            mine, theirs = self.identity.get(field), identity.get(field)
            if mine != theirs:
                raise ValueError(
                    f"This index was built for {what} {mine!r}, but the scorer uses {theirs!r} (index: "
                    f"{self.identity.get('spec')!r} over corpus {self.identity.get('corpus')!r}; scorer: "
                    f"{identity.get('spec')!r} over corpus {identity.get('corpus')!r}). Rebuild it with "
                    "`grape-hf index build` for this retriever and corpus."
                )

    def save(self, folder: str | Path) -> Path:
        """Write `index.faiss`, `index.safetensors` and, last, `index.json` naming their SHA-256 (other files in
        the folder are left alone). Each file is written to a temporary name and renamed into place."""
        from safetensors.torch import save

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        blobs = {
            "index.faiss": _faiss().serialize_index(self.index).tobytes(),
            "index.safetensors": save({"ids": self.ids.to(torch.int64).contiguous()}),
        }
        meta = {
            "format": INDEX_FORMAT,
            "identity": self.identity,
            "kind": self.kind,
            "size": len(self),
            "files": {name: hashlib.sha256(data).hexdigest() for name, data in blobs.items()},
            **self.info,
        }
        (folder / "index.json").unlink(missing_ok=True)  # from here until the end, the folder holds no index
        for name, data in blobs.items():
            _write_atomic(folder / name, data)
        _write_atomic(folder / "index.json", (json.dumps(meta, indent=2) + "\n").encode())
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> CorpusIndex:
        """Read a folder [`save`] wrote, checking its files against the hashes in `index.json` and its ids."""
        from safetensors.torch import load

        folder = Path(folder)
        meta_file = folder / "index.json"
        rebuild = "rebuild it with `grape-hf index build`"
        if not meta_file.is_file():
            raise ValueError(
                f"{str(folder)!r} holds no grape_hf index (no index.json); build one with `grape-hf index build`."
            )
        try:
            meta = json.loads(meta_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{meta_file} is not valid JSON ({err}); {rebuild}.") from err
        if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
            found = meta.get("format", 1) if isinstance(meta, dict) else type(meta).__name__
            raise ValueError(
                f"{meta_file} has format {found!r}, not {INDEX_FORMAT} (written by another grape_hf version, without "
                f"the hashes that tie it to its files); {rebuild}."
            )
        for key, kind in (("identity", dict), ("kind", str), ("size", int), ("files", dict)):
            if not isinstance(meta.get(key), kind):
                raise ValueError(f"{meta_file} has no valid {key!r} ({meta.get(key)!r}); {rebuild}.")
        missing = [field for field, _ in IDENTITY_FIELDS if not isinstance(meta["identity"].get(field), str)]
        if missing:
            raise ValueError(f"{meta_file}'s identity lacks {missing}; {rebuild}.")
        blobs = {}
        for name in INDEX_FILES:
            path = folder / name
            if not path.is_file():
                raise ValueError(f"{str(folder)!r} has index.json but no {name}; {rebuild}.")
            blobs[name] = path.read_bytes()
            if hashlib.sha256(blobs[name]).hexdigest() != meta["files"].get(name):
                raise ValueError(
                    f"{path} does not match the SHA-256 that index.json names (it was changed, truncated or left by "
                    f"an interrupted build); {rebuild}."
                )
        try:
            index = _faiss().deserialize_index(np.frombuffer(blobs["index.faiss"], dtype=np.uint8))
            ids = load(blobs["index.safetensors"])["ids"]
        except Exception as err:  # noqa: BLE001 - FAISS raises its C++ errors as RuntimeError
            raise ValueError(f"The index files in {str(folder)!r} cannot be read ({err}); {rebuild}.") from err
        size = meta["size"]
        if index.ntotal != size or ids.shape != (size,):
            raise ValueError(
                f"The index in {str(folder)!r} has {index.ntotal} rows and {tuple(ids.shape)} ids, but index.json "
                f"says {size} items; {rebuild}."
            )
        if ids.dtype != torch.int64 or not torch.equal(ids.sort().values, torch.arange(size)):
            raise ValueError(
                f"The ids in {folder / 'index.safetensors'} are not a permutation of the corpus positions "
                f"0..{size - 1} "
                f"(dtype {ids.dtype}, range {int(ids.min()) if size else None}..{int(ids.max()) if size else None}); "
                f"{rebuild}."
            )
        info = {k: v for k, v in meta.items() if k not in ("format", "identity", "kind", "size", "files")}
        return cls(index, ids, meta["identity"], meta["kind"], info)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
