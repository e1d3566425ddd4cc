"""DPO: the loss and its gradient by hand, sequence log-probs by hand, a seeded smoke run, the stage."""

from __future__ import annotations

import csv
import json
import math
from types import SimpleNamespace

import pytest
import torch

from afarm.methods.dpo import DPOConfig, collate_pairs, dpo_loss, preference_pairs, sequence_logps, tokenize_pairs, train_dpo
from afarm.models.lm import ModelConfig, build_model, load_model, save_model
from afarm.models.prompts import format_prompt
from afarm.models.tokenizer import train_tokenizer
from afarm.models.train import IGNORE_INDEX, TrainConfig, collate, tokenize_example

TINY = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=256)
TOPICS = ["cats", "dogs", "rain", "bread", "music", "trees", "boats", "tea", "stars", "chess", "snow", "bees"]


def easy_preferences(n: int = 48) -> list[dict]:
    """Chosen answers are polite sentences, rejected ones a repeated word; sides alternate."""
    records = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        good, bad = f"Here is a short note about {topic}.", "no no no no"
        first_good = i % 2 == 0
        records.append({
            "instruction": f"Tell me about {topic} ({i}).", "input": "",
            "output_1": good if first_good else bad, "output_2": bad if first_good else good,
            "preference": 1 if first_good else 2, "annotator": "fixture",
        })
    return records


@pytest.fixture(scope="module")
def tok():
    texts = [format_prompt(r["instruction"]) + r["output_1"] + r["output_2"] for r in easy_preferences()]
    return train_tokenizer(texts * 2, vocab_size=400)


def test_dpo_loss_by_hand():
    beta = 0.5
    pc = torch.tensor([-1.0, -2.0], requires_grad=True)
    pr = torch.tensor([-3.0, -1.0], requires_grad=True)
    rc = torch.tensor([-2.0, -2.0])
    rr = torch.tensor([-2.0, -2.0])
    loss, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta)
    # rewards: chosen 0.5*(1, 0) = (0.5, 0); rejected 0.5*(-1, 1) = (-0.5, 0.5); margins (1, -0.5)
    assert chosen.tolist() == [0.5, 0.0] and rejected.tolist() == [-0.5, 0.5]
    # loss = mean(log(1 + e^-1), log(1 + e^0.5)) = mean(0.3132616875, 0.9740769842)
    assert loss.item() == pytest.approx(0.6436693359, abs=1e-7)
    loss.backward()
    # dL/d(policy chosen) = -(beta / N) * sigmoid(-margin): negative, so raising the chosen
    # log-prob lowers the loss; the rejected gradient is its mirror image.
    sig = [1 / (1 + math.exp(1.0)), 1 / (1 + math.exp(-0.5))]
    assert pc.grad.tolist() == pytest.approx([-0.25 * sig[0], -0.25 * sig[1]], abs=1e-7)
    assert pr.grad.tolist() == pytest.approx([0.25 * sig[0], 0.25 * sig[1]], abs=1e-7)
    assert (pc.grad < 0).all() and (pr.grad > 0).all()
    assert not chosen.requires_grad  # logged rewards are detached


def test_dpo_loss_is_log2_when_policy_equals_reference():
    x = torch.tensor([-5.0, -7.0, -1.0])
    loss, chosen, rejected = dpo_loss(x, x + 1, x, x + 1, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2)) and chosen.abs().max() == 0 and rejected.abs().max() == 0


class FixedLogits(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, input_ids, attention_mask, logits_to_keep=0):
        self.kept = logits_to_keep
        return SimpleNamespace(logits=self.logits[:, -logits_to_keep:])  # HF semantics: the last k positions


def test_sequence_logps_masks_prompt_and_padding_by_hand():
    # One row of 4 positions over a 3-token vocabulary. Position t predicts token t+1.
    logits = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [5.0, 5.0, 5.0]]])
    batch = {
        "input_ids": torch.tensor([[0, 1, 0, 1]]),
        "attention_mask": torch.tensor([[1, 1, 1, 0]]),
        "labels": torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 0, IGNORE_INDEX]]),  # prompt, prompt, response, pad
    }
    # Only label 0 at position 2, predicted by the logits at position 1: log(e / (e + 2)).
    expected = 1.0 - math.log(math.e + 2)
    model = FixedLogits(logits)
    assert sequence_logps(model, batch).tolist() == pytest.approx([expected], abs=1e-6)
    assert model.kept == 3  # positions 1..3: the prompt position 0 needs no vocabulary projection
    batch["labels"] = torch.tensor([[IGNORE_INDEX, 1, 0, 1]])  # now also tokens 1 and 3 (pad's label counts if set)
    expected_all = math.log(1 / 3) + expected + (2.0 - math.log(2 + math.exp(2)))
    assert sequence_logps(model, batch).tolist() == pytest.approx([expected_all], abs=1e-6)
    assert model.kept == 4


def test_sequence_logps_matches_the_sft_loss_and_ignores_padding(tok):
    model = build_model(TINY, tok)
    short = tokenize_example(tok, format_prompt("Hi"), "Hello there.", 128, response_only=True)
    long = tokenize_example(tok, format_prompt("Tell me a story about boats."), "Once upon a time a boat sailed far.", 128, response_only=True)
    with torch.no_grad():
        alone = collate([short], tok.pad_token_id)
        n_tokens = int((alone["labels"] != IGNORE_INDEX).sum())
        assert n_tokens == len(tok("Hello there.", add_special_tokens=False)["input_ids"]) + 1  # response + EOS
        logp = sequence_logps(model, alone)
        assert logp.item() == pytest.approx(-model(**alone).loss.item() * n_tokens, rel=1e-5)
        padded = sequence_logps(model, collate([short, long], tok.pad_token_id))  # right padding of the short row
        assert padded[0].item() == pytest.approx(logp.item(), abs=1e-4)
        assert padded[1].item() == pytest.approx(sequence_logps(model, collate([long], tok.pad_token_id)).item(), abs=1e-4)


