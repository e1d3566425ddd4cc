"""Tests of the model layer: prompt, tokenizer, tiny Llama, training loop, generation."""

from __future__ import annotations

import math

import pytest
import torch

from afarm.models.generate import GenerationConfig, _next_tokens, generate, generate_samples, generate_samples_finished
from afarm.models.lm import ModelConfig, build_model, load_model, num_parameters, save_model
from afarm.models.prompts import format_prompt
from afarm.models.tokenizer import train_tokenizer
from afarm.models.train import IGNORE_INDEX, TrainConfig, collate, evaluate_loss, tokenize_example, tokenize_examples, train_causal_lm

PAIRS = [
    ("What is two plus three?", "Five."),
    ("Name a primary color.", "Red is a primary color."),
    ("Translate 'cat' to French.", "Chat."),
    ("Give the opposite of hot.", "Cold."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("Spell the word dog backwards.", "god"),
    ("What is the capital of France?", "Paris is the capital of France."),
    ("Is ice cold or hot?", "Ice is cold."),
]
EXAMPLES = [(format_prompt(q), a) for q, a in PAIRS]
TINY = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=256)
FAST = TrainConfig(learning_rate=1e-2, num_epochs=1, batch_size=4, micro_batch_size=4, warmup_ratio=0.0,
                   lr_scheduler="constant", max_length=128, seed=0, num_threads=1, show_progress=False)
GREEDY = GenerationConfig(max_new_tokens=12, do_sample=False, batch_size=3, seed=0, num_threads=1, show_progress=False)
GREEDY_ONE = GenerationConfig(**{**GREEDY.__dict__, "batch_size": 1})


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([p + r for p, r in EXAMPLES] * 3, vocab_size=400)


@pytest.fixture(scope="module")
def memorized(tok):
    """A tiny model trained until it reproduces the toy responses (and their EOS)."""
    model = build_model(TINY, tok)
    cfg = TrainConfig(**{**FAST.__dict__, "learning_rate": 1e-2, "max_steps": 120, "batch_size": 8, "micro_batch_size": 8})
    stats = train_causal_lm(model, tok, EXAMPLES, cfg, response_only=True)
    return model, stats


# ---------------------------------------------------------------- prompt and tokenizer


def test_format_prompt_matches_upstream_template():
    assert format_prompt("Add 1 and 2.") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nAdd 1 and 2.\n\n### Response:"
    )
    assert format_prompt("Add.", "1 and 2") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nAdd.\n\n### Input:\n1 and 2\n\n### Response:"
    )
    assert format_prompt("Use {braces}", None).count("{braces}") == 1


def test_tokenizer_round_trip_and_determinism(tok):
    for text in ["Héllo wörld!  日本語 🙂\n\n\tend", "", "### Response:Paris is the capital of France."]:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id
        assert tok.decode(ids, skip_special_tokens=True) == text
    specials = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id}
    assert len(specials) == 4 and None not in specials
    assert len(tok) == 400
    again = train_tokenizer([p + r for p, r in reversed(EXAMPLES)] * 3, vocab_size=400)
    assert again.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
    with pytest.raises(ValueError):
        train_tokenizer(["abc"], vocab_size=100)


# ---------------------------------------------------------------- labels


def test_response_only_labels_by_hand(tok):
    prompt, response = "### Response:", "Hi"
    p_ids = tok(prompt)["input_ids"]  # BOS + prompt tokens
    r_ids = tok(response, add_special_tokens=False)["input_ids"]
    ex = tokenize_example(tok, prompt, response, max_length=64, response_only=True)
    assert ex["input_ids"] == p_ids + r_ids + [tok.eos_token_id]
    assert ex["labels"] == [IGNORE_INDEX] * len(p_ids) + r_ids + [tok.eos_token_id]
    full = tokenize_example(tok, prompt, response, max_length=64, response_only=False)
    assert full["labels"] == [IGNORE_INDEX] + full["input_ids"][1:]
    short = tokenize_example(tok, prompt, response, max_length=len(p_ids) + 1, response_only=True)
    assert short["labels"] == [IGNORE_INDEX] * len(p_ids) + r_ids[:1]
    # a response cut off at the generation cap: no EOS to learn after it
    cut = tokenize_example(tok, prompt, response, max_length=64, response_only=True, eos=False)
    assert cut["input_ids"] == p_ids + r_ids and cut["labels"] == [IGNORE_INDEX] * len(p_ids) + r_ids
    data, _ = tokenize_examples(tok, [(prompt, response, False), (prompt, response)], TrainConfig(max_length=64), response_only=True)
    assert data == [cut, ex]  # triples carry the flag; pairs end with EOS

    long = tokenize_example(tok, prompt + " and more words here", response, max_length=64, response_only=True)
    batch = collate([ex, long], tok.pad_token_id)
    n_ex, n_long = len(ex["input_ids"]), len(long["input_ids"])
    assert batch["input_ids"].shape == (2, max(n_ex, n_long))
    # Row 0: labels -100 exactly on prompt and pad positions (right padding), mask 0 exactly on pad.
    is_ignored = (batch["labels"][0] == IGNORE_INDEX).tolist()
    assert is_ignored == [True] * len(p_ids) + [False] * (len(r_ids) + 1) + [True] * (n_long - n_ex)
    assert batch["attention_mask"][0].tolist() == [1] * n_ex + [0] * (n_long - n_ex)
    assert (batch["input_ids"][0, n_ex:] == tok.pad_token_id).all()
    assert batch["labels"][1].tolist() == long["labels"]


