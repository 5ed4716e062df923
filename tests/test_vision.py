"""The vision-language rewriter path for composed queries (a reference image plus an edit), on a tiny random LLaVA
built from configs with SmolLM2's real tokenizer: rewriting, a GRPO run through grape_hf's recipe code, and the
saved folder in `pipeline("grape-rewrite")`."""

import json

import pytest
import torch
from PIL import Image

import grape_hf  # noqa: F401  (registers "grape-rewrite")
from grape_hf.rewriting.prompts import get_prompt_template
from grape_hf.rewriting.rewriter import QueryRewriter

RETRIEVER = "open_clip:grape-shapes-clip@grape-shapes"


def images(n: int) -> list:
    return [Image.new("RGB", (40, 40), (40 * i, 200 - 30 * i, 90)) for i in range(n)]


def test_query_rewriter_reads_the_reference_image(tiny_vlm_dir):
    rewriter = QueryRewriter.from_pretrained(str(tiny_vlm_dir), template=get_prompt_template("composed_image"))
    assert rewriter.processor is not None and rewriter.tokenizer is rewriter.processor.tokenizer
    out = rewriter.rewrite(
        ["make it blue", "add a circle", "remove the square"], references=images(3), batch_size=2, max_new_tokens=5
    )
    assert len(out) == 3 and all(len(r) == 1 and isinstance(r[0], str) for r in out)
    sampled = rewriter.rewrite(["make it blue"], references=images(1), num_rewrites=3, max_new_tokens=5)
    assert len(sampled[0]) == 3
    # The image changes what the model sees: other pixels, other next-token scores.
    from grape_hf.rewriting.vision import encode_image_prompts

    template = rewriter.template.to_dict()
    a, b = (encode_image_prompts(rewriter.processor, template, ["make it blue"], [im]) for im in images(2))
    assert torch.equal(a["input_ids"], b["input_ids"]) and not torch.equal(a["pixel_values"], b["pixel_values"])
    with torch.no_grad():
        assert not torch.allclose(rewriter.model(**a).logits[0, -1], rewriter.model(**b).logits[0, -1])


def test_vision_rewriter_refuses_missing_or_text_references(tiny_vlm_dir):
    rewriter = QueryRewriter.from_pretrained(str(tiny_vlm_dir), template=get_prompt_template("composed_image"))
    with pytest.raises(ValueError, match="needs its reference image; pass references="):
        rewriter.rewrite(["make it blue"])
    with pytest.raises(ValueError, match="is a str, not an image"):
        rewriter.rewrite(["make it blue"], references=["a red square"])
    with pytest.raises(ValueError, match=r"one image per query \(2\); got 1"):
        rewriter.rewrite(["make it blue", "add a circle"], references=images(1))


@pytest.fixture(scope="module")
def trained_vlm(tiny_vlm_dir, tmp_path_factory):
    """grape_hf's GRPO run (`grape_hf.training.grpo.main`, as recipes/grpo_grape.py calls it) on the tiny LLaVA:
    composed shapes queries with their reference images, rewarded by the shipped shapes CLIP's ranking."""
    from trl import ModelConfig, TrlParser

    from grape_hf.shapes import build_grape_task
    from grape_hf.training.configs import GRAPEConfig, GRAPEScriptArguments
    from grape_hf.training.grpo import main

    root = tmp_path_factory.mktemp("vlm-grpo")
    task = build_grape_task("composed", train_images=24, eval_images=24, eval_queries=4, reference_images=True)
    task.save_to_disk(str(root / "data"))
    argv = (
        f"--model_name_or_path {tiny_vlm_dir} --use_peft true --lora_r 4 --lora_alpha 8 "
        f"--lora_target_modules all-linear --dataset_name {root / 'data'} --shift composed_image "
        f"--reference_column reference_image --retriever {RETRIEVER} --reward_funcs rank "
        f"--corpus_cache_dir {root / 'cache'} --output_dir {root / 'out'} --max_steps 2 "
        "--per_device_train_batch_size 4 --num_generations 4 --max_completion_length 6 --learning_rate 1e-2 "
        "--report_to none --use_cpu true --save_strategy no --eval_batch_size 2 --curve_eval_steps 1 "
        "--curve_queries 2 --merged_generation true --pack_completions true --logging_steps 1 --seed 0"
    ).split()
    args = TrlParser((GRAPEScriptArguments, GRAPEConfig, ModelConfig)).parse_args_and_config(
        args=argv, fail_with_unknown_args=True
    )
    evaluation = main(*args)
    return root / "out", evaluation, task


