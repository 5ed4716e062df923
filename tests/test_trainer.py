"""GRAPETrainer's merged-LoRA sampling (grape_hf.training.trainer) on a tiny Llama with SmolLM2's real tokenizer."""

import pytest
import torch


def tiny_trainer(tiny_llama_dir, minilm, multi30k_path, tmp_path, **settings):
    """A GRAPETrainer on the tiny Llama with a fresh LoRA, rewarded by MiniLM's rank over 12 Multi30k images."""
    from peft import LoraConfig

    from grape_hf import GRAPERewardFunction, RankScorer
    from grape_hf.data import load_multi30k
    from grape_hf.rewriting.prompts import get_prompt_template, to_prompt_dataset
    from grape_hf.training.configs import GRAPEConfig
    from grape_hf.training.trainer import GRAPETrainer

    data = load_multi30k(multi30k_path, split="validation", max_images=12)
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        seed=0,
        gradient_checkpointing=False,
        merged_generation=True,
    )
    return GRAPETrainer(
        model=str(tiny_llama_dir),
        reward_funcs=[GRAPERewardFunction(RankScorer(minilm, data.corpus, show_progress_bar=False), reward="rank")],
        args=GRAPEConfig(**{**defaults, **settings}),
        train_dataset=to_prompt_dataset(data, get_prompt_template("multilingual")),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"),
    )


def test_merged_sampler_computes_what_the_lora_policy_computes(tiny_llama_dir, lora_policy):
    from transformers import AutoTokenizer

    from grape_hf.training.merged_sampler import MergedSampler

    policy = lora_policy.eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    inputs = tokenizer(["Ein Hund rennt über die Wiese."], return_tensors="pt")
    sampler = MergedSampler(policy, torch.float32)
    with torch.no_grad():
        expected = policy(**inputs).logits
        assert torch.allclose(sampler.model(**inputs).logits, expected, atol=1e-4)
        greedy = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
        assert torch.equal(sampler.model.generate(**inputs, **greedy), policy.generate(**inputs, **greedy))
        for name, param in policy.named_parameters():  # the policy moves on; sync follows it
            if "lora_A" in name:
                param.data.mul_(-1)
        sampler.sync(policy, step=1)
        assert torch.allclose(sampler.model(**inputs).logits, policy(**inputs).logits, atol=1e-4)
        bf16 = MergedSampler(policy, torch.bfloat16)
        assert next(bf16.model.parameters()).dtype == torch.bfloat16
        assert torch.allclose(bf16.model(**inputs).logits.float(), policy(**inputs).logits, atol=0.1)


def test_grape_trainer_samples_from_the_merged_copy_and_keeps_it_synced(
    tiny_llama_dir, minilm, multi30k_path, tmp_path
):
    from grape_hf.training.merged_sampler import merged_state_dict
    from grape_hf.training.trainer import GRAPETrainer

    trainer = tiny_trainer(
        tiny_llama_dir,
        minilm,
        multi30k_path,
        tmp_path,
        max_steps=2,
        per_device_train_batch_size=3,
        num_generations=3,
        steps_per_generation=2,
        max_completion_length=8,
        learning_rate=5e-2,
        logging_steps=1,
        bf16=False,
        generation_dtype="float32",
        shared_prompt_forward=True,
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "rewards/grape_rank/mean" in entry]
    assert len(logs) == 1 and logs[0]["completions/mean_length"] > 0  # rewards are logged once a generation round
    sampler = trainer._sampler
    assert sampler is not None and sampler.synced_step == 0  # one generation round of 6 completions, at step 0
    trainer.merged_sampler()  # the policy changed since: the next round resyncs
    policy_state = merged_state_dict(trainer.model)
    for key, value in sampler.model.state_dict().items():
        assert torch.allclose(value, policy_state[key].to(value.dtype), atol=1e-6), key

    # The shared-prompt forward the loss used gives TRL's plain forward's log-probabilities and entropies.
    prompt = trainer.processing_class(
        ["Ein Hund.", "Zwei Kinder spielen im Sand."], padding=True, padding_side="left", return_tensors="pt"
    )
    rows = torch.tensor([0, 1, 1, 0])
    completion = torch.randint(100, 1000, (4, 3), generator=torch.Generator().manual_seed(0))
    input_ids = torch.cat([prompt["input_ids"][rows], completion], dim=1)
    attention_mask = torch.cat([prompt["attention_mask"][rows], torch.ones_like(completion)], dim=1)
    with torch.no_grad():
        shared = trainer._get_per_token_logps_and_entropies(
            trainer.model, input_ids, attention_mask, 3, compute_entropy=True
        )
        plain = super(GRAPETrainer, trainer)._get_per_token_logps_and_entropies(
            trainer.model, input_ids, attention_mask, 3, compute_entropy=True
        )
    assert torch.allclose(shared[0], plain[0], atol=1e-5) and torch.allclose(shared[1], plain[1], atol=1e-4)
    trainer.args.pack_completions = True  # and so does the packed one
    with torch.no_grad():
        packed = trainer._get_per_token_logps_and_entropies(
            trainer.model, input_ids, attention_mask, 3, compute_entropy=True
        )
    assert torch.allclose(packed[0], plain[0], atol=1e-5) and torch.allclose(packed[1], plain[1], atol=1e-4)
    # The sampler decodes with its own attention; the policy keeps the one it was loaded with.
    assert sampler.model.config._attn_implementation == "grape_grouped_sdpa"
    assert trainer.model.config._attn_implementation == "sdpa"


