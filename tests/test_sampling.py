"""Group-aware decoding and log-probabilities (grape_hf.training.group_decoding) on a tiny Llama with SmolLM2's real
tokenizer."""

import pytest
import torch

QUERIES = ["Ein Hund rennt über die Wiese.", "Zwei Kinder spielen im Sand am Strand.", "Ein Mann."]


def prompts(tokenizer, repeats):
    ids = [tokenizer(query)["input_ids"] for query in QUERIES]
    return [ids[i] for i in repeats]


def plain_logps(model, input_ids, attention_mask, logits_to_keep, entropy=False):
    """TRL's GRPO forward: the whole rows, the last `logits_to_keep` next-token log-probabilities (and entropies)."""
    from trl.trainer.utils import entropy_from_logits, selective_log_softmax

    logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep + 1).logits
    logps = selective_log_softmax(logits[:, :-1, :], input_ids[:, -logits_to_keep:])
    return (logps, entropy_from_logits(logits[:, :-1, :])) if entropy else logps


def test_shared_prompt_logps_equal_the_plain_forward_with_gradients(tiny_llama_dir, lora_policy):
    from transformers import AutoTokenizer

    from grape_hf.training.group_decoding import _left_pad, shared_prompt_logps

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    policy = lora_policy
    # Groups out of order and of different sizes, prompts of different lengths (left padding), as after TRL's shuffle.
    prompt_ids, prompt_mask = _left_pad(prompts(tokenizer, [1, 0, 1, 2, 0, 1]), tokenizer.pad_token_id, "cpu")
    completions = torch.randint(100, 1000, (6, 5), generator=torch.Generator().manual_seed(0))
    completion_mask = torch.ones_like(completions)
    completion_mask[3, 2:] = 0  # a completion that stopped early
    input_ids = torch.cat([prompt_ids, completions], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)

    expected = plain_logps(policy, input_ids, attention_mask, 5)
    expected.sum().backward()
    expected_grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad}
    policy.zero_grad()

    logps, logits = shared_prompt_logps(policy, input_ids, attention_mask, 5)
    assert logps.shape == (6, 5) and logits.shape[:2] == (6, 5)
    assert torch.allclose(logps, expected, atol=1e-5)
    logps.sum().backward()
    for name, param in policy.named_parameters():
        if param.requires_grad:  # the LoRA update still reaches the shared prompt's keys and values
            assert torch.allclose(param.grad, expected_grads[name], atol=1e-5), name
    assert any(expected_grads[n].abs().sum() > 0 for n in expected_grads if "lora_A" in n)

    with pytest.raises(ValueError, match="needs a prompt before the completion"):
        shared_prompt_logps(policy, input_ids, attention_mask, input_ids.size(1))