def test_preference_pairs_orient_and_drop_ties():
    recs = [
        {"instruction": "a", "input": "", "output_1": "x", "output_2": "y", "preference": 2, "annotator": "t"},
        {"instruction": "b", "input": "ctx", "output_1": "x", "output_2": "y", "preference": 1, "annotator": "t"},
        {"instruction": "c", "input": "", "output_1": "x", "output_2": "y", "preference": 1.5, "annotator": "t"},
    ]
    pairs, ties = preference_pairs(recs)
    assert ties == 1
    assert pairs == [(format_prompt("a"), "y", "x"), (format_prompt("b", "ctx"), "x", "y")]


def _dpo_cfg(**train) -> DPOConfig:
    base = dict(learning_rate=3e-3, num_epochs=6, batch_size=8, micro_batch_size=8, warmup_ratio=0.0,
                lr_scheduler="constant", max_length=96, seed=0, num_threads=1, show_progress=False)
    return DPOConfig(beta=0.1, eval_size=12, train=TrainConfig(**{**base, **train}))


def test_dpo_smoke_raises_margin_and_accuracy_and_is_deterministic(tok):
    prefs = easy_preferences()
    runs = []
    for _ in range(2):
        policy, reference = build_model(TINY, tok), build_model(TINY, tok)
        stats = train_dpo(policy, reference, tok, prefs, _dpo_cfg())
        runs.append((stats, policy))
    stats, policy = runs[0]
    assert stats["num_pairs"] == 36 and stats["num_eval_pairs"] == 12 and stats["num_steps"] == 27  # ceil(6 * 36 / 8)
    before, after = stats["eval_before"], stats["eval_after"]
    assert before["reward_margin"] == 0 and before["accuracy"] == 0 and before["loss"] == pytest.approx(math.log(2))
    assert after["accuracy"] == 1.0 and after["reward_margin"] > 1.0 and after["loss"] < 0.3
    assert stats["reward_margins"][-1] > stats["reward_margins"][0] and stats["accuracies"][-1] == 1.0
    assert stats["losses"][0] == pytest.approx(math.log(2), abs=1e-6)  # first step: policy == reference
    # the frozen reference did not move; the same seed gives the same weights
    assert all(not p.requires_grad for p in reference.parameters())
    for a, b in zip(runs[0][1].parameters(), runs[1][1].parameters()):
        assert torch.equal(a, b)
    assert runs[0][0]["losses"] == runs[1][0]["losses"]


def test_tokenize_pairs_drops_truncated(tok):
    pairs = [(format_prompt("x" * 200), "yes", "no"), (format_prompt("a"), "yes", "no")]
    data, dropped = tokenize_pairs(tok, pairs, max_length=40)
    assert dropped == 1 and len(data) == 1
    batch = collate_pairs(data, tok.pad_token_id)
    assert batch["chosen"]["input_ids"].shape[0] == batch["rejected"]["input_ids"].shape[0] == 1
    assert batch["chosen"]["input_ids"][0, -1] == tok.eos_token_id  # each side padded to its own width only


def test_dpo_stage_end_to_end(tok, tmp_path):
    from afarm.stages.dpo import arguments, main

    save_model(build_model(TINY, tok), tok, tmp_path / "sft")
    (tmp_path / "prefs.json").write_text(json.dumps(easy_preferences(24)))
    params = {"scale": "tiny", "_path": "params.yaml", "generate": {"max_new_tokens": 8, "do_sample": False}, "dpo": {
        "beta": 0.1, "eval_size": {"tiny": 4, "paper": 500},
        "train": {"learning_rate": 3e-3, "num_epochs": 1, "batch_size": 4, "micro_batch_size": 4, "max_length": 96,
                  "seed": 0, "num_threads": 1, "show_progress": False},
    }}
    args = arguments().parse_args(["--sft", str(tmp_path / "sft"), "--preferences", str(tmp_path / "prefs.json"),
                                   "--out", str(tmp_path / "dpo_sim"), "--metrics", str(tmp_path / "m.json"), "--log", str(tmp_path / "curve.csv")])
    main(args, params)
    metrics = json.loads((tmp_path / "m.json").read_text())
    curve = list(csv.DictReader((tmp_path / "curve.csv").open()))  # the training curve: a row per optimizer step
    assert [int(r["step"]) for r in curve] == [1, 2, 3, 4, 5]
    assert list(curve[0]) == ["step", "loss", "learning_rate", "grad_norm", "accuracy", "reward_margin", "chosen_reward", "rejected_reward"]
    assert float(curve[0]["loss"]) == pytest.approx(math.log(2), abs=1e-6) and float(curve[0]["reward_margin"]) == 0  # policy == reference
    assert metrics["num_pairs"] == 20 and metrics["num_eval_pairs"] == 4 and metrics["num_steps"] == 5 and metrics["beta"] == 0.1
    assert metrics["eval_before"]["accuracy"] == 0 and metrics["eval_after"]["reward_margin"] > 0
    trained, _ = load_model(tmp_path / "dpo_sim")
    start, _ = load_model(tmp_path / "sft")
    assert any(not torch.equal(a, b) for a, b in zip(trained.parameters(), start.parameters()))
