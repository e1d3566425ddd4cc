"""Reward model: Bradley-Terry loss by hand, reward at the last real token, a seeded smoke run, the stage."""

from __future__ import annotations

import csv
import json
import math
import random

import pytest
import torch

from afarm.data.preferences import read_preferences, write
from afarm.io import InputError
from afarm.methods.reward_model import (
    RewardModelConfig,
    bradley_terry_loss,
    encode,
    init_reward_model,
    last_token_index,
    load_reward_model,
    pad_batch,
    position_ids,
    save_reward_model,
    score,
    sequence_rewards,
    split_held_out,
    train_reward_model,
)
from afarm.models.lm import ModelConfig, build_model, save_model
from afarm.models.prompts import format_prompt
from afarm.models.tokenizer import train_tokenizer
from afarm.stages import reward_model as stage

TOY = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=128)
WORDS = "apple river stone cloud green quick table music light paper glass water".split()
KEYWORD = "banana"


def keyword_preferences(n: int, seed: int = 0) -> list[dict]:
    """An easy preference: of two short answers, the one that contains KEYWORD wins."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        plain = rng.choices(WORDS, k=rng.randint(3, 6))
        good = plain[:]
        good.insert(rng.randint(0, len(good)), KEYWORD)
        bad = rng.choices(WORDS, k=len(good))
        first_good = rng.random() < 0.5
        records.append({
            "instruction": f"Write words about {rng.choice(WORDS)} number {i}.",
            "input": "",
            "output_1": " ".join(good if first_good else bad),
            "output_2": " ".join(bad if first_good else good),
            "preference": 1 if first_good else 2,
            "annotator": "synthetic",
        })
    return records


@pytest.fixture(scope="module")
def tok():
    texts = [format_prompt(r["instruction"]) + r["output_1"] + " " + r["output_2"] for r in keyword_preferences(200)]
    return train_tokenizer(texts, vocab_size=400)


@pytest.fixture(scope="module")
def toy_rm(tok):
    return init_reward_model(build_model(TOY, tok), tok, seed=0)


# ---------------------------------------------------------------- math by hand


def test_bradley_terry_loss_by_hand():
    chosen, rejected = torch.tensor([1.0, 0.0, 3.0]), torch.tensor([0.0, 2.0, 3.0])
    # -log sigmoid(d) = log(1 + exp(-d)) for d = 1, -2, 0
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(2)) + math.log(2)) / 3
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx((0.31326 + 2.12693 + 0.69315) / 3, abs=1e-4)
    # gradient: d/dr_c = -(1 - sigmoid(d)) / n
    c = chosen.clone().requires_grad_(True)
    bradley_terry_loss(c, rejected).backward()
    sig = [1 / (1 + math.exp(-d)) for d in (1.0, -2.0, 0.0)]
    assert c.grad.tolist() == pytest.approx([-(1 - s) / 3 for s in sig], rel=1e-6)


def test_last_token_index_and_positions_by_hand():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1]])
    assert last_token_index(right).tolist() == [2, 1, 3]
    assert last_token_index(left).tolist() == [3, 3, 3]
    assert position_ids(right).tolist() == [[0, 1, 2, 2], [0, 1, 1, 1], [0, 1, 2, 3]]
    assert position_ids(left).tolist() == [[0, 0, 1, 2], [0, 0, 0, 1], [0, 1, 2, 3]]
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_token_id=0, side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_reward_is_read_at_the_last_real_token_for_both_padding_sides(tok, toy_rm):
    prompt = format_prompt("Write words about stone.")
    seqs = [encode(tok, prompt, "apple banana river", 128), encode(tok, prompt, "ok", 128), encode(tok, "Hi", "x", 128)]
    assert all(s[-1] == tok.eos_token_id and s[0] == tok.bos_token_id for s in seqs)
    with torch.no_grad():
        # by hand: run each sequence alone (no padding) and apply the head to the last hidden state
        hand = [toy_rm.score(toy_rm.model(torch.tensor([s])).last_hidden_state[0, -1]).item() for s in seqs]
        for side in ("right", "left"):
            ids, mask = pad_batch(seqs, tok.pad_token_id, side=side)
            assert (ids == tok.pad_token_id).sum() == (mask == 0).sum() > 0
            got = sequence_rewards(toy_rm, ids, mask)
            assert got.tolist() == pytest.approx(hand, abs=1e-5)
    # score(): same values, input order, independent of the batch size
    prompts, responses = [prompt, prompt, "Hi"], ["apple banana river", "ok", "x"]
    assert score(toy_rm, tok, prompts, responses, batch_size=2).tolist() == pytest.approx(hand, abs=1e-5)
    assert torch.equal(score(toy_rm, tok, prompts, responses, 2), score(toy_rm, tok, prompts, responses, 2))


def test_init_keeps_the_sft_backbone_and_seeds_the_head(tok):
    sft = build_model(TOY, tok)
    a, b, c = init_reward_model(sft, tok, 0), init_reward_model(sft, tok, 0), init_reward_model(sft, tok, 1)
    assert a.config.num_labels == 1 and a.score.weight.shape == (1, TOY.hidden_size)
    assert torch.equal(a.model.embed_tokens.weight, sft.model.embed_tokens.weight)
    assert torch.equal(a.model.layers[1].mlp.up_proj.weight, sft.model.layers[1].mlp.up_proj.weight)
    assert torch.equal(a.score.weight, b.score.weight) and not torch.equal(a.score.weight, c.score.weight)


def test_held_out_split_is_seeded_and_disjoint():
    train, held = split_held_out(50, 10, seed=3)
    assert len(held) == 10 and sorted(train + held) == list(range(50))
    assert split_held_out(50, 10, seed=3) == (train, held) and split_held_out(50, 10, seed=4)[1] != held
    with pytest.raises(ValueError):
        split_held_out(10, 10, seed=0)


# ---------------------------------------------------------------- smoke run


FAST = RewardModelConfig(learning_rate=3e-3, num_epochs=3, batch_size=16, micro_batch_size=16, warmup_ratio=0.0,
                         lr_scheduler="constant", max_length=128, eval_size=60, eval_batch_size=32, seed=0, num_threads=1,
                         show_progress=False)


def test_reward_model_learns_an_easy_preference(tok, tmp_path):
    prefs = keyword_preferences(300)
    model, stats = train_reward_model(build_model(TOY, tok), tok, prefs, FAST)
    assert stats["num_train_pairs"] == 240 and stats["eval_after"]["num_pairs"] == 60
    assert abs(stats["eval_before"]["accuracy"] - 0.5) < 0.2  # untrained head: chance
    assert stats["eval_after"]["accuracy"] >= 0.85, stats["eval_after"]
    assert stats["eval_after"]["loss"] < math.log(2) - 0.2
    assert sum(stats["losses"][-5:]) / 5 < sum(stats["losses"][:5]) / 5 - 0.2
    # save / load round trip gives the same rewards
    save_reward_model(model, tok, tmp_path / "rm")
    loaded, loaded_tok = load_reward_model(tmp_path / "rm")
    prompts = [format_prompt(p["instruction"]) for p in prefs[:4]]
    responses = [p["output_1"] for p in prefs[:4]]
    assert torch.equal(score(model, tok, prompts, responses, 4), score(loaded, loaded_tok, prompts, responses, 4))
    # higher reward for the keyword answer, on a fresh pair
    r = score(loaded, loaded_tok, [prompts[0]] * 2, ["stone river banana table", "stone river music table"], 2)
    assert r[0] > r[1]


def test_training_is_deterministic_and_ties_are_dropped(tok):
    prefs = keyword_preferences(40) + [{**keyword_preferences(1, seed=9)[0], "preference": 1.5}]
    cfg = RewardModelConfig(**{**FAST.__dict__, "max_steps": 2, "eval_size": 8, "batch_size": 4, "micro_batch_size": 4})
    sft = build_model(TOY, tok)
    m1, s1 = train_reward_model(sft, tok, prefs, cfg)
    m2, s2 = train_reward_model(sft, tok, prefs, cfg)
    assert s1["ties_dropped"] == 1 and s1["num_train_pairs"] == 32 and s1["num_steps"] == 2
    assert s1["losses"] == s2["losses"]
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))


# ---------------------------------------------------------------- data file and stage


def test_read_preferences_names_the_bad_row(tmp_path):
    good = keyword_preferences(3)
    write(tmp_path / "p.json", good)
    assert read_preferences(tmp_path / "p.json") == good
    bad = [good[0], {**good[1], "preference": 2.5}]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(InputError, match=r"row 1, field 'preference'"):
        read_preferences(tmp_path / "bad.json")
    (tmp_path / "missing.json").write_text(json.dumps([{k: v for k, v in good[0].items() if k != "output_2"}]))
    with pytest.raises(InputError, match=r"row 0, field 'output_2'"):
        read_preferences(tmp_path / "missing.json")
    with pytest.raises(InputError):
        write(tmp_path / "w.json", bad)
    assert not (tmp_path / "w.json").exists()


def test_reward_model_stage_end_to_end(tok, tmp_path):
    save_model(build_model(TOY, tok), tok, tmp_path / "sft")
    write(tmp_path / "prefs.json", keyword_preferences(60))
    section = {k: v for k, v in FAST.__dict__.items() if k != "adam_betas"} | {"num_epochs": 1, "eval_size": 12}
    params = {"scale": "tiny", "_path": "params.yaml", "reward_model": section}
    args = stage.arguments().parse_args(["--sft", str(tmp_path / "sft"), "--preferences", str(tmp_path / "prefs.json"),
                                         "--out", str(tmp_path / "rm"), "--metrics", str(tmp_path / "m.json"), "--log", str(tmp_path / "curve.csv")])
    stage.main(args, params)
    metrics = json.loads((tmp_path / "m.json").read_text())
    curve = list(csv.DictReader((tmp_path / "curve.csv").open()))  # the training curve: a row per optimizer step
    assert [int(r["step"]) for r in curve] == [1, 2, 3] and list(curve[0]) == ["step", "loss", "learning_rate", "grad_norm", "accuracy"]
    assert [float(r["loss"]) for r in curve] == metrics["train_loss_curve"]  # 3 steps in 3 bins: the steps themselves
    assert metrics["num_train_pairs"] == 48 and metrics["held_out_pairs"] == 12 and metrics["num_steps"] == 3
    assert len(metrics["train_loss_curve"]) == 3 and 0 <= metrics["held_out_accuracy"] <= 1
    model, _ = load_reward_model(tmp_path / "rm")
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.config.num_labels == 1
    assert stage.curve([1.0, 2.0, 3.0, 4.0], bins=2) == [1.5, 3.5]