def test_grape_config_refuses_bad_settings():
    from grape_hf.training.configs import GRAPEConfig

    with pytest.raises(ValueError, match="generation_dtype must be"):
        GRAPEConfig(output_dir="out", use_cpu=True, generation_dtype="int8")


def test_bf16_fast_path_trains_the_fp32_adapter(tiny_llama_dir, minilm, multi30k_path, tmp_path):
    """The recipe's fast settings together: bf16 autocast with bf16 LoRA inputs, merged bf16 sampling, eager
    attention."""
    trainer = tiny_trainer(
        tiny_llama_dir,
        minilm,
        multi30k_path,
        tmp_path,
        max_steps=1,
        per_device_train_batch_size=3,
        num_generations=3,
        max_completion_length=6,
        learning_rate=5e-2,
        bf16=True,
        lora_autocast_inputs=True,
        shared_prompt_forward=True,
        model_init_kwargs={"dtype": "bfloat16", "attn_implementation": "eager"},
        generation_dtype="bfloat16",  # explicit: "auto" would pick fp32 on a CPU without native bf16
    )
    lora = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    assert all(p.dtype == torch.float32 for n, p in trainer.model.named_parameters() if "lora_" in n)
    assert any(not torch.equal(lora[n], p) for n, p in trainer.model.named_parameters() if n in lora)
    assert next(trainer._sampler.model.parameters()).dtype == torch.bfloat16


def test_old_logps_from_the_sampler_and_whole_group_batches(tiny_llama_dir, minilm, multi30k_path, tmp_path):
    """The sampler's recorded log-probabilities stand in for TRL's policy recomputation, and batches keep groups
    whole."""
    trainer = tiny_trainer(
        tiny_llama_dir,
        minilm,
        multi30k_path,
        tmp_path,
        max_steps=1,
        per_device_train_batch_size=4,
        num_generations=2,
        steps_per_generation=3,
        max_completion_length=8,
        learning_rate=0.0,
        bf16=False,
        generation_dtype="float32",
        pack_completions=True,
        old_logps_from_sampler=True,
        group_batches=True,
    )
    trainer.train()
    assert len(trainer._buffered_inputs) == 3  # one round of 12 completions for 3 optimizer steps
    for batch in trainer._buffered_inputs:
        prompts = batch["prompt_ids"]
        assert torch.equal(prompts[0::2], prompts[1::2])  # two whole groups of 2
        assert "sampling_per_token_logps" not in batch
        input_ids = torch.cat([prompts, batch["completion_ids"]], dim=1)
        attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
        with torch.no_grad():  # lr 0: the policy is still the one the fp32 sampler mirrored
            policy, _, _ = trainer._get_per_token_logps_and_entropies(
                trainer.model, input_ids, attention_mask, batch["completion_ids"].size(1)
            )
        mask = batch["completion_mask"].bool()
        assert torch.allclose(batch["old_per_token_logps"][mask], policy[mask], atol=1e-4)
