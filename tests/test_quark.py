"""Quark: quantile assignment, control tokens and the loss by hand, a seeded smoke run that raises
a toy reward, and the stage end to end on toy models."""

from __future__ import annotations

import copy
import csv
import json
import math

import pytest
import torch

from afarm.methods.quark import (
    QuarkConfig,
    add_reward_tokens,
    assign_quantiles,
    collate_examples,
    generation_prefix,
    kl_to_reference,
    quark_loss,
    reward_tokens,
    train_quark,
    training_examples,
)
from afarm.methods.reward_model import init_reward_model, save_reward_model
from afarm.models.lm import ModelConfig, build_model, load_model, save_model
from afarm.models.prompts import chat_prompt, format_prompt
from afarm.models.tokenizer import train_tokenizer
from afarm.models.train import TrainConfig, evaluate_loss

TOY = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=256)
PROMPTS = [format_prompt(f"Say something about item {i}.") for i in range(64)]
FAST = QuarkConfig(
    max_steps=10, rollout_batch_size=32, rollout_micro_batch_size=32, step_batch_size=32, step_micro_batch_size=8,
    num_gradient_steps_per_step=2, learning_rate=1e-2, warmup_steps=0, lr_scheduler="constant", response_len=10,
    kl_coef=0.0, seed=0, num_threads=1, show_progress=False,
)


def count_e(prompts, responses):
    return torch.tensor([float(r.count("e")) for r in responses])


@pytest.fixture()
def tok():  # function scope: Quark adds tokens to the tokenizer in place
    return train_tokenizer([p + f" Item {i} is fine and red." for i, p in enumerate(PROMPTS[:40])], vocab_size=300)


def test_assign_quantiles_by_hand():
    rewards = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.0])
    # chunks of 10 // 4 = 2, best first: {0.9, 0.8} {0.7, 0.6} {0.5, 0.4} and the remaining 4 in the last
    assert assign_quantiles(rewards, 4).tolist() == [3, 0, 2, 3, 1, 3, 0, 2, 1, 3]
    assert assign_quantiles(torch.tensor([1.0, 1.0, 1.0, 1.0]), 2).tolist() == [0, 0, 1, 1]  # ties keep order
    assert assign_quantiles(torch.tensor([5.0, 1.0, 3.0, 2.0, 4.0, 0.0, 6.0]), 3).tolist() == [0, 2, 1, 2, 1, 2, 0]


def test_control_tokens_and_generation_prefix(tok):
    model = build_model(TOY, tok)
    old = model.get_input_embeddings().weight.detach().clone()
    ids = add_reward_tokens(model, tok, 4, seed=0)
    assert tok.convert_ids_to_tokens(ids) == reward_tokens(4) == ["<reward_0>", "<reward_1>", "<reward_2>", "<reward_3>"]
    assert ids == list(range(len(old), len(old) + 4)) and model.get_input_embeddings().weight.size(0) == len(old) + 4
    new = model.get_input_embeddings().weight.detach()
    assert torch.equal(new[: len(old)], old)  # old rows untouched
    assert not torch.allclose(new[-1], new[-2])  # jittered, not all equal to the mean
    assert (new[-4:].mean(0) - old.mean(0)).abs().max() < 4 * old.std(0).max()  # near the old mean
    prompt = PROMPTS[0]
    assert tok(reward_tokens(4)[0] + prompt)["input_ids"] == [tok.bos_token_id, ids[0], *tok(prompt)["input_ids"][1:]]
    assert generation_prefix(QuarkConfig(train_on_best_quantile=False)) == "<reward_0>"
    assert generation_prefix(QuarkConfig()) == ""


