import contextlib
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from grape_hf import RankScorer, load_retriever
from grape_hf.retrieval.cache import CorpusCache, content_hash

CORPUS = ["a dog runs on the grass", "two men play chess", "a red car in the snow", "a woman reads a book"]


def _save_minilm(minilm, folder, perturb: float = 0.0):
    model = minilm.model
    if perturb:
        import copy

        model = copy.deepcopy(model)
        with torch.no_grad():
            torch.manual_seed(0)
            for p in model.parameters():
                p.add_(perturb * torch.randn_like(p))
    model.save(str(folder))
    return folder


def test_a_model_retrained_at_the_same_path_is_not_served_stale_embeddings(minilm, tmp_path):
    folder = _save_minilm(minilm, tmp_path / "model")
    first = RankScorer(load_retriever(f"st:{folder}", device="cpu"), CORPUS, cache_dir=tmp_path / "cache")
    assert first.cache_hit is False
    _save_minilm(minilm, folder, perturb=0.05)  # "retrained", saved over the old one
    retrained = load_retriever(f"st:{folder}", device="cpu")
    second = RankScorer(retrained, CORPUS, cache_dir=tmp_path / "cache", show_progress_bar=False)
    assert second.cache_hit is False
    torch.testing.assert_close(second.corpus_embeddings, retrained.encode_text(CORPUS))
    assert not torch.allclose(second.corpus_embeddings, first.corpus_embeddings)
    # A query equal to its target caption ranks it first.
    assert second.ranks(CORPUS, list(range(4))).tolist() == [1, 1, 1, 1]
    again = RankScorer(load_retriever(f"st:{folder}", device="cpu"), CORPUS, cache_dir=tmp_path / "cache")
    assert again.cache_hit is True


def test_a_relative_path_meaning_another_model_is_not_served_stale_embeddings(minilm, tmp_path, monkeypatch):
    _save_minilm(minilm, tmp_path / "a" / "model")
    _save_minilm(minilm, tmp_path / "b" / "model", perturb=0.05)
    monkeypatch.chdir(tmp_path / "a")
    in_a = RankScorer(load_retriever("st:model", device="cpu"), CORPUS, cache_dir=tmp_path / "cache")
    monkeypatch.chdir(tmp_path / "b")
    retriever_b = load_retriever("st:model", device="cpu")
    in_b = RankScorer(retriever_b, CORPUS, cache_dir=tmp_path / "cache", show_progress_bar=False)
    assert in_b.cache_hit is False
    torch.testing.assert_close(in_b.corpus_embeddings, retriever_b.encode_text(CORPUS))
    assert not torch.allclose(in_b.corpus_embeddings, in_a.corpus_embeddings)


def test_loaded_embeddings_do_not_depend_on_the_file(minilm, tmp_path):
    RankScorer(minilm, CORPUS, cache_dir=tmp_path, show_progress_bar=False)
    scorer = RankScorer(minilm, CORPUS, cache_dir=tmp_path)
    assert scorer.cache_hit
    before = scorer.rank_stats(["men playing chess"], [1])
    scorer.cache_file.write_bytes(scorer.cache_file.read_bytes()[:-1000] + b"\0" * 1000)  # rewritten in place
    after = scorer.rank_stats(["men playing chess"], [1])
    assert torch.equal(before.target_similarity, after.target_similarity)
    with open(scorer.cache_file, "r+b") as f:
        f.truncate(100)  # used to be a bus error with the file memory-mapped
    assert scorer.ranks(["men playing chess"], [1]).tolist() == [1]


def test_temp_files_are_unique_and_cleaned_up(tmp_path):
    cache = CorpusCache(tmp_path)
    key = cache.key({"spec": "st:x", "fingerprint": "f", "settings": "s", "corpus": "c"})
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"{cache.path(key).name}.{int(dead.stdout)}-deadbeef.tmp"
    live = tmp_path / f"{cache.path(key).name}.{os.getpid()}-cafecafe.tmp"
    stale.write_bytes(b"x" * 100)
    live.write_bytes(b"x" * 100)
    cache.save(key, torch.eye(3), {"spec": "st:x"})
    assert not stale.exists()  # left by a killed process: removed
    assert live.exists()  # another (running) process is still writing it
    live.unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == [cache.path(key).name]
    with pytest.raises(Exception):  # noqa: B017 - a failed save (here: not a tensor) leaves no temp file behind
        cache.save(key, "not a tensor", {"spec": "st:x"})
    assert sorted(p.name for p in tmp_path.iterdir()) == [cache.path(key).name]


