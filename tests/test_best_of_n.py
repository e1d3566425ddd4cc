"""Best-of-n (argmax selection, consistency with the reward model, the stage) and expert iteration."""

from __future__ import annotations

import json

import pytest
import torch

from afarm.methods.best_of_n import BestOfNConfig, best_of_n, best_of_n_select
from afarm.methods.expert_iteration import ExpertIterationConfig, expert_iteration, select_expert_data
from afarm.methods.reward_model import init_reward_model, save_reward_model, score
from afarm.models.generate import GenerationConfig
from afarm.models.lm import ModelConfig, build_model, load_model, save_model
from afarm.models.prompts import format_prompt
from afarm.models.tokenizer import train_tokenizer
from afarm.models.train import TrainConfig
from afarm.io import InputError
from afarm.methods.sft_samples import read_samples
from afarm.stages import best_of_n as bon_stage
from afarm.stages import expert_iteration as ei_stage
from afarm.stages import sft_samples as samples_stage

TOY = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=128)
INSTRUCTIONS = ["Name a fruit.", "Say hello.", "Count to three.", "Give a color.", "What is water?"]
SAMPLING = GenerationConfig(max_new_tokens=6, temperature=1.0, top_p=1.0, do_sample=True, batch_size=8, seed=0,
                            num_threads=1, show_progress=False)
BON = BestOfNConfig(n=3, generation=SAMPLING, score_batch_size=5)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A random tiny policy and a reward model built from it, also saved as folders."""
    tok = train_tokenizer([format_prompt(i) + " apple banana one two three red water" for i in INSTRUCTIONS] * 4, vocab_size=320)
    policy = build_model(TOY, tok)
    rm = init_reward_model(policy, tok, seed=0)
    folder = tmp_path_factory.mktemp("toy")
    save_model(policy, tok, folder / "sft")
    save_reward_model(rm, tok, folder / "rm")
    return tok, policy, rm, folder


def test_best_of_n_select_is_the_argmax_by_hand():
    samples = [["a", "b", "c"], ["d", "e", "f"], ["g", "h", "i"]]
    rewards = [[0.1, 0.5, 0.2], [3.0, -1.0, 3.0], [-2.0, -3.0, -1.5]]
    assert best_of_n_select(samples, rewards) == (["b", "d", "i"], [1, 0, 2])  # a tie keeps the first
    assert best_of_n_select(samples, torch.tensor(rewards)) == (["b", "d", "i"], [1, 0, 2])
    with pytest.raises(ValueError):
        best_of_n_select(samples, [[1.0, 2.0]] * 3)


def test_best_of_n_keeps_the_reward_models_best_sample(toy):
    tok, policy, rm, _ = toy
    prompts = [format_prompt(i) for i in INSTRUCTIONS]
    best = best_of_n(policy, tok, rm, tok, prompts, BON)
    assert len(best["samples"]) == 5 and all(len(s) == 3 for s in best["samples"])
    assert any(len(set(s)) > 1 for s in best["samples"])  # sampling gives different candidates
    for prompt, samples, rewards, index, output in zip(prompts, best["samples"], best["rewards"], best["indices"], best["outputs"]):
        again = score(rm, tok, [prompt] * 3, samples, batch_size=1).tolist()
        assert rewards == pytest.approx(again, abs=1e-5)  # rewards are the reward model's, whatever the batching
        assert output == samples[index] and rewards[index] == max(rewards)
    # per-sample seeding: the first 2 of best-of-3 are best-of-2's samples
    two = best_of_n(policy, tok, rm, tok, prompts, BestOfNConfig(n=2, generation=SAMPLING, score_batch_size=5))
    assert [s[:2] for s in best["samples"]] == two["samples"]
    assert best == best_of_n(policy, tok, rm, tok, prompts, BON)  # deterministic


def test_expert_iteration_trains_on_the_selected_outputs(toy):
    tok, _, rm, folder = toy
    policy, _ = load_model(folder / "sft")
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    prompts = [format_prompt(i) for i in INSTRUCTIONS]
    train = TrainConfig(learning_rate=1e-2, max_steps=2, batch_size=4, micro_batch_size=4, warmup_ratio=0.0,
                        lr_scheduler="constant", max_length=128, seed=0, num_threads=1, show_progress=False)
    reference = best_of_n(policy, tok, rm, tok, prompts, BON)
    data, best, stats = expert_iteration(policy, tok, rm, tok, prompts, ExpertIterationConfig(best_of_n=BON, train=train))
    assert best == reference  # selection happens before training
    assert data == select_expert_data(prompts, best) == list(zip(prompts, best["outputs"], best["finished"]))
    # 6 new tokens at most: a sample that used them all was cut off and trains without EOS
    assert best["finished"] == [len(tok(o, add_special_tokens=False)["input_ids"]) < 6 for o in best["outputs"]]
    assert stats["num_steps"] == 2 and stats["num_examples"] == 5
    changed = [k for k, v in policy.state_dict().items() if not torch.equal(v, before[k])]
    assert "model.embed_tokens.weight" in changed and len(changed) == len(before)


def _eval_set(path):
    rows = [{"instruction": i, "output": "ref", "generator": "text_davinci_003", "dataset": "toy"} for i in INSTRUCTIONS]
    path.write_text(json.dumps(rows))
    return path


def _params(section: str, values: dict) -> dict:
    return {"scale": "tiny", "_path": "params.yaml", section: values, "generate": {"max_new_tokens": 8, "do_sample": False}}  # generate: the decoding a model folder records


GEN_PARAMS = {"max_new_tokens": 6, "temperature": 1.0, "top_p": 1.0, "batch_size": 8, "num_threads": 1, "show_progress": False}


def _sample(folder, prompts, out, recipe: str, params: dict) -> None:
    """The `sft_samples` stage: the SFT model's samples on ``prompts`` by ``recipe``."""
    args = samples_stage.arguments().parse_args(["--sft", str(folder / "sft"), "--prompts", str(prompts), "--out", str(out),
                                                 "--recipe", recipe])
    samples_stage.main(args, params)


