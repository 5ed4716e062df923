"""The on-disk cache of corpus embeddings, keyed by what produced them.

A cache file `corpus-<key>.safetensors` holds one `(N, D)` float32 matrix. The key hashes the retriever's spec, a
fingerprint of its weights ([`~grape_hf.retrieval.retrievers.Retriever.fingerprint`]) and the corpus content, so a
model retrained at the same path, or a relative path that names another model, never reuses stale embeddings.

- Loading reads the whole file into memory: a scorer never depends on the file afterwards (rewriting or truncating
  it cannot change its scores or crash it).
- Saving writes a temporary file unique to the process (`corpus-<key>.safetensors.<pid>-<random>.tmp`), renamed
  into place; it is removed if the save fails or is interrupted, and one left by a killed process is removed by the
  next save of the same key.
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


def content_hash(corpus: Sequence) -> str:
    """SHA-256 of the corpus items (texts, or PIL images' mode, size and pixels), in order."""
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


def check_cache_dir(cache_dir: str | Path) -> Path:
    """Create `cache_dir` if needed and make sure it is a writable folder, before any embedding is spent on it."""
    path = Path(cache_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"cache_dir {str(path)!r} is a file, not a folder; give a folder (or None to not cache).")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cache_dir {str(path)!r} cannot be created ({err}); give a writable folder.") from err
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"cache_dir {str(path)!r} is not writable; give a writable folder (or None to not cache).")
    return path


class CorpusCache:
    """Corpus embeddings on disk under `cache_dir`, one file per (retriever spec, weights, corpus) key.

    Example:
    ```python
    >>> import tempfile, torch
    >>> from grape_hf.retrieval.cache import CorpusCache
    >>> cache = CorpusCache(tempfile.mkdtemp())
    >>> key = cache.key("st:my-model", "f00d", "c0ffee")
    >>> cache.save(key, torch.eye(2), {"spec": "st:my-model"}).name
    'corpus-fbf49224b5c8d50a3805102d9c00708c.safetensors'
    >>> cache.load(key, (2, 2), {"spec": "st:my-model"}).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    ```
    """

    def __init__(self, cache_dir: str | Path):
        self.dir = check_cache_dir(cache_dir)

    @staticmethod
    def key(spec: str, fingerprint: str, corpus_hash: str) -> str:
        return hashlib.sha256(f"{spec}\n{fingerprint}\n{corpus_hash}".encode()).hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.dir / f"corpus-{key}.safetensors"

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold the key's lock file: across processes on this machine, one at a time embeds and writes."""
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; the unique temp names still keep saves safe
            yield
            return
        with open(self.dir / f"corpus-{key}.lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def load(self, key: str, shape: tuple[int, int], identity: dict[str, str]) -> torch.Tensor | None:
        """The cached embeddings copied into memory, or None (with a warning if a file was there but unusable)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            from safetensors.torch import load

            data = path.read_bytes()
            metadata = _read_metadata(data)
            embeddings = load(data)["embeddings"]
        except Exception as err:  # noqa: BLE001 - any unreadable file is rebuilt
            warnings.warn(f"The corpus cache {path} is unreadable ({err}); re-embedding the corpus.", stacklevel=4)
            return None
        stored = {k: metadata.get(k) for k in identity}
        if stored != identity or tuple(embeddings.shape) != tuple(shape):
            warnings.warn(
                f"The corpus cache {path} holds {tuple(embeddings.shape)} embeddings from {stored}, but "
                f"{tuple(shape)} from {identity} are needed; re-embedding the corpus.",
                stacklevel=4,
            )
            return None
        return embeddings.float()

    def save(self, key: str, embeddings: torch.Tensor, identity: dict[str, str]) -> Path:
        """Write atomically through a temporary file unique to this process, removed on any failure."""
        from safetensors.torch import save_file

        path = self.path(key)
        self._remove_stale_temp_files(path)
        tmp = path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
        try:
            save_file({"embeddings": embeddings.float().contiguous()}, str(tmp), metadata=dict(identity))
            os.replace(tmp, path)
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