# ---------------------------------------------------------------- training


def test_training_lowers_loss_and_schedule(tok, memorized):
    model, stats = memorized
    fresh = build_model(TINY, tok)
    before = evaluate_loss(fresh, tok, EXAMPLES, FAST, response_only=True)["loss"]
    after = evaluate_loss(model, tok, EXAMPLES, FAST, response_only=True)["loss"]
    assert before > math.log(len(tok)) - 1.0  # an untrained model is near uniform
    assert after < 0.2 * before
    assert stats["num_steps"] == len(stats["losses"]) == 120
    assert stats["losses"][-1] < stats["losses"][0]


def test_warmup_cosine_learning_rates(tok):
    model = build_model(TINY, tok)
    cfg = TrainConfig(**{**FAST.__dict__, "learning_rate": 1e-3, "max_steps": 10, "batch_size": 2, "micro_batch_size": 2,
                         "warmup_ratio": 0.1, "lr_scheduler": "cosine"})
    stats = train_causal_lm(model, tok, EXAMPLES, cfg, response_only=True)
    # ceil(0.1 * 10) = 1 warmup step (lr 0 at step 0), then cosine from 1e-3 to 0 over 9 steps.
    expected = [0.0] + [1e-3 * 0.5 * (1 + math.cos(math.pi * k / 9)) for k in range(9)]
    assert stats["learning_rates"] == pytest.approx(expected, abs=1e-12)
    assert stats["num_tokens"] > 0 and stats["dropped_examples"] == 0


def test_evaluate_loss_is_token_weighted_mean(tok):
    model = build_model(TINY, tok)
    pair = EXAMPLES[:2]
    losses, counts = [], []
    for prompt, response in pair:
        ex = tokenize_example(tok, prompt, response, 128, response_only=True)
        batch = collate([ex], tok.pad_token_id)
        with torch.no_grad():
            losses.append(model(**batch).loss.item())  # HF mean over this example's label tokens
        counts.append(sum(label != IGNORE_INDEX for label in ex["labels"][1:]))
    got = evaluate_loss(model, tok, pair, FAST, response_only=True)
    assert got["num_tokens"] == sum(counts)
    assert got["loss"] == pytest.approx((losses[0] * counts[0] + losses[1] * counts[1]) / sum(counts), rel=1e-5)


def _train_and_save(tok, path, seed):
    model = build_model(ModelConfig(**{**TINY.__dict__, "seed": seed}), tok)
    cfg = TrainConfig(**{**FAST.__dict__, "seed": seed, "max_steps": 4, "batch_size": 4,
                         "micro_batch_size": 2, "group_by_length": True})
    train_causal_lm(model, tok, EXAMPLES, cfg, response_only=False)
    save_model(model, tok, path)
    return (path / "model.safetensors").read_bytes()


