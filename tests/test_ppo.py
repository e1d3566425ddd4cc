"""PPO: the math by hand on tiny tensors, the sampler's masks, a seeded smoke run that raises a toy
reward, and the stage end to end on toy models."""

from __future__ import annotations

import copy
import csv
import json
import math
from types import SimpleNamespace

import pytest
import torch

from afarm.methods.ppo import (
    AdaptiveKLController,
    PPOConfig,
    PromptStream,
    ValueModel,
    approx_kl,
    entropy_from_logits,
    gae,
    kl_penalized_rewards,
    ppo_policy_loss,
    ppo_value_loss,
    sample_responses,
    train_ppo,
    whiten,
)
from afarm.methods.reward_model import init_reward_model, save_reward_model
from afarm.models.lm import ModelConfig, build_model, load_model, save_model
from afarm.models.prompts import format_prompt
from afarm.models.tokenizer import train_tokenizer

TOY = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=256)
PROMPTS = [format_prompt(f"Say something about item {i}.") for i in range(64)]
# Toy run: small batches, a large learning rate, no KL, constant schedule, short responses.
FAST = PPOConfig(
    max_steps=10, rollout_batch_size=32, rollout_micro_batch_size=32, step_batch_size=16, step_micro_batch_size=16,
    learning_rate=1e-2, warmup_steps=0, lr_scheduler="constant", response_len=10, kl_coef=0.0, seed=0,
    num_threads=1, show_progress=False,
)


def count_e(prompts, responses):
    """Toy reward: how many letters 'e' the response has."""
    return torch.tensor([float(r.count("e")) for r in responses])


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([p + f" Item {i} is fine and red." for i, p in enumerate(PROMPTS[:40])], vocab_size=300)


def models(tok):
    policy = build_model(TOY, tok)
    return policy, copy.deepcopy(policy), ValueModel.from_reward_model(init_reward_model(policy, tok, seed=0))


# ---------------------------------------------------------------- math by hand


def test_whiten_by_hand():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    std = math.sqrt(1.25)  # population std of 1, 2, 3, 4 (mean 2.5)
    expected = torch.tensor([[-1.5, -0.5], [0.5, 1.5]]) / std
    assert torch.allclose(whiten(x), expected, atol=1e-6)
    assert torch.allclose(whiten(x, shift_mean=False), expected + 2.5, atol=1e-6)
    # Masked entries take no part in the statistics and come out 0.
    padded = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, -7.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    out = whiten(padded, mask=mask)
    assert torch.allclose(out[:, :2], expected, atol=1e-6) and torch.all(out[:, 2] == 0)


def test_gae_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 1.0, 1.5]])
    mask = torch.ones(1, 3)
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # t=2: delta = 2 - 1.5 = 0.5;                 A2 = 0.5
    # t=1: delta = 0 + 0.9 * 1.5 - 1.0 = 0.35;    A1 = 0.35 + 0.72 * 0.5 = 0.71
    # t=0: delta = 1 + 0.9 * 1.0 - 0.5 = 1.4;     A0 = 1.4 + 0.72 * 0.71 = 1.9112
    assert torch.allclose(adv, torch.tensor([[1.9112, 0.71, 0.5]]), atol=1e-6)
    assert torch.allclose(ret, torch.tensor([[2.4112, 1.71, 2.0]]), atol=1e-6)
    # gamma = lam = 1 on a right-padded row: returns are the reward-to-go, padding ignored.
    adv, ret = gae(torch.tensor([[0.0, 0.0, 1.0, 999.0]]), torch.tensor([[0.2, 0.4, 0.6, 999.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]]), 1.0, 1.0)
    assert torch.allclose(adv, torch.tensor([[0.8, 0.6, 0.4, 0.0]]), atol=1e-6)
    assert torch.allclose(ret, torch.tensor([[1.0, 1.0, 1.0, 0.0]]), atol=1e-6)
    # lam = 0: one-step TD errors.
    adv, _ = gae(rewards, values, mask, gamma=0.9, lam=0.0)
    assert torch.allclose(adv, torch.tensor([[1.4, 0.35, 0.5]]), atol=1e-6)