def test_shared_prefix_generate_matches_generate(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from grape_hf.training.group_decoding import _left_pad, shared_prefix_generate

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    prompt_ids = prompts(tokenizer, [0, 0, 1, 2, 1, 0])
    greedy = GenerationConfig(max_new_tokens=6, do_sample=False, eos_token_id=tokenizer.eos_token_id)
    shared = shared_prefix_generate(model, prompt_ids, greedy, tokenizer.pad_token_id)
    input_ids, attention_mask = _left_pad(prompt_ids, tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        plain = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=greedy,
            pad_token_id=tokenizer.pad_token_id,
        )[:, input_ids.size(1) :]
    assert torch.equal(shared, plain)

    sampled = GenerationConfig(
        max_new_tokens=6, do_sample=True, temperature=1.0, top_k=0, eos_token_id=tokenizer.eos_token_id
    )
    torch.manual_seed(0)
    draws = shared_prefix_generate(model, prompt_ids * 4, sampled, tokenizer.pad_token_id)
    assert draws.shape[0] == 24
    assert len({tuple(row) for row in draws[::6].tolist()}) > 1  # one prompt, four different samples


def test_inverse_cdf_sampler_draws_from_the_softmax():
    from grape_hf.training.group_decoding import InverseCDFSampler

    torch.manual_seed(0)
    logits = torch.tensor([2.0, 0.0, float("-inf"), 1.0, -1.0])
    probs = logits.softmax(-1)
    scores = logits.repeat(40000, 1)
    drawn = InverseCDFSampler()(None, scores).argmax(-1)
    frequencies = torch.bincount(drawn, minlength=5).float() / drawn.numel()
    assert frequencies[2] == 0  # a masked token is never drawn
    assert torch.allclose(frequencies, probs, atol=0.01)


def test_rewrites_of_a_prompt_share_its_prefill(tiny_llama_dir):
    """generate_rewrite_tokens: several rewrites per prompt from one prompt forward, as generate would give them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from grape_hf.rewriting.generation import generate_rewrite_tokens
    from grape_hf.training.group_decoding import _left_pad

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    input_ids, attention_mask = _left_pad(prompts(tokenizer, [0, 1, 2]), tokenizer.pad_token_id, "cpu")
    config = GenerationConfig(max_new_tokens=5, eos_token_id=tokenizer.eos_token_id)
    single = generate_rewrite_tokens(model, tokenizer, input_ids, attention_mask, generation_config=config)
    # Sampling from the top token only is greedy decoding: the shared prefill and the inverse-CDF draw change nothing.
    shared = generate_rewrite_tokens(
        model, tokenizer, input_ids, attention_mask, num_rewrites=3, generation_config=config, top_k=1
    )
    assert shared.shape[:2] == (3, 3)
    assert all(torch.equal(shared[:, i], single[:, 0]) for i in range(3))

    torch.manual_seed(0)
    sampled = generate_rewrite_tokens(
        model, tokenizer, input_ids, attention_mask, num_rewrites=4, generation_config=config, temperature=1.0, top_k=0
    )
    assert sampled.shape[:2] == (3, 4)
    assert len({tuple(row) for row in sampled[0].tolist()}) > 1


def test_packed_group_logps_equal_the_plain_forward_with_gradients(tiny_llama_dir, lora_policy):
    from transformers import AutoTokenizer

    from grape_hf.training.group_decoding import _left_pad, packed_group_logps

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    policy = lora_policy
    for attention in ("eager", "sdpa"):
        policy.config._attn_implementation = attention
        prompt_ids, prompt_mask = _left_pad(prompts(tokenizer, [1, 0, 1, 2, 0, 1]), tokenizer.pad_token_id, "cpu")
        completions = torch.randint(100, 1000, (6, 5), generator=torch.Generator().manual_seed(0))
        completion_mask = torch.ones_like(completions)
        completion_mask[3, 2:] = 0  # stopped early
        completion_mask[0, 4:] = 0
        completion_mask[5, :] = 0  # masked whole (a truncated completion under mask_truncated_completions)
        input_ids = torch.cat([prompt_ids, completions], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        keep = completion_mask.bool()

        expected, expected_entropy = plain_logps(policy, input_ids, attention_mask, 5, entropy=True)
        expected[keep].sum().backward()
        expected_grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad}
        policy.zero_grad()

        logps, entropies = packed_group_logps(policy, input_ids, attention_mask, 5, compute_entropy=True)
        assert logps.shape == (6, 5) and entropies.shape == (6, 5)
        assert torch.allclose(logps[keep], expected[keep], atol=1e-5), attention
        assert torch.allclose(entropies[keep], expected_entropy[keep].detach(), atol=1e-5), attention
        assert torch.equal(logps[~keep], torch.zeros_like(logps[~keep]))
        assert torch.equal(entropies[~keep], torch.zeros_like(entropies[~keep]))
        assert packed_group_logps(policy, input_ids, attention_mask, 5)[1] is None
        logps.sum().backward()
        for name, param in policy.named_parameters():
            if param.requires_grad:
                assert torch.allclose(param.grad, expected_grads[name], atol=1e-5), (attention, name)
        policy.zero_grad()

    holes = attention_mask.clone()
    holes[1, -3] = 0
    with pytest.raises(ValueError, match="ones then zeros"):
        packed_group_logps(policy, input_ids, holes, 5)


def test_grouped_decode_attention_decodes_as_sdpa_does(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grape_hf.training.group_decoding import _left_pad, register_grouped_decode_attention

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    sdpa = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="sdpa").eval()
    grouped = AutoModelForCausalLM.from_pretrained(
        tiny_llama_dir, attn_implementation=register_grouped_decode_attention()
    ).eval()
    assert grouped.config.num_key_value_heads < grouped.config.num_attention_heads  # the case it exists for
    input_ids, attention_mask = _left_pad(prompts(tokenizer, [0, 1, 2]), tokenizer.pad_token_id, "cpu")  # padded
    settings = dict(
        max_new_tokens=6,
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.no_grad():
        expected = sdpa.generate(input_ids=input_ids, attention_mask=attention_mask, **settings)
        got = grouped.generate(input_ids=input_ids, attention_mask=attention_mask, **settings)
    assert torch.equal(got.sequences, expected.sequences)
    for a, b in zip(got.scores, expected.scores):
        assert torch.allclose(a, b, atol=1e-5)
    assert register_grouped_decode_attention() == "grape_grouped_sdpa"  # registering twice is harmless


def test_reserved_layer_matches_dynamic_layer_through_growth_crop_and_reorder():
    from transformers.cache_utils import DynamicLayer

    from grape_hf.rewriting.generation import ReservedLayer

    torch.manual_seed(0)
    plain, reserved = DynamicLayer(), ReservedLayer(reserve=2)
    steps = [torch.randn(3, 2, n, 4) for n in (5, 1, 1, 1, 1, 2, 1)]  # the third single token outgrows the reserve
    for i, states in enumerate(steps):
        expected = plain.update(states, -states)
        got = reserved.update(states, -states)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
        if i == 3:
            plain.crop(-2), reserved.crop(-2)
        if i == 4:
            rows = torch.tensor([2, 0, 0])
            plain.batch_select_indices(rows), reserved.batch_select_indices(rows)
    assert reserved.get_seq_length() == plain.get_seq_length() == 10
    buffer = reserved._buffers[0]
    assert reserved.keys.data_ptr() == buffer.data_ptr() and buffer.shape[-2] > reserved.get_seq_length()