def test_best_of_n_stage_writes_model_outputs(toy, tmp_path):
    tok, policy, rm, folder = toy
    params = _params("best_of_n", {"n": 3, "generation": GEN_PARAMS, "score_batch_size": 4})
    _sample(folder, _eval_set(tmp_path / "e.json"), tmp_path / "s.json", "best_of_n", params)
    args = bon_stage.arguments().parse_args([
        "--samples", str(tmp_path / "s.json"), "--reward_model", str(folder / "rm"), "--eval_set", str(tmp_path / "e.json"),
        "--out", str(tmp_path / "out.json"), "--metrics", str(tmp_path / "m.json"), "--generator", "best_of_n_sim"])
    bon_stage.main(args, params)
    out = json.loads((tmp_path / "out.json").read_text())
    assert [r["instruction"] for r in out] == INSTRUCTIONS
    # sampled beforehand (the sft_samples stage) or here: the same best-of-n
    cfg = BestOfNConfig(n=3, generation=GenerationConfig(**GEN_PARAMS), score_batch_size=4)
    assert [r["output"] for r in out] == best_of_n(policy, tok, rm, tok, [format_prompt(i) for i in INSTRUCTIONS], cfg)["outputs"]
    assert {r["generator"] for r in out} == {"best_of_n_sim"} and {r["dataset"] for r in out} == {"toy"}
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["n"] == 3 and metrics["mean_reward_best"] >= metrics["mean_reward_all_samples"]
    first = (tmp_path / "out.json").read_bytes()
    bon_stage.main(args, _params("best_of_n", {"n": 3, "generation": GEN_PARAMS, "score_batch_size": 2}))
    assert (tmp_path / "out.json").read_bytes() == first
    with pytest.raises(InputError, match=r"s.json, row 0, field 'samples': expected 4 strings \(best_of_n.n\), got 3"):
        bon_stage.main(args, _params("best_of_n", {"n": 4, "generation": GEN_PARAMS}))  # samples of another n


def test_read_samples_checks_counts_and_rows(tmp_path):
    path = tmp_path / "s.json"
    good = [{"instruction": "a", "input": "", "samples": ["x", "y"], "finished": [True, False]},
            {"instruction": "b", "input": "i", "samples": ["z", ""], "finished": [True, True]}]
    path.write_text(json.dumps(good))
    assert read_samples(path, 2, rows=[{"instruction": "a"}, {"instruction": "b", "input": "i"}]) == good
    with pytest.raises(InputError, match="row 1, field 'instruction': not the instruction of the same row"):
        read_samples(path, 2, rows=[{"instruction": "a"}, {"instruction": "b", "input": ""}])
    with pytest.raises(InputError, match="2 records for 1 prompts"):
        read_samples(path, 2, rows=[{"instruction": "a"}])
    path.write_text(json.dumps([good[0], {**good[1], "finished": [True]}]))
    with pytest.raises(InputError, match="row 1, field 'finished': expected 2 booleans"):
        read_samples(path, 2)
    path.write_text(json.dumps([{**good[0], "samples": ["x", 3]}]))
    with pytest.raises(InputError, match="row 0, field 'samples': expected 2 strings"):
        read_samples(path, 2)


def test_expert_iteration_stage_end_to_end(toy, tmp_path):
    _, _, _, folder = toy
    unlabeled = [{"id": str(i), "instruction": ins, "input": "x" if i % 2 else "", "output": ""} for i, ins in enumerate(INSTRUCTIONS)]
    (tmp_path / "u.json").write_text(json.dumps(unlabeled))
    train = {"learning_rate": 1e-2, "num_epochs": 1, "batch_size": 2, "micro_batch_size": 2, "max_length": 128,
             "seed": 0, "num_threads": 1, "show_progress": False}
    params = _params("expert_iteration", {"best_of_n": {"n": 2, "generation": GEN_PARAMS}, "train": train, "limit": 4})
    _sample(folder, tmp_path / "u.json", tmp_path / "s.json", "expert_iteration", params)
    assert len(json.loads((tmp_path / "s.json").read_text())) == 4  # expert_iteration.limit
    args = ei_stage.arguments().parse_args([
        "--sft", str(folder / "sft"), "--reward_model", str(folder / "rm"), "--unlabeled", str(tmp_path / "u.json"),
        "--samples", str(tmp_path / "s.json"), "--out", str(tmp_path / "ei"), "--data", str(tmp_path / "d.json"), "--metrics", str(tmp_path / "m.json"),
        "--log", str(tmp_path / "curve.csv")])
    ei_stage.main(args, params)
    data = json.loads((tmp_path / "d.json").read_text())
    assert [d["instruction"] for d in data] == INSTRUCTIONS[:4] and all(d["index"] in (0, 1) for d in data)
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["num_instructions"] == 4 and metrics["num_steps"] == 2
    curve = (tmp_path / "curve.csv").read_text().splitlines()  # the training curve: a row per optimizer step
    assert curve[0] == "step,loss,learning_rate,grad_norm" and [line.split(",")[0] for line in curve[1:]] == ["1", "2"]
    assert float(curve[1].split(",")[1]) == metrics["train_loss_first"] and float(curve[2].split(",")[1]) == metrics["train_loss_last"]
    model, _ = load_model(tmp_path / "ei")
    assert type(model).__name__ == "LlamaForCausalLM"