def test_cache_dir_that_is_a_file_fails_before_embedding(minilm, tmp_path):
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("")
    with pytest.raises(ValueError, match=r"cache_dir '.*cache' is a file, not a folder"):
        RankScorer(minilm, CORPUS * 10_000, cache_dir=not_a_folder)
    with pytest.raises(ValueError, match=r"cache_dir '.*sub' cannot be created"):
        RankScorer(minilm, CORPUS, cache_dir=not_a_folder / "sub")


# Two processes building the same scorer at once (one embeds and writes, the other waits and loads): see
# tests/test_distributed.py, which checks it under `accelerate launch`.


def test_a_model_resaved_with_other_settings_is_not_served_stale_embeddings(minilm, tmp_path):
    """Same weights, another maximum length: the embeddings differ, so the cache must too."""
    folder = _save_minilm(minilm, tmp_path / "model")
    long_texts = [t + " and then a much longer tail of words follows here" for t in CORPUS]
    first = RankScorer(load_retriever(f"st:{folder}", device="cpu"), long_texts, cache_dir=tmp_path / "cache")
    assert first.cache_hit is False
    config_file = folder / "sentence_bert_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "max_seq_length": 8}))
    short = load_retriever(f"st:{folder}", device="cpu")
    assert short.fingerprint() == first.retriever.fingerprint()  # the weights did not change
    assert short.identity() != first.retriever.identity()
    with pytest.warns(UserWarning, match="longer than"):
        second = RankScorer(short, long_texts, cache_dir=tmp_path / "cache", show_progress_bar=False)
    assert second.cache_hit is False
    torch.testing.assert_close(second.corpus_embeddings, short.encode_text(long_texts))
    assert not torch.allclose(second.corpus_embeddings, first.corpus_embeddings)


def test_content_hash_separates_items_by_length():
    assert content_hash(["a dog", "a cat\0ta red car"]) != content_hash(["a dog\0ta cat", "a red car"])
    assert content_hash(["ab", "c"]) != content_hash(["a", "bc"])
    assert content_hash(["a", ""]) != content_hash(["a"])


def test_a_renamed_cache_file_is_not_trusted(minilm, tmp_path):
    other = ["a cat sleeps", "a bird sings", "a fish swims", "a horse runs"]
    a = RankScorer(minilm, CORPUS, cache_dir=tmp_path, show_progress_bar=False)
    b = RankScorer(minilm, other, cache_dir=tmp_path, show_progress_bar=False)
    b.cache_file.unlink()
    a.cache_file.rename(b.cache_file)  # the file of CORPUS under the name of `other`
    with pytest.warns(UserWarning, match="re-embedding"):
        again = RankScorer(minilm, other, cache_dir=tmp_path, show_progress_bar=False)
    assert again.cache_hit is False
    torch.testing.assert_close(again.corpus_embeddings, b.corpus_embeddings)


def _overwrite_row(path, shape, source, target, value=None):
    """Edit the float32 matrix inside a safetensors file in place: copy row `source` over row `target` (or fill it
    with `value`)."""
    import struct

    data = bytearray(path.read_bytes())
    (header_size,) = struct.unpack("<Q", data[:8])
    start = 8 + header_size + json.loads(data[8 : 8 + header_size])["embeddings"]["data_offsets"][0]
    row = 4 * shape[1]
    if value is None:
        data[start + target * row : start + (target + 1) * row] = data[
            start + source * row : start + (source + 1) * row
        ]
    else:
        data[start + target * row : start + (target + 1) * row] = struct.pack(f"<{shape[1]}f", *[value] * shape[1])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("edit", ["copied row", "nan row"])
