"""The training stages as library modules (open-r1 style): SFT warm start -> GRPO from it (with the R@10 curve and
resume) -> rank-filtered self-distillation, each on a tiny Llama with SmolLM2's real tokenizer and real Multi30k."""

import json

import pytest

TINY_LORA = ["--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "all-linear"]


def parse(arg_classes, args):
    from trl import TrlParser

    return TrlParser(arg_classes).parse_args_and_config(args=args, fail_with_unknown_args=True)


@pytest.mark.slow
def test_sft_saves_a_rewriter_folder_trained_on_translation_pairs(warm_start, multi30k_path):
    from transformers import pipeline

    import grape_hf  # noqa: F401  (registers "grape-rewrite")
    from grape_hf.training.configs import SFTScriptArguments
    from grape_hf.training.sft import load_pairs

    meta = json.loads((warm_start / "grape_rewriter.json").read_text())
    assert meta["training"]["stage"] == "sft" and meta["training"]["stages"] == ["sft"]
    assert "12 de->en pairs" in meta["training"]["pairs"] and meta["training"]["train_seconds"] > 0
    assert meta["retriever"] == "sentence-transformers:all-MiniLM-L6-v2"
    losses = meta["training"]["eval_loss"]  # on 4 validation pairs, after each of the 2 steps
    assert [step for step, _ in losses] == [1, 2] and all(loss > 0 for _, loss in losses)
    pairs = load_pairs(SFTScriptArguments(dataset_name=str(multi30k_path), max_train_samples=3))
    assert pairs.column_names == ["query", "rewrite"] and len(pairs) == 3
    out = pipeline("grape-rewrite", model=str(warm_start), max_new_tokens=4)("Ein Hund rennt.")
    assert "Translate the German image description" in out["prompt"]


@pytest.mark.slow
def test_grpo_from_the_warm_start_logs_a_curve_and_resumes(warm_start, multi30k_path, tmp_path):
    from trl import ModelConfig

    from grape_hf import GRAPEScriptArguments
    from grape_hf.training.configs import GRAPEConfig
    from grape_hf.training.grpo import main

    out = tmp_path / "grpo"

    def run(max_steps: int):
        args = parse(
            (GRAPEScriptArguments, GRAPEConfig, ModelConfig),
            [
                "--model_name_or_path",
                "unused-when-init_rewriter-is-set",
                "--init_rewriter",
                str(warm_start),
                "--dataset_name",
                str(multi30k_path),
                "--max_train_images",
                "12",
                "--max_eval_images",
                "16",
                "--max_eval_samples",
                "4",
                "--curve_eval_steps",
                "1",
                "--curve_queries",
                "3",
                "--corpus_cache_dir",
                str(tmp_path / "cache"),
                "--evaluate_before_after",
                "false",
                "--output_dir",
                str(out),
                "--max_steps",
                str(max_steps),
                "--per_device_train_batch_size",
                "3",
                "--num_generations",
                "3",
                "--max_completion_length",
                "6",
                "--learning_rate",
                "1e-3",
                "--report_to",
                "none",
                "--use_cpu",
                "true",
                "--save_strategy",
                "steps",
                "--save_steps",
                "1",
                "--logging_steps",
                "1",
                "--bf16",
                "false",
                "--gradient_checkpointing",
                "false",
                "--merged_generation",
                "true",
                "--generation_dtype",
                "float32",
            ],
        )
        main(*args)

    run(1)
    assert (out / "checkpoint-1").is_dir()
    first = json.loads((out / "curves.json").read_text())
    run(2)  # resumes from checkpoint-1: one more step, and the first step's logs come back from its trainer state
    curves = json.loads((out / "curves.json").read_text())
    assert curves["eval"]["step"][-1] == 2 and "R@10" in curves["eval"]
    assert curves["train"]["step"] == [1, 2] and curves["train"]["completions"] == [3, 6]
    assert curves["train"]["reward"][0] == first["train"]["reward"][0]
    meta = json.loads((out / "grape_rewriter.json").read_text())
    assert meta["training"]["stages"] == ["sft", "grpo"] and meta["training"]["init_rewriter"] == str(warm_start)
    assert meta["prompt"] == json.loads((warm_start / "grape_rewriter.json").read_text())["prompt"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "curves.png").is_file()


def test_select_best_keeps_samples_that_beat_greedy(minilm):
    from grape_hf import GRAPERewardFunction, RankScorer
    from grape_hf.training.distill import select_best

    corpus = ["a dog runs on the grass", "two men play chess in a park", "a red car in the snow"]
    reward = GRAPERewardFunction(RankScorer(minilm, corpus, show_progress_bar=False), reward="rank")
    kept, stats = select_best(
        ["Zwei Männer spielen Schach", "Ein rotes Auto", "Ein Hund"],
        [1, 2, 0],
        ["a red car", "a red car in the snow", "a dog on grass"],
        [["a dog", "two men playing chess"], ["a cat", "snow"], ["a dog runs on the grass", "a cat"]],
        reward,
    )
    assert [row["rewrite"] for row in kept] == ["two men playing chess"]  # the other two: greedy already ranks 1
    assert stats["kept"] == 1 and stats["oracle_R@10"] == 1.0 and stats["mean_best_reward"] >= 0.5
    with pytest.raises(ValueError, match="one entry per query"):
        select_best(["q"], [0, 1], ["g"], [["s", "t"]], reward)


def test_select_best_max_rank_keeps_only_samples_ranked_high_enough(minilm):
    from grape_hf import GRAPERewardFunction, RankScorer
    from grape_hf.training.configs import DistillScriptArguments
    from grape_hf.training.distill import select_best

    corpus = ["a dog runs on the grass", "two men play chess in a park", "a red car in the snow", "a dog in snow"]
    reward = GRAPERewardFunction(RankScorer(minilm, corpus, show_progress_bar=False), reward="rank")
    queries, targets, greedy = ["Zwei Männer", "Ein Hund rennt"], [1, 0], ["a car", "a car"]
    samples = [["a cat", "two men playing chess"], ["a cat", "a dog"]]  # "a dog" ranks "a dog in snow" first
    kept, stats = select_best(queries, targets, greedy, samples, reward)
    assert [row["rewrite"] for row in kept] == ["two men playing chess", "a dog"]
    assert [row["rank"] for row in kept] == [1, 2] and stats["oracle_R@1"] == 0.5
    kept, stats = select_best(queries, targets, greedy, samples, reward, max_rank=1)
    assert [row["rewrite"] for row in kept] == ["two men playing chess"] and stats["kept"] == 1
    with pytest.raises(ValueError, match="max_rank must be >= 1"):
        DistillScriptArguments(dataset_name="x", max_rank=0)


@pytest.mark.slow
def test_self_distillation_round_saves_and_resumes(warm_start, multi30k_path, tmp_path):
    from trl import ModelConfig, SFTConfig

    from grape_hf.training.configs import DistillScriptArguments
    from grape_hf.training.distill import main

    out = tmp_path / "distill"
    argv = [
        "--model_name_or_path",
        "unused",
        "--init_rewriter",
        str(warm_start),
        "--dataset_name",
        str(multi30k_path),
        "--max_train_images",
        "12",
        "--max_train_samples",
        "6",
        "--rounds",
        "1",
        "--num_samples",
        "4",
        "--max_new_tokens",
        "6",
        "--sample_dtype",
        "float32",
        "--corpus_cache_dir",
        str(tmp_path / "cache"),
        "--output_dir",
        str(out),
        "--max_steps",
        "1",
        "--per_device_train_batch_size",
        "2",
        "--report_to",
        "none",
        "--use_cpu",
        "true",
        "--max_length",
        "128",
    ]
    history = main(*parse((DistillScriptArguments, SFTConfig, ModelConfig), argv))
    assert len(history) == 1 and history[0]["queries"] == 6 and 1 <= history[0]["kept"] <= 6
    kept = [json.loads(line) for line in (out / "round-0" / "kept.jsonl").read_text().splitlines()]
    assert len(kept) == history[0]["kept"] and all(row["reward"] > row["greedy_reward"] for row in kept)
    meta = json.loads((out / "grape_rewriter.json").read_text())
    assert meta["training"]["stages"] == ["sft", "self_distillation"]
    assert main(*parse((DistillScriptArguments, SFTConfig, ModelConfig), argv)) == history  # resumed, not redone
    # --replay: an earlier run's kept rows join the fine-tuning; rows this round kept itself are not repeated
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    extra = {"query": "Ein Hund rennt.", "rewrite": "A dog runs.", "reward": 1.0}
    (earlier / "kept.jsonl").write_text(json.dumps(extra) + "\n" + (out / "round-0" / "kept.jsonl").read_text())
    argv[argv.index(str(out))] = str(tmp_path / "replay")
    replayed = main(*parse((DistillScriptArguments, SFTConfig, ModelConfig), [*argv, "--replay", str(earlier)]))
    rows = [json.loads(line) for line in (tmp_path / "replay" / "round-0" / "kept.jsonl").read_text().splitlines()]
    assert replayed[0]["kept"] == history[0]["kept"] and replayed[0]["replayed"] == 1
    assert rows == [*kept, extra]
    with pytest.raises(FileNotFoundError, match="replay: .* is neither a kept.jsonl file"):
        main(*parse((DistillScriptArguments, SFTConfig, ModelConfig), [*argv, "--replay", str(tmp_path / "no")]))


@pytest.mark.slow
def test_self_distillation_of_composed_shapes_queries_from_the_base_model(_tiny_llama, tmp_path):
    """A composed task built by `grape-hf shapes-task`, distilled from the zero-shot policy (no --init_rewriter) with a
    few-shot prompt file: the reference caption reaches the fine-tuning prompts and the kept rows."""
    from trl import ModelConfig, SFTConfig

    from grape_hf.cli import main as cli
    from grape_hf.rewriting.prompts import get_prompt_template
    from grape_hf.training.configs import DistillScriptArguments
    from grape_hf.training.distill import main

    data = tmp_path / "shapes-composed"
    assert (
        cli(
            [
                "shapes-task",
                "--shift",
                "composed",
                "--output_dir",
                str(data),
                "--train_images",
                "24",
                "--eval_images",
                "24",
                "--eval_queries",
                "4",
            ]
        )
        == 0
    )
    prompt = tmp_path / "prompt.json"
    template = get_prompt_template("composed").to_dict()
    example = {"query": "make the circle red", "reference": "a blue circle", "rewrite": "a red circle"}
    prompt.write_text(json.dumps({**template, "examples": [example]}))
    out = tmp_path / "distill"
    argv = [
        "--model_name_or_path",
        str(_tiny_llama),
        *TINY_LORA,
        "--dataset_name",
        str(data),
        "--shift",
        "composed",
        "--retriever",
        "open_clip:grape-shapes-clip@grape-shapes",
        "--prompt_template",
        str(prompt),
        "--rounds",
        "1",
        "--num_samples",
        "4",
        "--max_new_tokens",
        "6",
        "--sample_dtype",
        "float32",
        "--corpus_cache_dir",
        str(tmp_path / "cache"),
        "--output_dir",
        str(out),
        "--max_steps",
        "1",
        "--per_device_train_batch_size",
        "2",
        "--report_to",
        "none",
        "--use_cpu",
        "true",
        "--max_length",
        "256",
    ]
    history = main(*parse((DistillScriptArguments, SFTConfig, ModelConfig), argv))
    assert history[0]["queries"] == 6 and history[0]["samples_per_query"] == 4
    kept = [json.loads(line) for line in (out / "round-0" / "kept.jsonl").read_text().splitlines()]
    assert kept and all(row["reference"].startswith("a ") for row in kept)
    meta = json.loads((out / "grape_rewriter.json").read_text())
    assert meta["shift"] == "composed" and meta["prompt"]["examples"] == [example]
    assert meta["training"]["stages"] == ["self_distillation"]


def test_select_pairs_rejects_the_greedy_rewrite_when_a_sample_beats_it(minilm):
    from grape_hf import GRAPERewardFunction, RankScorer
    from grape_hf.training.dpo import select_pairs

    corpus = ["a dog runs on the grass", "two men play chess in a park", "a red car in the snow", "a dog in snow"]
    reward = GRAPERewardFunction(RankScorer(minilm, corpus, show_progress_bar=False), reward="rank")
    queries, targets = ["Zwei Männer spielen Schach", "Ein rotes Auto", "Ein Hund"], [1, 2, 0]
    greedy = ["a red car", "a red car in the snow", "a dog runs on the grass"]
    samples = [["a dog", "two men playing chess"], ["a cat", "a dog in snow"], ["a dog runs on the grass"] * 2]
    pairs, stats = select_pairs(queries, targets, greedy, samples, reward)
    # 1st: a sample beats greedy -> (sample, greedy); 2nd: greedy is best -> (greedy, worst sample); 3rd: all equal
    assert [(row["chosen"], row["rejected"]) for row in pairs] == [
        ("two men playing chess", "a red car"),
        ("a red car in the snow", "a cat"),
    ]
    assert [row["rejected_is_greedy"] for row in pairs] == [True, False]
    assert all(row["chosen_reward"] > row["rejected_reward"] and row["chosen_rank"] == 1 for row in pairs)
    assert stats["pairs"] == 2 and stats["rejected_greedy"] == 1 and stats["oracle_R@1"] == 1.0
    assert stats["mean_chosen_reward"] > stats["mean_rejected_reward"]
    pairs, _ = select_pairs(queries, targets, greedy, samples, reward, min_margin=2.0)
    assert pairs == []  # a rank reward is at most 1 apart
    with pytest.raises(ValueError, match="one entry per query"):
        select_pairs(["q"], [0, 1], ["g"], [["s", "t"]], reward)


@pytest.mark.slow
def test_rank_preference_round_trains_dpo_against_the_start_and_resumes(warm_start, multi30k_path, tmp_path):
    """A DPO round from the warm start's LoRA: pairs saved, the rewriter folder holds one adapter (not TRL's "ref"
    copy), its weights moved from the start's, and a rerun resumes instead of training again."""
    from safetensors.torch import load_file
    from trl import DPOConfig, ModelConfig

    from grape_hf.training.configs import PreferenceScriptArguments
    from grape_hf.training.dpo import main

    out = tmp_path / "dpo"
    argv = [
        "--model_name_or_path",
        "unused",
        "--init_rewriter",
        str(warm_start),
        "--dataset_name",
        str(multi30k_path),
        "--max_train_images",
        "12",
        "--max_train_samples",
        "6",
        "--rounds",
        "1",
        "--num_samples",
        "4",
        "--max_new_tokens",
        "6",
        "--sample_dtype",
        "float32",
        "--learning_rate",
        "1e-2",
        "--corpus_cache_dir",
        str(tmp_path / "cache"),
        "--output_dir",
        str(out),
        "--max_steps",
        "1",
        "--per_device_train_batch_size",
        "2",
        "--report_to",
        "none",
        "--use_cpu",
        "true",
        "--max_length",
        "128",
        "--loss_type",
        "sigmoid",
        "sft",
        "--loss_weights",
        "1.0",
        "0.5",
    ]
    history = main(*parse((PreferenceScriptArguments, DPOConfig, ModelConfig), argv))
    assert len(history) == 1 and history[0]["queries"] == 6 and 1 <= history[0]["pairs"] <= 6
    pairs = [json.loads(line) for line in (out / "round-0" / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == history[0]["pairs"] and all(row["chosen_reward"] > row["rejected_reward"] for row in pairs)
    meta = json.loads((out / "grape_rewriter.json").read_text())
    assert meta["training"]["stages"] == ["sft", "rank_preference"] and meta["training"]["beta"] == 0.1
    assert not (out / "adapter" / "ref").exists()
    start = load_file(warm_start / "adapter" / "adapter_model.safetensors")
    trained = load_file(out / "adapter" / "adapter_model.safetensors")
    assert trained.keys() == start.keys() and any(not trained[k].equal(start[k]) for k in start)
    assert main(*parse((PreferenceScriptArguments, DPOConfig, ModelConfig), argv)) == history  # resumed


def test_method_folder_finds_a_variant_and_refuses_an_unfinished_stage(tmp_path):
    from grape_hf.training.stages import method_folder

    folders = {"grape_rank": "grpo-rank", "self_distillation": "distill"}
    (tmp_path / "grpo-rank-long-r10").mkdir()
    (tmp_path / "grpo-rank-long-r10" / "grape_rewriter.json").write_text("{}")
    assert method_folder("grape_rank_long_r10", tmp_path, folders) == tmp_path / "grpo-rank-long-r10"
    with pytest.raises(SystemExit, match="no finished stage at"):
        method_folder("self_distillation", tmp_path, folders)
    with pytest.raises(SystemExit, match="not a trained method"):
        method_folder("zero_shot", tmp_path, folders)


def test_best_of_n_keeps_the_best_ranked_sample(_tiny_llama, minilm):
    from grape_hf import RankScorer
    from grape_hf.training.stages import best_of_n, load_fast_rewriter

    rewriter = load_fast_rewriter(str(_tiny_llama), dtype="float32", max_new_tokens=6)
    scorer = RankScorer(minilm, ["a dog runs", "two men play chess", "a red car"], show_progress_bar=False)
    best, ranks = best_of_n(rewriter, scorer, ["Ein Hund", "Zwei Männer"], [0, 1], n=3)
    assert len(best) == 2 and ranks.tolist() == scorer.ranks(best, [0, 1]).tolist()


def test_ship_rewriter_writes_an_fp16_adapter_and_its_card(tmp_path):
    from safetensors.torch import load_file

    from grape_hf.rewriting.folder import RewriterConfig
    from grape_hf.rewriting.rewriter import shipped_rewriter_path
    from grape_hf.training.stages import ship_rewriter

    numbers = {"R@1": 0.5, "R@5": 0.6, "R@10": 0.7, "MRR": 0.55, "nDCG@10": 0.6, "mean_rank": 3.0}
    evaluation = {"before": numbers, "after": numbers, "num_queries": 10, "corpus_size": 20}
    config = ship_rewriter(
        shipped_rewriter_path(), tmp_path / "shipped", evaluation, {"command": "make it"}, corpus="c"
    )
    assert config.training["command"] == "make it" and "init_rewriter" not in config.training
    saved = RewriterConfig.load(tmp_path / "shipped")
    assert saved.corpus == "c" and saved.evaluation == evaluation
    weights = load_file(tmp_path / "shipped" / "adapter" / "adapter_model.safetensors")
    assert {str(w.dtype) for w in weights.values()} == {"torch.float16"}
    assert "0.7" in (tmp_path / "shipped" / "README.md").read_text()
    assert not list((tmp_path / "shipped").glob("checkpoint-*"))
    assert (tmp_path / "shipped" / "tokenizer.json").is_file()  # kept by default
    ship_rewriter(shipped_rewriter_path(), tmp_path / "lean", evaluation, keep_tokenizer=False)
    assert not list((tmp_path / "lean").glob("tokenizer*")) and (tmp_path / "lean" / "adapter").is_dir()