def test_grpo_on_a_vision_language_rewriter_changes_its_parameters(trained_vlm):
    from safetensors.torch import load_file

    out, evaluation, _ = trained_vlm
    weights = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    lora_b = {name: w for name, w in weights.items() if "lora_B" in name}
    assert lora_b and any(w.abs().sum() > 0 for w in lora_b.values()), "GRPO left the LoRA update at zero"
    assert any("vision_tower" not in name and "language_model" in name for name in lora_b)
    # Evaluated before and after on the held-out queries, each rewrite made from the reference image.
    assert evaluation["num_queries"] == 4 and evaluation["corpus_size"] == 24
    assert set(evaluation["after"]) >= {"R@1", "R@10", "MRR"}
    curves = json.loads((out / "curves.json").read_text())
    assert curves["eval"]["step"] == [0, 1, 2]  # the held-out R@10 curve, rewrites from the images
    meta = json.loads((out / "grape_rewriter.json").read_text())
    assert meta["prompt"]["shift"] == "composed_image" and "{reference}" in meta["prompt"]["user"]
    assert (out / "processor_config.json").is_file() and (out / "vision.py").is_file()  # the processor saved


def test_pipeline_rewrites_image_plus_edit(trained_vlm):
    from transformers import pipeline

    out, _, task = trained_vlm
    row = task["validation"][0]
    rewriter = pipeline("grape-rewrite", model=str(out), max_new_tokens=6)
    result = rewriter(row["query"], reference=row["reference_image"])
    assert result["query"] == row["query"] and isinstance(result["rewrite"], str) and result["rewrites"]
    assert "Here is a reference image:\n<image>" in result["prompt"]  # the trained prompt, the image in its slot
    batch = rewriter([row["query"], row["query"]], reference=[row["reference_image"]] * 2, batch_size=2)
    assert len(batch) == 2 and batch[0]["prompt"] == result["prompt"]
    with pytest.raises(ValueError, match="needs its reference image; pass reference="):
        rewriter(row["query"])
    # The same folder without grape_hf: its own remote code.
    remote = pipeline(model=str(out), trust_remote_code=True, max_new_tokens=6)
    assert isinstance(remote(row["query"], reference=row["reference_image"])["rewrite"], str)


def test_space_composed_track_passes_the_image_to_a_vision_language_rewriter(trained_vlm, _tiny_llama, multi30k_path):
    """The Space (spaces/grape_space.py, in-process) with the trained tiny LLaVA as its composed rewriter: an uploaded
    reference image goes to the rewriter as an image, not as its caption."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "spaces"))
    from grape_space import SpaceEngine, SpaceSettings, shapes_rows

    out, _, _ = trained_vlm
    text_rewriters = dict.fromkeys(("multilingual", "long_form", "captions"), str(_tiny_llama))
    settings = SpaceSettings(rewriters={**text_rewriters, "composed": str(out)}, captions_data=str(multi30k_path))
    rows, scenes = shapes_rows("composed")
    row = rows[0]
    threads = torch.get_num_threads()
    try:  # the engine sets the process's threads and turns gradients off, as a serving process does
        engine = SpaceEngine(settings)
        result = engine.search("images", row["query"], reference=scenes[row["reference_id"]].render())
    finally:
        torch.set_grad_enabled(True)
        torch.set_num_threads(threads)
    assert result["shift"] == "composed" and result["rewriter"] == out.name
    assert result["reference"] == {
        "id": row["reference_id"],
        "caption": row["reference"],
        "note": "read as an image by the vision-language rewriter",
    }
    assert isinstance(result["rewrites"][0], str) and result["target_rank"]["original"] >= 1


def test_the_cirr_recipe_trains_a_vision_language_rewriter_on_reference_images():
    from pathlib import Path

    from trl import ModelConfig, TrlParser

    from grape_hf.training.configs import GRAPEConfig, GRAPEScriptArguments

    config = Path(__file__).resolve().parents[1] / "recipes" / "Qwen2.5-VL-3B-Instruct" / "grpo" / "config_cirr.yaml"
    script_args, training_args, model_args = TrlParser(
        (GRAPEScriptArguments, GRAPEConfig, ModelConfig)
    ).parse_args_and_config(args=["--config", str(config), "--use_cpu", "true"], fail_with_unknown_args=True)
    assert model_args.model_name_or_path == "Qwen/Qwen2.5-VL-3B-Instruct" and training_args.use_vllm
    assert script_args.paper_dataset == "cirr" and script_args.reference_column == "reference"
    template = get_prompt_template(script_args.shift)
    assert template.needs_reference and template.format == "chat"  # the image goes where {reference} is
