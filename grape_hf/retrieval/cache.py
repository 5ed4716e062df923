"""The on-disk cache of corpus embeddings, keyed by what produced them.

A cache file `corpus-<key>.safetensors` holds one `(N, D)` float32 matrix. The key hashes the retriever's identity
([`~grape_hf.retrieval.retrievers.Retriever.identity`]: its spec, a fingerprint of its weights and a hash of its
settings, i.e. model and tokenizer configs, pooling, maximum length, preprocessing) and the corpus content, so a
model retrained or re-saved with other settings at the same path, or a relative path that names another model, never
reuses stale embeddings.

- The file's metadata repeats that identity and the corpus hash, with the cache format (`CACHE_FORMAT`) and the
  SHA-256 of the matrix bytes. Loading checks all of them and that every row is finite and non-zero: a renamed,
  edited or corrupted file, or one of an older format, is re-embedded with a warning, never trusted.
- Loading reads the whole file into memory: a scorer never depends on the file afterwards (rewriting or truncating
  it cannot change its scores or crash it). Reading needs no write access: a read-only folder holding a valid
  cache serves it.
- Saving writes a temporary file unique to the process (`corpus-<key>.safetensors.<pid>-<random>.tmp`), renamed
  into place; it is removed if the save fails or is interrupted, and one left by a killed process is removed by the
  next save of the same key. A failed write (a full disk) raises `OSError`; the scorer then warns and keeps the
  embeddings in memory, uncached.
- Several processes (an `accelerate launch` builds the scorer on every rank) take a lock file per key: the first
  embeds and writes, the others wait and then load its file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

#: The layout of a cache file's metadata; a file of another format is re-embedded (format 1 had no corpus hash and
#: no checksum).
CACHE_FORMAT = "2"


def content_hash(corpus: Sequence) -> str:
    """SHA-256 of the corpus items (texts, or PIL images' mode, size and pixels), in order, each prefixed by its
    kind and byte length (so no two different corpora share a hash, whatever bytes their items hold).

    A text that is not valid Unicode (a lone surrogate such as `"\\ud800"`) is refused, naming its index.

    Example:
    ```python
    >>> from grape_hf.retrieval.cache import content_hash
    >>> content_hash(["a dog", "a cat\\0ta red car"]) == content_hash(["a dog\\0ta cat", "a red car"])
    False
    ```
    """
    digest = hashlib.sha256()
    for i, item in enumerate(corpus):
        if isinstance(item, str):
            try:
                data = item.encode("utf-8")
            except UnicodeEncodeError as err:
                raise ValueError(
                    f"Corpus item {i} ({item!r:.80}) is not valid Unicode: it holds the lone surrogate "
                    f"{item[err.start]!r} at position {err.start}. Fix the item at its source, or replace such "
                    "characters first, e.g. `text.encode('utf-8', 'replace').decode()`."
                ) from None
            digest.update(b"t" + struct.pack("<Q", len(data)))
            digest.update(data)
        elif hasattr(item, "tobytes") and hasattr(item, "size"):  # PIL image
            header = f"{item.mode}|{tuple(item.size)}".encode()
            data = item.tobytes()
            digest.update(b"i" + struct.pack("<QQ", len(header), len(data)) + header)
            digest.update(data)
        else:
            raise ValueError(f"Corpus items must be strings or PIL images, got {type(item).__name__} at index {i}.")
    return digest.hexdigest()


def embeddings_checksum(embeddings: torch.Tensor) -> str:
    """SHA-256 of a float32 matrix's bytes (with its shape), as stored in a cache file."""
    x = embeddings.detach().float().contiguous().cpu()
    digest = hashlib.sha256(f"{tuple(x.shape)}".encode())
    digest.update(memoryview(x.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def check_cache_dir(cache_dir: str | Path, writable: bool = True) -> Path:
    """Create `cache_dir` if needed and make sure it is a folder (and writable, unless `writable=False`: reading a
    cache needs no write access), before any embedding is spent on it."""
    path = Path(cache_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"cache_dir {str(path)!r} is a file, not a folder; give a folder (or None to not cache).")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cache_dir {str(path)!r} cannot be created ({err}); give a writable folder.") from err
    if writable and not is_writable_dir(path):
        raise ValueError(f"cache_dir {str(path)!r} is not writable; give a writable folder (or None to not cache).")
    return path


def is_writable_dir(path: Path) -> bool:
    return os.access(path, os.W_OK | os.X_OK)


class CorpusCache:
    """Corpus embeddings on disk under `cache_dir`, one file per (retriever identity, corpus) key.

    `identity` is what produced the embeddings: the retriever's
    [`~grape_hf.retrieval.retrievers.Retriever.identity`] plus the corpus hash under `"corpus"` (as
    [`~grape_hf.retrieval.scorer.RankScorer.identity`] gives it).

    Example:
    ```python
    >>> import tempfile, torch
    >>> from grape_hf.retrieval.cache import CorpusCache
    >>> cache = CorpusCache(tempfile.mkdtemp())
    >>> identity = {"spec": "st:my-model", "fingerprint": "f00d", "settings": "5e77", "corpus": "c0ffee"}
    >>> key = cache.key(identity)
    >>> cache.save(key, torch.eye(2), identity).name
    'corpus-2375d33e0378ec5226847b6bc5311d32.safetensors'
    >>> cache.load(key, (2, 2), identity).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    ```
    """

    def __init__(self, cache_dir: str | Path):
        self.dir = check_cache_dir(cache_dir, writable=False)

    @property
    def writable(self) -> bool:
        return is_writable_dir(self.dir)

    @staticmethod
    def key(identity: dict[str, str]) -> str:
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.dir / f"corpus-{key}.safetensors"

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold the key's lock file: across processes on this machine, one at a time embeds and writes. In a
        read-only folder no lock is taken (nobody can write there)."""
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; the unique temp names still keep saves safe
            yield
            return
        try:
            handle = open(self.dir / f"corpus-{key}.lock", "a+")  # noqa: SIM115 - closed below
        except OSError:
            yield
            return
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def load(self, key: str, shape: tuple[int, int], identity: dict[str, str]) -> torch.Tensor | None:
        """The cached embeddings copied into memory, or None (with a warning if a file was there but unusable: of
        another format, identity, corpus or shape, failing its checksum, or holding NaN, infinite or zero rows)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            from safetensors.torch import load

            data = path.read_bytes()
            metadata = _read_metadata(data)
            embeddings = load(data)["embeddings"]
        except Exception as err:  # noqa: BLE001 - any unreadable file is rebuilt
            return _rebuild(f"The corpus cache {path} is unreadable ({err})")
        if metadata.get("format") != CACHE_FORMAT:
            return _rebuild(
                f"The corpus cache {path} has format {metadata.get('format', '1')!r}, not {CACHE_FORMAT!r} (written "
                "by another grape_hf version)"
            )
        stored = {k: metadata.get(k) for k in identity}
        if stored != identity or tuple(embeddings.shape) != tuple(shape):
            return _rebuild(
                f"The corpus cache {path} holds {tuple(embeddings.shape)} embeddings from {stored}, but "
                f"{tuple(shape)} from {identity} are needed"
            )
        if embeddings.dtype != torch.float32 or embeddings_checksum(embeddings) != metadata.get("sha256"):
            return _rebuild(f"The corpus cache {path} fails its checksum (the file was changed after it was written)")
        bad = ~torch.isfinite(embeddings).all(dim=1) | (embeddings.abs().sum(dim=1) == 0)
        if bool(bad.any()):
            return _rebuild(f"The corpus cache {path} holds {int(bad.sum())} NaN, infinite or zero row(s)")
        return embeddings

    def save(self, key: str, embeddings: torch.Tensor, identity: dict[str, str]) -> Path:
        """Write atomically through a temporary file unique to this process, removed on any failure. A failed write
        (a full disk, a read-only folder) raises `OSError`."""
        from safetensors.torch import save_file

        embeddings = embeddings.detach().float().contiguous().cpu()
        metadata = {**identity, "format": CACHE_FORMAT, "sha256": embeddings_checksum(embeddings)}
        path = self.path(key)
        tmp = path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
        try:
            self._remove_stale_temp_files(path)
            save_file({"embeddings": embeddings}, str(tmp), metadata=metadata)
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        except Exception as err:  # safetensors reports a failed write (ENOSPC, EFBIG) as its own error
            tmp.unlink(missing_ok=True)
            raise OSError(f"Cannot write the corpus cache {path}: {err}") from err
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path

    @staticmethod
    def _remove_stale_temp_files(path: Path) -> None:
        """Remove temp files of this key left by processes that no longer run (killed mid-save)."""
        for tmp in path.parent.glob(f"{path.name}.*.tmp"):
            pid = tmp.name[len(path.name) + 1 :].split("-", 1)[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                tmp.unlink(missing_ok=True)


def _rebuild(reason: str) -> None:
    warnings.warn(f"{reason}; re-embedding the corpus.", stacklevel=5)
    return None


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    except OSError:
        return True
    return True


def _read_metadata(data: bytes) -> dict:
    (header_size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + header_size]).get("__metadata__") or {}
