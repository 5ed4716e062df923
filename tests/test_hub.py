"""Model cards, the upload folder, and the custom-code pipeline running where grape_hf is not installed."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

PROMPT = {
    "user": "Rewrite for the caption search engine:\n{query}",
    "system": "You rewrite queries.",
    "shift": "multilingual",
}
EVALUATION = {
    "before": {"R@1": 0.212, "R@5": 0.433, "R@10": 0.541, "MRR": 0.318, "nDCG@10": 0.371},
    "after": {"R@1": 0.305, "R@5": 0.562, "R@10": 0.667, "MRR": 0.421, "nDCG@10": 0.478},
    "split": "test_2016_flickr",
    "num_queries": 1000,
}
PUBLISHED = {
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "grape_rewriter.json",
    "grape_rewrite_pipeline.py",
    "folder.py",
    "saving.py",
    "prompting.py",
    "generation.py",
    "vision.py",
    "devices.py",
    "grape_prompts.json",
    "README.md",
}


def rewriter_config(base: str, **overrides):
    from grape_hf.rewriting.folder import RewriterConfig

    fields = {
        "prompt": PROMPT,
        "base_model": base,
        "shift": "multilingual",
        "retriever": "sentence-transformers:all-MiniLM-L6-v2",
        "dataset": "bentrevett/multi30k",
        "corpus": "multi30k test_2016_flickr English captions",
        "reward": "grape_rank",
        "training": {"learning_rate": 1e-5, "num_generations": 8, "max_steps": 500},
        "evaluation": EVALUATION,
    }
    return RewriterConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def trained(_tiny_llama, tmp_path_factory):
    """A full-model rewriter saved by grape_hf, and a PEFT adapter as training writes it (adapter at the top)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grape_hf.hub import save_rewriter

    root = tmp_path_factory.mktemp("trained")
    tokenizer = AutoTokenizer.from_pretrained(_tiny_llama)
    save_rewriter(
        AutoModelForCausalLM.from_pretrained(_tiny_llama), tokenizer, root / "full", rewriter_config(str(_tiny_llama))
    )
    torch.manual_seed(0)
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(_tiny_llama), lora)
    bare = root / "bare-adapter"
    peft_model.save_pretrained(bare)
    tokenizer.save_pretrained(bare)
    rewriter_config("grape-test/tiny-llama").save(bare)
    for junk in ("checkpoint-10/optimizer.pt", "training_args.bin", "trainer_state.json", "runs/events.out"):
        (bare / junk).parent.mkdir(exist_ok=True)
        (bare / junk).write_text("not published")
    return {"full": root / "full", "bare-adapter": bare, "root": root}


def test_model_card_renders_and_round_trips(tmp_path):
    from huggingface_hub import ModelCard, ModelCardData

    from grape_hf.hub import build_model_card

    card = build_model_card(rewriter_config("HuggingFaceTB/SmolLM2-135M-Instruct"), model_id="me/grape-smollm2")
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    data = loaded.data
    assert isinstance(data, ModelCardData)
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and data.model_name == "me/grape-smollm2"
    assert data.pipeline_tag == "text-generation" and data.datasets == ["bentrevett/multi30k"]
    assert {"grape", "grpo", "trl"} <= set(data.tags)
    metrics = {r.metric_type: r.metric_value for r in data.eval_results}
    assert metrics["recall_at_1"] == 0.305 and metrics["recall_at_1_before_rewriting"] == 0.212
    assert metrics["mrr"] == 0.421 and metrics["ndcg_at_10_before_rewriting"] == 0.371 and len(metrics) == 10
    assert {r.dataset_split for r in data.eval_results} == {"test_2016_flickr"}
    assert ModelCardData(**data.to_dict()).to_dict() == data.to_dict()
    text = loaded.text
    assert "| R@1 | 0.2120 | 0.3050 |" in text and "| MRR | 0.3180 | 0.4210 |" in text and "1000 queries" in text
    assert 'pipeline("grape-rewrite", model="me/grape-smollm2")' in text
    assert 'pipeline(model="me/grape-smollm2", trust_remote_code=True)' in text
    assert PROMPT["user"] in text and PROMPT["system"] in text and "`num_generations` | `8`" in text
    assert "sentence-transformers:all-MiniLM-L6-v2" in text and "2509.23370" in text and "{% raw %}" not in text