def test_kl_penalty_and_score_on_last_token_by_hand():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -3.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # row 2 ended after 2 tokens
    rewards, kl = kl_penalized_rewards(torch.tensor([2.0, -1.0]), logprobs, ref, mask, kl_coef=0.1)
    # kl = max(logp - ref, 0): row 1 [0.5, 0, 0]; row 2 [1, 0, (masked)].
    assert torch.allclose(kl, torch.tensor([[0.5, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    assert torch.allclose(rewards, torch.tensor([[-0.05, 0.0, 2.0], [-0.1, -1.0, 0.0]]))


def test_clipped_policy_loss_by_hand():
    ratios = torch.tensor([[1.5, 0.5, 1.1, 0.7]])
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    loss, clipfrac = ppo_policy_loss(ratios.log(), torch.zeros(1, 4), advantages, torch.ones(1, 4), clip=0.2)
    # per token max(-A r, -A clip(r, 0.8, 1.2)): max(-1.5, -1.2) = -1.2 (clipped), max(-0.5, -0.8) = -0.5,
    # max(1.1, 1.1) = 1.1, max(0.7, 0.8) = 0.8 (clipped)  -> mean 0.05, half clipped
    assert loss.item() == pytest.approx(0.05, abs=1e-6)
    assert clipfrac.item() == pytest.approx(0.5)
    # A masked token does not count.
    loss, _ = ppo_policy_loss(ratios.log(), torch.zeros(1, 4), advantages, torch.tensor([[1.0, 1.0, 0.0, 0.0]]), clip=0.2)
    assert loss.item() == pytest.approx((-1.2 - 0.5) / 2, abs=1e-6)


def test_clipped_value_loss_by_hand():
    values, old, returns = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, 0.5]]), torch.tensor([[1.2, 0.0]])
    loss, clipfrac = ppo_value_loss(values, old, returns, torch.ones(1, 2), clip=0.2)
    # token 1: clipped 0.7 -> max(0.04, 0.25) = 0.25 (clipped); token 2: clipped 0.7 -> max(4, 0.49) = 4
    assert loss.item() == pytest.approx(0.5 * (0.25 + 4.0) / 2)
    assert clipfrac.item() == pytest.approx(0.5)


def test_kl_estimator_entropy_and_controller_by_hand():
    assert approx_kl(torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])).item() == pytest.approx(0.5 * (0.25 + 1.0) / 2)
    p = torch.tensor([0.25, 0.75])
    assert entropy_from_logits(p.log()).item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), abs=1e-6)
    assert entropy_from_logits(torch.zeros(4)).item() == pytest.approx(math.log(4), abs=1e-6)
    ctl = AdaptiveKLController(0.1, target=6.0, k_beta=0.1, adaptive=True)
    ctl.step(12.0)  # error clipped to 0.2 -> x 1.02
    assert ctl.value == pytest.approx(0.102)
    ctl.step(6.6)  # error 0.1 -> x 1.01
    assert ctl.value == pytest.approx(0.102 * 1.01)
    fixed = AdaptiveKLController(0.1, 6.0, 0.1, adaptive=False)
    fixed.step(100.0)
    assert fixed.value == 0.1


def test_upstream_defaults():
    cfg = PPOConfig()
    assert (cfg.kl_coef, cfg.gamma, cfg.lam, cfg.cliprange, cfg.cliprange_value, cfg.vf_coef) == (0.0067, 1.0, 1.0, 0.2, 0.2, 0.1)
    assert (cfg.rollout_batch_size, cfg.step_batch_size, cfg.noptepochs, cfg.learning_rate, cfg.temperature) == (512, 256, 2, 1e-5, 1.0)


