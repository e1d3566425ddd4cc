"""Method health: each measure on a hand-made case (values computed by hand in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from afarm.methods.health import per_token_loss, response_logps
from afarm.metrics import health
from afarm.models.lm import ModelConfig, build_model
from afarm.models.prompts import format_prompt
from afarm.models.tokenizer import train_tokenizer
from afarm.models.train import collate, tokenize_example


def test_mean_se_by_hand():
    # mean 2.5; deviations -1.5 -0.5 0.5 1.5 -> squares 5.0, / (n - 1) = 5/3; se = sqrt(5/3 / 4) = 0.6454972
    est = health.mean_se([1.0, 2.0, 3.0, 4.0])
    assert (est.value, est.n) == (2.5, 4)
    assert est.se == pytest.approx(math.sqrt(5 / 12), abs=1e-12)
    assert health.mean_se([7.0]).se == 0.0
    with pytest.raises(ValueError):
        health.mean_se([])


def test_implicit_reward_accuracy_on_four_pairs_by_hand():
    # pair: policy (chosen, rejected) and reference (chosen, rejected) sequence log-probs
    #  1: (-10, -12) vs (-11, -11): (+1) - (-1) = +2   -> right
    #  2: (-5, -5)   vs (-4, -6):   (-1) - (+1) = -2   -> wrong
    #  3: (-8, -9)   vs (-8, -9):    0 - 0      =  0   -> tie, 1/2 (the policy has not moved)
    #  4: (-3, -20)  vs (-6, -19):  (+3) - (-1) = +4   -> right
    margins = health.implicit_margins([-10, -5, -8, -3], [-12, -5, -9, -20], [-11, -4, -8, -6], [-11, -6, -9, -19])
    assert margins == [2, -2, 0, 4]
    acc = health.pair_accuracy(margins)
    # outcomes 1, 0, 0.5, 1: mean 0.625; deviations .375 -.625 -.125 .375 -> squares sum 0.6875,
    # / 3 = 0.2291667; se = sqrt(0.2291667 / 4) = 0.2393568
    assert acc.value == 0.625 and acc.se == pytest.approx(0.2393568, abs=1e-7)
    assert health.shifted(acc, 0.5).value == 0.125 and health.shifted(acc, 0.5).se == acc.se
    # a policy equal to its reference is at chance exactly, whatever the pairs
    assert health.pair_accuracy(health.implicit_margins([-1, -2], [-3, -4], [-1, -2], [-3, -4])).value == 0.5
    with pytest.raises(ValueError):
        health.implicit_margins([1], [1, 2], [1], [1])


def test_clustered_standard_error_by_hand():
    # outcomes 1 1 | 0 0 | 1 0 in three prompts of two pairs: mean 0.5; per-cluster sums of deviations
    # +1, -1, 0 -> squares 2; se^2 = 3/2 * 2 / 6^2 = 1/12, se = 0.2886751 (the iid se would be 0.2236068:
    # pairs that agree inside a prompt carry less information than independent ones)
    est = health.clustered_mean_se([1.0, 1.0, 0.0, 0.0, 1.0, 0.0], ["a", "a", "b", "b", "c", "c"])
    assert (est.value, est.n) == (0.5, 6) and est.se == pytest.approx(math.sqrt(1 / 12), abs=1e-12)
    assert health.mean_se([1.0, 1.0, 0.0, 0.0, 1.0, 0.0]).se == pytest.approx(math.sqrt(0.3 / 6), abs=1e-12)
    # one item per cluster: CR1 = n/(n-1) * sum d^2 / n^2 = the usual sd / sqrt(n)
    values = [1.0, 2.0, 3.0, 4.0]
    assert health.clustered_mean_se(values, range(4)).se == pytest.approx(health.mean_se(values).se, abs=1e-12)
    assert health.pair_accuracy([1.0, 1.0, -1.0, -1.0, 1.0, -1.0], clusters="aabbcc").se == pytest.approx(est.se, abs=1e-12)
    with pytest.raises(ValueError):
        health.clustered_mean_se([1.0], ["a", "b"])


def test_paired_delta_and_passes_by_hand():
    # differences 1, 3, 2, 2: mean 2, squares 1 1 0 0 -> 2 / 3; se = sqrt(2/3 / 4) = 0.4082483
    delta = health.paired_delta([5.0, 6.0, 4.0, 3.0], [4.0, 3.0, 2.0, 1.0])
    assert delta.value == 2.0 and delta.se == pytest.approx(0.4082483, abs=1e-7)
    assert health.passes(delta)  # 2 > 2 x 0.408
    assert not health.passes(health.Estimate(0.8, 0.41, 4))  # 0.8 < 0.82
    assert not health.passes(health.Estimate(-1.0, 0.0, 3)) and health.passes(health.Estimate(0.1, 0.0, 3))
    assert health.passes(health.Estimate(0.8, 0.41, 4), k=1.0)
    with pytest.raises(ValueError):
        health.paired_delta([1.0], [1.0, 2.0])


def test_agreement_is_the_label_noise_ceiling_by_hand():
    # clean labels vs the same labels with 1 of 4 flipped: agreement 3/4, the p_label_flip 0.25 ceiling
    clean, noisy = [1, 2, 2, 1], [1, 2, 1, 1]
    est = health.agreement(clean, noisy)
    assert est.value == 0.75 and est.se == pytest.approx(0.25, abs=1e-12)  # sd sqrt(0.25) / sqrt(4)


def test_one_set_of_margins_checked_against_noisy_and_clean_labels_by_hand():
    # margins of output 1 over output 2 on four pairs; clean labels 1 1 2 2, the noisy ones flip pair 2
    margins_12 = [3.0, 1.0, -2.0, 0.5]
    clean, noisy = [1, 1, 2, 2], [1, 2, 2, 2]
    assert health.oriented(margins_12, clean) == [3.0, 1.0, 2.0, -0.5]  # right, right, right, wrong
    assert health.pair_accuracy(health.oriented(margins_12, clean)).value == 0.75
    # the flipped pair turns a right ranking into a wrong one: 2 of 4 -- noise lowers the measured accuracy
    assert health.oriented(margins_12, noisy) == [3.0, -1.0, 2.0, -0.5]
    assert health.pair_accuracy(health.oriented(margins_12, noisy)).value == 0.5
    with pytest.raises(ValueError):
        health.oriented([1.0], [0])  # a tie (0) must be binarized first
    with pytest.raises(ValueError):
        health.oriented([1.0, 2.0], [1])


def test_win_deltas_pair_by_instruction_by_hand():
    base = [{"instruction": "a", "preference": 1.0}, {"instruction": "b", "preference": 1.5},
            {"instruction": "c", "preference": 2.0}, {"instruction": "d", "preference": None}]
    model = [{"instruction": "c", "preference": 2.0}, {"instruction": "a", "preference": 2.0},
             {"instruction": "b", "preference": 1.25}, {"instruction": "z", "preference": 2.0}]
    # matched a, b, c: wins (1, .25, 1) vs (0, .5, 1): differences 1, -.25, 0 in the model's order c, a, b
    delta = health.win_deltas(model, base)
    assert delta.n == 3 and delta.value == pytest.approx(0.25)
    # differences (0, 1, -0.25): deviations -.25 .75 -.5 -> squares .0625 .5625 .25 = .875 / 2 = .4375; se sqrt(.4375/3)
    assert delta.se == pytest.approx(math.sqrt(0.4375 / 3), abs=1e-12)
    with pytest.raises(ValueError):
        health.win_deltas([{"instruction": "q", "preference": 2.0}], base)


def test_mean_chars_by_hand():
    # 3 + 0 + 6 characters over three outputs (a non-ASCII character counts one)
    assert health.mean_chars(["abc", "", "héllo!"]) == pytest.approx(3.0)
    assert health.mean_chars(("ab",)) == 2.0
    with pytest.raises(ValueError):
        health.mean_chars([])


def test_response_logps_equal_the_sft_loss_and_count_response_tokens():
    texts = ["Say hi.", "Hello there, friend.", "Name a fruit.", "An apple."]
    tok = train_tokenizer([format_prompt(t) + t for t in texts] * 4, vocab_size=300)
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position_embeddings=128), tok)
    prompts, responses = [format_prompt("Say hi."), format_prompt("Name a fruit.")], ["Hello there, friend.", "An apple."]
    logps, counts = response_logps(model, tok, prompts, responses, max_length=128, batch_size=1)
    for prompt, response, lp, n in zip(prompts, responses, logps, counts):
        assert n == len(tok(response, add_special_tokens=False)["input_ids"]) + 1  # response + EOS
        batch = collate([tokenize_example(tok, prompt, response, 128, response_only=True)], tok.pad_token_id)
        with torch.no_grad():
            assert lp == pytest.approx(-model(**batch).loss.item() * n, rel=1e-5)  # HF mean loss x tokens
    batched, _ = response_logps(model, tok, prompts, responses, max_length=128, batch_size=2)  # padding changes nothing
    assert batched == pytest.approx(logps, abs=1e-4)
    assert per_token_loss(logps, counts) == pytest.approx([-lp / n for lp, n in zip(logps, counts)])
    # a response truncated away entirely: 0 tokens, logp 0, left out of the per-token loss
    short, n_short = response_logps(model, tok, [prompts[0]], ["Hello"], max_length=3)
    assert (short, n_short) == ([0.0], [0]) and per_token_loss(short, n_short) == []