def test_card_without_evaluation_still_loads(tmp_path):
    from huggingface_hub import ModelCard

    from grape_hf.hub import build_model_card

    build_model_card({"prompt": PROMPT, "base_model": "/local/base"}).save(tmp_path / "README.md")
    data = ModelCard.load(tmp_path / "README.md").data
    assert data.eval_results is None and data.base_model is None  # a local path is not a Hub base model
    with pytest.raises(ValueError, match="needs a prompt"):
        build_model_card({"base_model": "x"})


def test_card_shows_the_zero_shot_rewriter_when_recorded():
    from grape_hf.hub import build_model_card

    evaluation = {**EVALUATION, "zero_shot": {"R@1": 0.25, "MRR": 0.35}}
    text = build_model_card(rewriter_config("HuggingFaceTB/SmolLM2-135M-Instruct", evaluation=evaluation)).text
    assert "| R@1 | 0.2120 | 0.2500 | 0.3050 |" in text and "| R@5 | 0.4330 | – | 0.5620 |" in text
    assert "Other policies on the same queries" not in text


def test_card_lists_the_earlier_stages_on_the_same_queries():
    from grape_hf.hub import build_model_card

    evaluation = {**EVALUATION, "warm_start": {"R@1": 0.25, "R@10": 0.5}, "self_distillation": {"R@10": 0.55}}
    card = build_model_card(rewriter_config("HuggingFaceTB/SmolLM2-135M-Instruct", evaluation=evaluation))
    assert "| Policy | R@1 | R@5 | R@10 | MRR | nDCG@10 |" in card.text
    assert "| warm_start | 0.2500 | – | 0.5000 | – | – |" in card.text
    assert "| self_distillation | – | – | 0.5500 | – | – |" in card.text
    # Only before/after go to the model-index: the stages are shown, not reported as this model's results.
    assert len(card.data.eval_results) == 10


def test_card_of_a_base_model_shows_the_plain_text_prompt_and_the_stages():
    from grape_hf.hub import build_model_card

    prompt = {
        "format": "completion",
        "system": "Translate into English.",
        "user": "Text: {query}\nEnglish:",
        "examples": [{"query": "Ein Hund läuft.", "rewrite": "A dog runs."}],
    }
    config = rewriter_config("google/gemma-3-270m", prompt=prompt, training={"stages": ["grpo", "self_distillation"]})
    text = build_model_card(config).text
    # The whole text the base model continues, the few-shot example included; no chat turns.
    assert "Translate into English.\nText: Ein Hund läuft.\nEnglish: A dog runs.\nText: {query}\nEnglish:\n" in text
    assert "no chat template" in text and "System:" not in text
    assert "(stages, in order: grpo → self_distillation)" in text


def test_upload_folder_of_a_full_model(trained, tmp_path):
    from grape_hf.hub import build_upload_folder
    from grape_hf.rewriting.folder import REMOTE_TASK

    out = build_upload_folder(trained["full"], tmp_path / "upload", repo_id="me/grape-full")
    assert {p.name for p in out.iterdir()} == PUBLISHED | {"model.safetensors", "generation_config.json"}
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["custom_pipelines"][REMOTE_TASK]["impl"] == "grape_rewrite_pipeline.GRAPERewritePipeline"
    assert 'model="me/grape-full"' in (out / "README.md").read_text()
    with pytest.raises(FileExistsError, match="not empty"):
        build_upload_folder(trained["full"], out)


def test_upload_folder_of_a_bare_adapter_moves_it_and_publishes_a_hub_base(trained, tmp_path):
    from huggingface_hub import ModelCard

    from grape_hf.hub import build_upload_folder

    out = build_upload_folder(trained["bare-adapter"], tmp_path / "upload", repo_id="me/grape-lora")
    assert {p.name for p in out.iterdir()} == PUBLISHED | {"adapter"}
    assert {p.name for p in (out / "adapter").iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    assert json.loads((out / "adapter/adapter_config.json").read_text())["base_model_name_or_path"] == (
        "grape-test/tiny-llama"
    )
    pointer = json.loads((out / "config.json").read_text())
    assert pointer["model_type"] == "grape_rewriter" and pointer["adapter_subfolder"] == "adapter"
    assert pointer["auto_map"]["AutoModelForCausalLM"] == "folder.GRAPERewriterLoader"
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft" and card.data.base_model == "grape-test/tiny-llama"


def test_upload_folder_refuses_what_cannot_be_published(trained, _tiny_llama, tmp_path):
    import shutil

    from grape_hf.hub import build_upload_folder

    local_base = tmp_path / "local-base"
    shutil.copytree(trained["bare-adapter"], local_base)
    rewriter_config(str(_tiny_llama)).save(local_base)
    with pytest.raises(ValueError, match="a local path; set base_model in grape_rewriter.json"):
        build_upload_folder(local_base, tmp_path / "a")
    (local_base / "grape_rewriter.json").unlink()
    with pytest.raises(ValueError, match="has no grape_rewriter.json"):
        build_upload_folder(local_base, tmp_path / "b")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "grape_rewriter.json").write_text(json.dumps({"prompt": PROMPT}))
    with pytest.raises(ValueError, match=r"expected config.json.*adapter_config.json"):
        build_upload_folder(tmp_path / "empty", tmp_path / "c")