def test_spare_embedding_rows_are_reused_not_shrunk(tok):
    """A checkpoint padded with spare rows (more rows than tokenizer entries, e.g. rounded up to a
    multiple of 64) keeps its size; the rows the control tokens take get the same values as grown rows."""
    import dataclasses

    n = len(tok)
    padded = build_model(dataclasses.replace(TOY, vocab_size=n + 8, tie_word_embeddings=False), tok)
    exact = copy.deepcopy(padded)
    exact.resize_token_embeddings(n)  # the same model without its spare rows
    before = {name: m.weight.detach().clone() for name, m in (("in", padded.get_input_embeddings()), ("out", padded.get_output_embeddings()))}
    ids = add_reward_tokens(padded, copy.deepcopy(tok), 4, seed=0)
    add_reward_tokens(exact, copy.deepcopy(tok), 4, seed=0)
    assert ids == [n, n + 1, n + 2, n + 3]
    for name, module, grown in (("in", padded.get_input_embeddings(), exact.get_input_embeddings()), ("out", padded.get_output_embeddings(), exact.get_output_embeddings())):
        w = module.weight.detach()
        assert w.shape == (n + 8, TOY.hidden_size)  # never shrunk to n + 4
        assert torch.equal(w[:n], before[name][:n])  # the vocabulary is untouched
        assert torch.equal(w[n : n + 4], grown.weight.detach()[n : n + 4])  # as if grown
        assert not torch.equal(w[n : n + 4], before[name][n : n + 4])  # the spare rows were re-initialised
        assert torch.equal(w[n + 4 :], before[name][n + 4 :])  # spare rows no token uses stay
    # a full Quark run from such a checkpoint (policy and reference) keeps the padded size
    t = copy.deepcopy(tok)
    policy = build_model(dataclasses.replace(TOY, vocab_size=n + 8), t)
    ref = copy.deepcopy(policy)
    train_quark(policy, ref, count_e, t, PROMPTS, QuarkConfig(**{**FAST.__dict__, "max_steps": 1}))
    assert policy.get_input_embeddings().weight.size(0) == ref.get_input_embeddings().weight.size(0) == n + 8


def test_kl_to_reference_by_hand():
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75])
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert kl_to_reference(p.log(), q.log()).item() == pytest.approx(expected, abs=1e-6)
    assert kl_to_reference(p.log(), p.log()).item() == pytest.approx(0.0, abs=1e-7)


def test_training_examples_carry_their_quantile_token(tok):
    add_reward_tokens(build_model(TOY, tok), tok, 2, seed=0)
    prompts, responses = PROMPTS[:4], [[40, 2], [41, 2], [42, 2], [43]]
    quantiles = assign_quantiles(torch.tensor([0.0, 3.0, 1.0, 2.0]), 2)  # [1, 0, 1, 0]
    all_q = training_examples(tok, prompts, responses, quantiles, QuarkConfig(num_reward_tokens=2, train_on_best_quantile=False))
    assert [e["query"][1] for e in all_q] == tok.convert_tokens_to_ids(["<reward_1>", "<reward_0>", "<reward_1>", "<reward_0>"])
    assert all(e["ref_query"] == tok(p)["input_ids"] for e, p in zip(all_q, prompts))
    best = training_examples(tok, prompts, responses, quantiles, QuarkConfig(num_reward_tokens=2))
    assert [e["response"] for e in best] == [[41, 2], [43]] and [e["query"] for e in best] == [tok(p)["input_ids"] for p in (prompts[1], prompts[3])]


def test_quark_loss_is_the_sft_loss_plus_kl_and_entropy_terms(tok):
    model = build_model(TOY, tok)
    prompt, response = PROMPTS[0], " Item 0 is fine."
    example = {"query": tok(prompt)["input_ids"], "ref_query": tok(prompt)["input_ids"], "response": tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]}
    batch = collate_examples([example], tok.pad_token_id)
    vocab = len(tok)
    nll, stats = quark_loss(model, model, batch, QuarkConfig(kl_coef=0.0), vocab)
    sft = evaluate_loss(model, tok, [(prompt, response)], TrainConfig(max_length=256), response_only=True)["loss"]
    assert nll.item() == pytest.approx(sft, rel=1e-5)
    with_kl, stats = quark_loss(model, model, batch, QuarkConfig(kl_coef=1.0), vocab)  # policy == reference: KL 0
    assert with_kl.item() == pytest.approx(nll.item(), rel=1e-5) and stats["train_kl"] == pytest.approx(0.0, abs=1e-5)
    with_entropy, stats = quark_loss(model, model, batch, QuarkConfig(kl_coef=0.0, entropy_coef=0.5), vocab)
    assert with_entropy.item() == pytest.approx(nll.item() - 0.5 * stats["train_entropy"], rel=1e-5)


def test_upstream_defaults():
    cfg = QuarkConfig()
    assert (cfg.num_reward_tokens, cfg.kl_coef, cfg.entropy_coef, cfg.learning_rate, cfg.train_on_best_quantile) == (4, 0.05, 0.0, 3e-6, True)