def test_prompt_stream_is_seeded_and_covers_each_epoch():
    a, b = PromptStream(10, seed=3), PromptStream(10, seed=3)
    first = [a.take(4) for _ in range(4)]
    assert first == [b.take(4) for _ in range(4)]
    assert len(set(first[0] + first[1])) == 8  # no repeats within an epoch (2 left over are dropped)


# ---------------------------------------------------------------- sampler and value model


class ScriptedLM(torch.nn.Module):
    """Emits token 5 until row i has produced i tokens, then EOS (2); ignores the cache."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.generated = None

    def forward(self, input_ids, attention_mask, position_ids, use_cache=True, past_key_values=None, logits_to_keep=None):
        n = input_ids.size(0)
        self.generated = torch.zeros(n, dtype=torch.long) if past_key_values is None else self.generated + 1
        logits = torch.full((n, 1, 8), -1e9)
        for i in range(n):
            logits[i, 0, 2 if self.generated[i] >= i + 1 else 5] = 0.0
        return SimpleNamespace(logits=logits, past_key_values="cache")


def test_sampler_masks_include_eos_and_pad_after_it():
    queries = torch.tensor([[0, 1, 7], [1, 7, 7], [0, 0, 1]])
    mask = (queries != 0).long()
    responses, rmask, logprobs, entropies = sample_responses(ScriptedLM(), queries, mask, 6, 1.0, eos_id=2, pad_id=0, generator=torch.Generator().manual_seed(0))
    m = rmask.bool()
    assert torch.all(logprobs[m] == 0) and torch.all(entropies[m] == 0)  # one-hot choices
    assert responses.tolist() == [[5, 2, 0, 0], [5, 5, 2, 0], [5, 5, 5, 2]]
    assert rmask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    # Cut at max_new_tokens: no EOS, every token counts.
    responses, rmask, _, _ = sample_responses(ScriptedLM(), queries, mask, 2, 1.0, 2, 0, torch.Generator())
    assert responses.tolist() == [[5, 2], [5, 5], [5, 5]] and rmask.tolist() == [[1, 1], [1, 1], [1, 1]]


def test_sampling_logprobs_equal_a_full_forward_pass(tok):
    from afarm.methods.ppo import left_pad, response_logits, token_logprobs

    policy = build_model(TOY, tok)
    queries, qmask = left_pad([tok(p)["input_ids"] for p in (PROMPTS[0], PROMPTS[11], format_prompt("Hi."))], tok.pad_token_id)
    responses, rmask, logprobs, entropies = sample_responses(policy, queries, qmask, 12, 0.7, tok.eos_token_id, tok.pad_token_id, torch.Generator().manual_seed(0))
    logits = response_logits(policy, torch.cat([queries, responses], 1), torch.cat([qmask, rmask], 1), queries.size(1), 0.7)
    m = rmask.bool()
    assert torch.allclose(logprobs[m], token_logprobs(logits, responses)[m], atol=1e-4)
    assert torch.allclose(entropies[m], entropy_from_logits(logits)[m], atol=1e-4)


def test_value_model_copies_the_reward_backbone_with_a_zero_head(tok):
    rm = init_reward_model(build_model(TOY, tok), tok, seed=0)
    value = ValueModel.from_reward_model(rm)
    ids = torch.tensor([[1, 40, 41, 42]])
    assert torch.all(value(ids, torch.ones_like(ids), torch.arange(4)[None]) == 0)
    for (name, a), b in zip(rm.base_model.named_parameters(), value.backbone.parameters()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr(), name
    copied = ValueModel.from_reward_model(rm, "reward")
    assert torch.equal(copied.head.weight, rm.score.weight)


# ---------------------------------------------------------------- training


def test_ppo_raises_a_toy_reward(tok):
    policy, ref, value = models(tok)
    log = train_ppo(policy, ref, value, count_e, tok, PROMPTS, FAST)["log"]
    scores = [r["score"] for r in log]
    assert len(log) == 10
    assert sum(scores[-3:]) / 3 > sum(scores[:3]) / 3 + 2.0, scores
    assert log[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # the policy starts at the reference
    assert log[-1]["kl"] > 1.0 and log[-1]["entropy"] < log[0]["entropy"]  # it moved away and sharpened
    assert all(math.isfinite(r["policy_loss"]) and math.isfinite(r["value_loss"]) for r in log)


def test_kl_penalty_keeps_the_policy_closer_and_runs_are_deterministic(tok):
    cfg = PPOConfig(**{**FAST.__dict__, "max_steps": 5})
    runs = []
    for kl_coef in (0.0, 0.0, 1.0):
        policy, ref, value = models(tok)
        log = train_ppo(policy, ref, value, count_e, tok, PROMPTS, PPOConfig(**{**cfg.__dict__, "kl_coef": kl_coef}))["log"]
        runs.append(([{k: v for k, v in r.items() if k != "seconds"} for r in log], policy.state_dict()))
    (log_a, state_a), (log_b, state_b), (log_kl, _) = runs
    assert log_a == log_b and all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert log_kl[-1]["kl"] < log_a[-1]["kl"]
    # The shaped reward is the score minus kl_coef times the summed KL.
    assert log_kl[-1]["shaped_reward"] == pytest.approx(log_kl[-1]["score"] - 1.0 * log_kl[-1]["kl"], abs=1e-4)


def test_batch_sizes_must_divide():
    with pytest.raises(ValueError, match="multiple"):
        train_ppo(None, None, None, count_e, None, PROMPTS, PPOConfig(rollout_batch_size=24, step_batch_size=16))


# ---------------------------------------------------------------- stage


def toy_inputs(tok, tmp_path):
    sft = build_model(TOY, tok)
    save_model(sft, tok, tmp_path / "sft")
    save_reward_model(init_reward_model(sft, tok, seed=0), tok, tmp_path / "rm")
    rows = [{"instruction": f"Say something about item {i}.", "input": "", "output": "x"} for i in range(40)]
    (tmp_path / "unlabeled.json").write_text(json.dumps(rows))


def test_ppo_stage_end_to_end(tok, tmp_path):
    from afarm.stages import ppo as stage

    toy_inputs(tok, tmp_path)
    section = {
        "kl_coef": {"tiny": {"sim": 0.05, "human": 0.02}, "paper": {"sim": 0.0067, "human": 0.02}},
        "max_steps": 2, "rollout_batch_size": 16, "rollout_micro_batch_size": 16, "step_batch_size": 8,
        "step_micro_batch_size": 8, "response_len": 8, "learning_rate": 1e-3, "warmup_steps": 0,
        "seed": 0, "num_threads": 1, "show_progress": False,
    }
    params = {"scale": "tiny", "_path": "params.yaml", "ppo": section, "generate": {"max_new_tokens": 8, "do_sample": False}}
    argv = [
        "--sft", str(tmp_path / "sft"), "--reward_model", str(tmp_path / "rm"), "--unlabeled", str(tmp_path / "unlabeled.json"),
        "--out", str(tmp_path / "ppo"), "--metrics", str(tmp_path / "m.json"), "--plot", str(tmp_path / "p.png"),
        "--log", str(tmp_path / "log.csv"),
    ]
    stage.main(stage.arguments().parse_args([*argv, "--preference_set", "sim"]), params)
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["num_steps"] == 2 and metrics["kl_coef"] == 0.05 and metrics["num_prompts"] == 40
    assert {"initial_score", "final_score", "final_kl", "final_entropy"} <= set(metrics)
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2] and {"score", "kl", "entropy", "policy_loss", "value_loss", "learning_rate", "grad_norm"} <= set(rows[0])
    model, loaded_tok = load_model(tmp_path / "ppo")
    assert len(loaded_tok) == len(tok) and model.config.vocab_size == build_model(TOY, tok).config.vocab_size
    # A per-set kl_coef without the set named is bad input.
    from afarm.io import InputError

    with pytest.raises(InputError, match="kl_coef"):
        stage.main(stage.arguments().parse_args(argv), params)