def test_an_edited_cache_file_is_rebuilt_with_a_warning(minilm, tmp_path, edit):
    corpus = [f"item number {i} of a small corpus" for i in range(8)]
    first = RankScorer(minilm, corpus, cache_dir=tmp_path, show_progress_bar=False)
    _overwrite_row(first.cache_file, (8, 384), 3, 7, value=float("nan") if edit == "nan row" else None)
    with pytest.warns(UserWarning, match="fails its checksum.*re-embedding"):
        again = RankScorer(minilm, corpus, cache_dir=tmp_path, show_progress_bar=False)
    assert again.cache_hit is False
    torch.testing.assert_close(again.corpus_embeddings, first.corpus_embeddings)
    assert RankScorer(minilm, corpus, cache_dir=tmp_path).cache_hit is True  # rewritten whole


def test_a_cache_of_the_old_format_is_rebuilt_not_trusted(minilm, tmp_path):
    from safetensors.torch import save_file

    first = RankScorer(minilm, CORPUS, cache_dir=tmp_path, show_progress_bar=False)
    planted = torch.nn.functional.normalize(torch.ones(4, 384), dim=-1)
    save_file({"embeddings": planted}, str(first.cache_file), metadata={"spec": minilm.spec})  # format 1
    with pytest.warns(UserWarning, match="format '1', not '2'.*re-embedding"):
        again = RankScorer(minilm, CORPUS, cache_dir=tmp_path, show_progress_bar=False)
    torch.testing.assert_close(again.corpus_embeddings, first.corpus_embeddings)


@contextlib.contextmanager
def _read_only(folder):
    """Make a folder read-only for this process: `chmod`, or for root (which ignores modes) the immutable flag."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
        pytest.skip("running as root without chattr: cannot make a folder read-only")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


@pytest.mark.skipif(os.name != "posix", reason="needs POSIX permissions")
def test_a_read_only_folder_serves_a_valid_cache(minilm, multi30k_path, tmp_path, capsys):
    from grape_hf.cli import main

    first = RankScorer(minilm, CORPUS, cache_dir=tmp_path / "cache", show_progress_bar=False)
    argv = ["evaluate", "--dataset", str(multi30k_path), "--max_images", "10", "--cache_dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    with _read_only(tmp_path / "cache"):
        assert not os.access(tmp_path / "cache", os.W_OK)
        again = RankScorer(minilm, CORPUS, cache_dir=tmp_path / "cache")
        assert again.cache_hit is True and torch.equal(again.corpus_embeddings, first.corpus_embeddings)
        assert main(argv) == 0  # the CLI reads it too
        assert "| original query |" in capsys.readouterr().out
        with pytest.raises(ValueError, match="is not writable and holds no cache of this corpus"):
            RankScorer(minilm, ["another corpus"], cache_dir=tmp_path / "cache")
        with pytest.raises(SystemExit):
            main([*argv[:-3], "11", *argv[-2:]])  # another corpus: refused before embedding, as a usage error
        assert "is not writable and holds no cache of this corpus" in capsys.readouterr().err


@pytest.mark.skipif(os.name != "posix", reason="RLIMIT_FSIZE is POSIX")
def test_a_full_disk_keeps_the_embeddings_in_memory(tmp_path):
    """The file size limit makes the cache write fail as a full disk does (EFBIG instead of ENOSPC)."""
    script = textwrap.dedent(
        f"""
        import resource, signal, warnings
        from grape_hf import RankScorer, load_retriever
        retriever = load_retriever("sentence-transformers:all-MiniLM-L6-v2", device="cpu")
        corpus = [f"item {{i}}" for i in range(50)]
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scorer = RankScorer(retriever, corpus, cache_dir={str(tmp_path)!r}, show_progress_bar=False)
        print([str(w.message) for w in caught if "corpus cache" in str(w.message)])
        print(scorer.cache_hit, scorer.cache_file, scorer.ranks(corpus[:3], [0, 1, 2]).tolist())
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    warned, state = result.stdout.strip().splitlines()[-2:]
    assert "Could not write the corpus cache" in warned and "continuing with the embeddings in memory" in warned
    assert state == "False None [1, 1, 1]"
    assert not list(tmp_path.glob("corpus-*.safetensors*"))  # no partial file left


def test_a_lone_surrogate_in_the_corpus_is_refused_by_index(minilm):
    with pytest.raises(ValueError, match=r"Corpus item 1 \('a \\ud800 b'\) is not valid Unicode"):
        RankScorer(minilm, ["fine", "a \ud800 b"], show_progress_bar=False)