def test_training_is_deterministic(tok, tmp_path):
    first = _train_and_save(tok, tmp_path / "a", seed=3)
    second = _train_and_save(tok, tmp_path / "b", seed=3)
    other = _train_and_save(tok, tmp_path / "c", seed=4)
    assert first == second
    assert first != other
    for name in ["config.json", "tokenizer.json", "tokenizer_config.json"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


# ---------------------------------------------------------------- save / load / pretrained


def test_save_load_round_trip_and_pretrained_path(tok, tmp_path):
    model = build_model(TINY, tok)
    assert 10_000 < num_parameters(model) < 100_000
    save_model(model, tok, tmp_path / "ckpt")
    save_model(model, tok, tmp_path / "ckpt")  # overwriting is atomic and leaves no temporary folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    batch = tok(["### Response: hello", "Name a primary color."], return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = model(**batch).logits
        loaded, loaded_tok = load_model(tmp_path / "ckpt")
        assert torch.equal(loaded(**batch).logits, expected)
        assert loaded_tok("Héllo 🙂")["input_ids"] == tok("Héllo 🙂")["input_ids"]
        # The paper-scale path: from_pretrained on a folder (or hub id), here a local tiny checkpoint.
        again = build_model(ModelConfig(pretrained=str(tmp_path / "ckpt")), loaded_tok)
        assert torch.equal(again(**batch).logits, expected)


# ---------------------------------------------------------------- generation


def test_greedy_batched_equals_unbatched_in_input_order(tok):
    model = build_model(TINY, tok)
    prompts = [p for p, _ in EXAMPLES] + ["Hi", format_prompt("A much longer instruction, " * 4)]
    batched = generate(model, tok, prompts, GREEDY)
    one_by_one = [generate(model, tok, [p], GREEDY_ONE)[0] for p in prompts]
    assert batched == one_by_one
    assert any(batched)
    # Reference: transformers' own greedy generate, one prompt at a time.
    for prompt, ours in zip(prompts[:3], batched):
        enc = tok(prompt, return_tensors="pt")
        out = model.generate(**enc, max_new_tokens=12, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
        assert tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip() == ours


def test_generation_stops_at_eos(tok, memorized):
    model, _ = memorized
    prompts = [p for p, _ in EXAMPLES]
    cfg = GenerationConfig(**{**GREEDY.__dict__, "max_new_tokens": 40, "batch_size": 8})
    outputs = generate(model, tok, prompts, cfg)
    assert outputs == [r for _, r in EXAMPLES]  # exactly the response: nothing after its EOS
    # A model whose every next token is EOS returns empty strings.
    hook = model.lm_head.register_forward_hook(lambda m, i, out: out.index_fill(-1, torch.tensor([tok.eos_token_id]), 1e4))
    try:
        assert generate(model, tok, prompts[:3], cfg) == ["", "", ""]
    finally:
        hook.remove()


def test_finished_flags_mark_the_samples_cut_off_at_the_cap(tok, memorized):
    model, _ = memorized
    prompts = [p for p, _ in EXAMPLES]
    cfg = GenerationConfig(**{**GREEDY.__dict__, "max_new_tokens": 40, "batch_size": 8, "num_samples": 1})
    full, done = generate_samples_finished(model, tok, prompts, cfg)
    assert [s[0] for s in full] == [r for _, r in EXAMPLES] and all(f == [True] for f in done)  # each reached its EOS
    assert generate_samples(model, tok, prompts, cfg) == full
    # a cap of 2 tokens: every response longer than 2 tokens is cut off (not finished) and is the full one's prefix
    capped, done = generate_samples_finished(model, tok, prompts, GenerationConfig(**{**cfg.__dict__, "max_new_tokens": 2}))
    for (_, response), text, flags in zip(EXAMPLES, capped, done):
        n = len(tok(response, add_special_tokens=False)["input_ids"])
        assert flags == [n < 2] and response.startswith(text[0])
    assert not all(f[0] for f in done)


def test_sampling_is_seeded_and_order_independent(tok):
    model = build_model(TINY, tok)
    prompts = [p for p, _ in EXAMPLES[:4]]
    cfg = GenerationConfig(max_new_tokens=8, temperature=1.0, top_p=0.9, batch_size=1, num_samples=3, seed=1,
                           num_threads=1, show_progress=False)
    first = generate_samples(model, tok, prompts, cfg)
    assert first == generate_samples(model, tok, prompts, cfg)
    assert generate_samples(model, tok, prompts[::-1], cfg) == first[::-1]
    assert all(len(s) == 3 for s in first) and len({s for row in first for s in row}) > 4
    other_seed = generate_samples(model, tok, prompts, GenerationConfig(**{**cfg.__dict__, "seed": 2}))
    assert other_seed != first
    with pytest.raises(ValueError):
        generate(model, tok, prompts, cfg)


def test_top_p_keeps_the_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    cfg = GenerationConfig(top_p=0.7, temperature=1.0, do_sample=True)
    gen = [torch.Generator().manual_seed(0)]
    draws = [int(_next_tokens(logits, cfg, gen)) for _ in range(2000)]
    assert set(draws) == {0, 1}  # 0.5 < 0.7 <= 0.5 + 0.3: the nucleus is tokens 0 and 1
    assert draws.count(0) / 2000 == pytest.approx(0.5 / 0.8, abs=0.04)
    full = [int(_next_tokens(logits, GenerationConfig(top_p=1.0), gen)) for _ in range(4000)]
    assert [full.count(k) / 4000 for k in range(4)] == pytest.approx([0.5, 0.3, 0.15, 0.05], abs=0.03)
    assert int(_next_tokens(logits, GenerationConfig(do_sample=False), gen)) == 0


def test_cached_forward_decodes_as_a_full_forward_under_the_models_own_cache_name(tok, recwarn):
    """cached_forward passes the KV cache under the name this transformers' forward takes (``cache`` in 5.x,
    ``past_key_values`` before): token-by-token decoding from the cache gives the logits of one full pass, and no
    deprecation warning about the cache's name is raised (the old name goes in transformers 5.40)."""
    from afarm.models.lm import cached_forward

    model = build_model(TINY, tok).eval()
    ids = torch.tensor([tok("the cat sat on the mat")["input_ids"]])
    with torch.no_grad():
        full = model(input_ids=ids).logits[0]
        out, cache = cached_forward(model, None, input_ids=ids[:, :3])
        steps = [out.logits[0, -1]]
        for t in range(3, ids.size(1)):
            out, cache = cached_forward(model, cache, input_ids=ids[:, t : t + 1], position_ids=torch.tensor([[t]]))
            steps.append(out.logits[0, -1])
    assert cache is not None
    torch.testing.assert_close(torch.stack(steps), full[2:], atol=1e-5, rtol=1e-5)
    assert not [w for w in recwarn if "past_key_values" in str(w.message)]