def test_pipeline_module_imports_only_transformers():
    from transformers.dynamic_module_utils import get_imports

    import grape_hf.rewriting.pipeline

    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    assert set(get_imports(grape_hf.rewriting.pipeline.__file__)) - stdlib == {"transformers"}  # peft: for adapters


def test_push_rewriter_signature_for_the_cli():
    from grape_hf.hub import push_rewriter

    params = inspect.signature(push_rewriter).parameters
    assert list(params)[:4] == ["folder", "repo_id", "private", "token"]
    assert params["private"].default is False and params["token"].default is None


REMOTE = """
import importlib.util, json, sys
assert importlib.util.find_spec("grape_hf") is None, "grape_hf must not be importable here"
from transformers import pipeline
results = {}
for ref in sys.argv[1:]:
    pipe = pipeline(model=ref, trust_remote_code=True, device="cpu")
    out = pipe(["Ein Hund rennt.", " "], max_new_tokens=6, suppress_tokens=[0, 1, 2, 198])
    composed = pipe("make it red", shift="composed", reference="a blue car", max_new_tokens=1)["prompt"]
    results[ref] = {"class": type(pipe).__name__, "model": type(pipe.model).__name__, "out": out, "composed": composed}
assert "grape_hf" not in sys.modules
print(json.dumps(results))
"""


def _fake_hub_repo(cache: Path, repo_id: str, folder: Path) -> None:
    """Lay `folder` out as a downloaded Hub repo in an HF cache, so offline loading takes the Hub code path."""
    import shutil

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    shutil.copytree(folder, repo / "snapshots" / ("0" * 40))


def test_remote_code_runs_without_grape_hf_local_and_from_the_hub_cache(trained, _tiny_llama, tmp_path):
    """Saved folders and published repos (full model and adapter) load with trust_remote_code, grape_hf absent."""
    from transformers import pipeline

    import grape_hf  # noqa: F401 - registers "grape-rewrite"
    from grape_hf.hub import build_upload_folder

    cache = tmp_path / "hub"
    _fake_hub_repo(cache, "grape-test/tiny-llama", Path(_tiny_llama))
    _fake_hub_repo(cache, "me/grape-lora", build_upload_folder(trained["bare-adapter"], tmp_path / "lora"))
    refs = [str(trained["full"]), str(tmp_path / "lora"), "me/grape-lora"]
    # Only site-packages on the path: no editable-install .pth (grape_hf's src), no PYTHONPATH, no repo checkout.
    bootstrap = f"import sys; sys.path.append({sysconfig.get_paths()['purelib']!r}); sys.argv[1:] = {refs!r}\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_MODULES_CACHE": str(tmp_path / "m")}
    env.pop("PYTHONPATH", None)
    run = subprocess.run(
        [sys.executable, "-S", "-c", bootstrap + REMOTE],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])

    ours = {
        "full": pipeline("grape-rewrite", model=str(trained["full"]), device="cpu"),
        "lora": _in_process_lora(_tiny_llama, trained["bare-adapter"]),
    }
    for ref, kind in zip(refs, ["full", "lora", "lora"]):
        result = results[ref]
        assert result["class"] == "GRAPERewritePipeline"
        assert result["model"] == ("PeftModel" if kind == "lora" else "LlamaForCausalLM")
        assert result["out"][1] == {"query": " ", "rewrites": [" "], "rewrite": " ", "prompt": None, "empty": True}
        assert "a blue car" in result["composed"]
        # The same rewrites as grape_hf's own registered pipeline on the same weights.
        expected = ours[kind]("Ein Hund rennt.", max_new_tokens=6, suppress_tokens=[0, 1, 2, 198])
        assert result["out"][0] == expected and expected["rewrite"]


def _in_process_lora(base: Path, adapter: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    config = json.loads((adapter / "grape_rewriter.json").read_text())
    return pipeline("grape-rewrite", model=model, tokenizer=tokenizer, device="cpu", rewriter_config=config)