def test_quark_raises_a_toy_reward_and_is_deterministic(tok):
    logs = []
    for _ in range(2):
        t = copy.deepcopy(tok)
        policy = build_model(TOY, t)
        logs.append(train_quark(policy, copy.deepcopy(policy), count_e, t, PROMPTS, FAST)["log"])
    scores = [r["score"] for r in logs[0]]
    assert sum(scores[-3:]) / 3 > sum(scores[:3]) / 3 + 1.0, scores
    assert all(r["num_train_examples"] == 8 for r in logs[0])  # the best quarter of 32 rollouts
    strip = lambda log: [{k: v for k, v in r.items() if k != "seconds"} for r in log]  # noqa: E731
    assert strip(logs[0]) == strip(logs[1])


def test_all_quantile_quark_trains_on_the_whole_pool(tok):
    policy = build_model(TOY, tok)
    cfg = QuarkConfig(**{**FAST.__dict__, "max_steps": 2, "train_on_best_quantile": False, "clear_data_pool_on_each_rollout": False})
    result = train_quark(policy, copy.deepcopy(policy), count_e, tok, PROMPTS, cfg)
    assert result["generation_prefix"] == "<reward_0>"
    assert [r["num_train_examples"] for r in result["log"]] == [32, 64]  # the pool keeps growing
    assert "<reward_3>" in tok.get_vocab()


# ---------------------------------------------------------------- stage


def test_quark_stage_end_to_end(tok, tmp_path):
    from afarm.stages import quark as stage

    sft = build_model(TOY, tok)
    save_model(sft, tok, tmp_path / "sft")
    save_reward_model(init_reward_model(sft, tok, seed=0), tok, tmp_path / "rm")
    rows = [{"instruction": f"Say something about item {i}.", "input": "", "output": "x"} for i in range(40)]
    (tmp_path / "unlabeled.json").write_text(json.dumps(rows))
    eval_set = [{"instruction": f"Name thing {i}.", "output": "ref", "generator": "text_davinci_003", "dataset": "toy"} for i in range(3)]
    (tmp_path / "eval.json").write_text(json.dumps(eval_set))
    quark = {
        "kl_coef": {"sim": 0.05, "human": 0.05}, "max_steps": 2, "rollout_batch_size": 16, "rollout_micro_batch_size": 16,
        "step_batch_size": 8, "step_micro_batch_size": 4, "response_len": 8, "learning_rate": 1e-3, "warmup_steps": 0,
        "train_on_best_quantile": False, "seed": 0, "num_threads": 1, "show_progress": False,
    }
    generate = {"max_new_tokens": 6, "do_sample": False, "batch_size": 4, "num_threads": 1, "show_progress": False}
    params = {"scale": "tiny", "_path": "params.yaml", "quark": quark, "generate": generate}
    args = stage.arguments().parse_args([
        "--sft", str(tmp_path / "sft"), "--reward_model", str(tmp_path / "rm"), "--unlabeled", str(tmp_path / "unlabeled.json"),
        "--eval_set", str(tmp_path / "eval.json"), "--out", str(tmp_path / "quark"), "--outputs", str(tmp_path / "outputs.json"),
        "--metrics", str(tmp_path / "m.json"), "--plot", str(tmp_path / "p.png"), "--log", str(tmp_path / "curve.csv"),
        "--generator", "quark_sim", "--preference_set", "sim",
    ])
    stage.main(args, params)
    metrics = json.loads((tmp_path / "m.json").read_text())
    curve = list(csv.DictReader((tmp_path / "curve.csv").open()))  # the training curve: a row per Quark step
    assert [int(r["step"]) for r in curve] == [1, 2] and float(curve[-1]["score"]) == metrics["final_score"]
    assert {"loss", "train_kl", "train_entropy", "learning_rate", "grad_norm"} <= set(curve[0]) and "seconds" not in curve[0]
    assert metrics["num_steps"] == 2 and metrics["generation_prefix"] == "<reward_0>" and metrics["kl_coef"] == 0.05
    outputs = json.loads((tmp_path / "outputs.json").read_text())
    assert [o["instruction"] for o in outputs] == [r["instruction"] for r in eval_set]
    assert all(o["generator"] == "quark_sim" and o["dataset"] == "toy" and isinstance(o["output"], str) for o in outputs)
    model, loaded_tok = load_model(tmp_path / "quark")
    # the control token is recorded once, in the folder's chat template
    assert chat_prompt(loaded_tok, "Hi") == "<reward_0>" + format_prompt("Hi")
    assert "<reward_0>" in loaded_tok.get_vocab() and model.get_input_embeddings().weight.size(0) == len(loaded_tok)
    assert loaded_tok("<reward_0>x")["input_ids"][1] == loaded_tok.convert_tokens_to_ids("<reward_0>")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
