"""PPO and Quark sharded over two CPU processes (gloo), through the real launcher, against one process.

The models are small Llamas saved as ordinary Hugging Face folders (config.json, safetensors,
tokenizer) and loaded with ``from_pretrained``. Both runs have the same global batches and seeds
(``rollout_seeding: per_chunk``, so each rollout chunk samples the same tokens on whichever rank
it lands). What may differ is float rounding only: gradients are summed in another order (each
rank sums its micro-batches, then the ranks' sums are averaged) and each rank scores its own share
of the rollouts (other padding widths). Every tolerance below is argued where it is used.

A third launch samples different lengths on the two ranks from a sharded policy: our sampler
(``synced=True``) and Hugging Face ``generate`` (which turns ``synced_gpus`` on by itself for an
FSDP module) must both finish and equal the unsharded model's output.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from afarm.methods.reward_model import init_reward_model, save_reward_model
from afarm.models.lm import ModelConfig, build_model, load_model, save_model
from afarm.models.prompts import chat_prompt, format_prompt
from afarm.models.tokenizer import train_tokenizer

pytestmark = pytest.mark.slow  # several processes (torchrun): not in the fast tier

SRC = Path(__file__).resolve().parents[1] / "src"
TOY = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=256)
COMMON = {  # per stage section: global batches 16 / 8, micro-batches 8 (rollout) and 2 (step)
    "rollout_batch_size": 16, "rollout_micro_batch_size": 8, "step_batch_size": 8, "step_micro_batch_size": 2,
    "response_len": 8, "learning_rate": 1e-3, "warmup_steps": 0, "rollout_seeding": "per_chunk", "seed": 0,
    "num_threads": 1, "show_progress": False,
}


def env() -> dict:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), out.get("PYTHONPATH", "")) if p)
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rl_inputs")
    prompts = [format_prompt(f"Say something about item {i}.") for i in range(40)]
    tok = train_tokenizer([p + f" Item {i} is fine and red." for i, p in enumerate(prompts)], vocab_size=300)
    sft = build_model(TOY, tok)
    save_model(sft, tok, root / "sft")  # a hub-layout folder: config.json, model.safetensors, tokenizer files
    save_reward_model(init_reward_model(sft, tok, seed=0), tok, root / "rm")
    rows = [{"instruction": f"Say something about item {i}.", "input": "", "output": "x"} for i in range(40)]
    (root / "unlabeled.json").write_text(json.dumps(rows))
    eval_set = [{"instruction": f"Name thing {i}.", "output": "ref", "generator": "text_davinci_003", "dataset": "toy"} for i in range(4)]
    (root / "eval.json").write_text(json.dumps(eval_set))
    return root


def launch(stage: str, inputs: Path, out: Path, processes: int, section: dict) -> Path:
    """Run ``python -m afarm.stages <stage>`` (the launcher) in ``processes`` processes; returns ``out``."""
    out.mkdir(parents=True)
    params = {
        "scale": "tiny",
        "launch": {"processes": processes, "backend": "gloo", "timeout_s": 60, "num_threads": 1},
        stage: section,
        "generate": {"max_new_tokens": 6, "do_sample": False, "batch_size": 2, "num_threads": 1, "show_progress": False},
    }
    (out / "params.yaml").write_text(yaml.safe_dump(params))
    argv = ["--params", "params.yaml", "--sft", str(inputs / "sft"), "--reward_model", str(inputs / "rm"),
            "--unlabeled", str(inputs / "unlabeled.json"), "--out", "model", "--metrics", "metrics.json",
            "--plot", "curves.png", "--log", "log.csv", "--preference_set", "sim"]
    if stage == "quark":
        argv += ["--eval_set", str(inputs / "eval.json"), "--outputs", "outputs.json", "--generator", "quark_sim"]
    result = subprocess.run([sys.executable, "-m", "afarm.stages", stage, *argv], cwd=out, env=env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{stage} x {processes} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return out


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / "model.safetensors")


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest weight difference over ``a``'s tensors (``b`` may hold a tied copy more, e.g. lm_head)."""
    assert a.keys() <= b.keys(), a.keys() - b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def log(run: Path) -> list[dict]:
    return list(csv.DictReader((run / "log.csv").open()))


def test_ppo_two_processes_equal_one(inputs, tmp_path):
    section = {**COMMON, "kl_coef": 0.05, "max_steps": 2, "precision": "fp32"}
    one = launch("ppo", inputs, tmp_path / "one", 1, section)
    two = launch("ppo", inputs, tmp_path / "two", 2, section)
    start = load_file(inputs / "sft" / "model.safetensors")
    w1, w2 = weights(one), weights(two)
    moved = max_diff(start, w1)
    # fp32: the two runs sample the same tokens and differ by summation order only (~1e-7 relative
    # per operation, a few hundred operations deep, times 8 AdamW steps of lr 1e-3). AdamW's first
    # steps move each weight by about lr, so 1e-5 is 1 % of one step: a lost micro-batch, a
    # per-rank (instead of global) whitening or a different rollout would move weights by ~lr.
    assert moved > 5e-3, moved
    assert max_diff(w1, w2) < 1e-5, max_diff(w1, w2)
    l1, l2 = log(one), log(two)
    assert [r["response_length"] for r in l1] == [r["response_length"] for r in l2]  # the same rollouts
    for key in ("score", "kl", "policy_loss", "value_loss", "grad_norm"):
        for a, b in zip(l1, l2):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4, abs=1e-6), key
    # Rank 0 alone wrote the outputs; the folder loads in a plain process (no process group).
    model, tok = load_model(two / "model")
    assert model.config.num_hidden_layers == 2 and len(tok) == len(load_model(inputs / "sft")[1])
    assert json.loads((two / "metrics.json").read_text())["num_steps"] == 2


def test_quark_two_processes_bf16_mixed_checkpointed_equal_one(inputs, tmp_path):
    section = {**COMMON, "kl_coef": 0.05, "max_steps": 1, "precision": "bf16_mixed", "gradient_checkpointing": True}
    one = launch("quark", inputs, tmp_path / "one", 1, section)
    two = launch("quark", inputs, tmp_path / "two", 2, section)
    start = load_file(inputs / "sft" / "model.safetensors")
    w1, w2 = weights(one), weights(two)
    assert all(w1[k].dtype == torch.float32 for k in w1)  # the fp32 master weights are saved
    # One step of 4 micro-batches in bf16 compute: both runs run the same bf16 operations on the
    # same rows (one process also uses FSDP for mixed precision), except the fp32 gradient sum
    # over the ranks, and each rank scores its own share (bf16 reward model, other padding). AdamW's
    # first step moves a weight by about lr = 1e-3 times the sign of its gradient, so a weight
    # whose tiny gradient changes sign flips by up to 2e-3; such weights are rare, hence a bound on
    # the bulk (99.9 % of the weights within 1e-5) and on the worst (2.5e-3).
    moved = max((w1[k][: v.size(0)] - v).abs().max().item() for k, v in start.items())  # embeddings grew by 4 rows
    worst = max_diff(w1, w2)
    assert moved > 5e-4, moved
    assert worst < 2.5e-3, worst
    diffs = torch.cat([(w1[k] - w2[k]).abs().flatten() for k in w1])
    assert (diffs > 1e-5).float().mean().item() < 1e-3
    l1, l2 = log(one), log(two)
    assert l1[0]["num_train_examples"] == l2[0]["num_train_examples"] and l1[0]["response_length"] == l2[0]["response_length"]
    for key in ("score", "loss", "nll", "train_entropy"):  # bf16 compute: about 3 significant digits
        assert float(l1[0][key]) == pytest.approx(float(l2[0][key]), rel=1e-3), key
    outputs = json.loads((two / "outputs.json").read_text())
    assert len(outputs) == 4 and all(o["generator"] == "quark_sim" for o in outputs)
    model, tok = load_model(two / "model")
    assert "<reward_0>" in tok.get_vocab() and model.get_input_embeddings().weight.size(0) == len(tok)
    assert chat_prompt(tok, "Hi") == format_prompt("Hi")  # best-quantile Quark: no control token


WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    from afarm import distributed
    from afarm.methods.ppo import left_pad, sample_responses
    from afarm.models.lm import load_model

    distributed.init_process_group(2, "gloo", timeout_s=30)
    rank = distributed.rank()
    plain, tok = load_model(sys.argv[1], dtype="float32")
    sharded = distributed.prepare_model(load_model(sys.argv[1], dtype="float32")[0], train=True)
    prompts = [["Tell me about red.", "Hi."], ["Name a fine item, please.", "Item 3?", "Why?"]][rank]
    max_new = [3, 14][rank]  # rank 0 stops long before rank 1
    ids, mask = left_pad([tok(p)["input_ids"] for p in prompts], tok.pad_token_id)
    args = (max_new, 1.0, tok.eos_token_id, tok.pad_token_id)
    ours = sample_responses(sharded, ids, mask, *args, torch.Generator().manual_seed(rank), synced=True)
    alone = sample_responses(plain, ids, mask, *args, torch.Generator().manual_seed(rank))
    hf = sharded.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id)
    hf_alone = plain.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id)
    print(json.dumps({
        "rank": rank,
        "ours_width": ours[0].size(1),
        "ours_equal": torch.equal(ours[0], alone[0]) and torch.equal(ours[1], alone[1]),
        "logprob_diff": (ours[2] - alone[2]).abs().max().item(),
        "hf_width": hf.size(1) - ids.size(1),
        "hf_equal": torch.equal(hf, hf_alone),
    }))
    distributed.destroy_process_group()
    """
)


def run_worker(source: str, tmp_path: Path, model: Path) -> list[dict]:
    """Run the worker script ``source`` on ``model`` in 2 processes (torchrun); the JSON lines it printed, by rank."""
    script = tmp_path / "worker.py"
    script.write_text(source)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(model)]
    result = subprocess.run(cmd, env={**env(), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-6000:]
    return sorted((json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")), key=lambda r: r["rank"])


def test_ranks_sample_different_lengths_from_a_sharded_policy(inputs, tmp_path):
    reports = run_worker(WORKER, tmp_path, inputs / "sft")
    assert [r["rank"] for r in reports] == [0, 1]
    assert reports[0]["ours_width"] <= 3 < reports[1]["ours_width"]  # the ranks really sampled different lengths
    assert reports[0]["hf_width"] <= 3 < reports[1]["hf_width"]
    for r in reports:
        # Same weights, same generator: the sharded policy samples exactly the unsharded one's tokens.
        assert r["ours_equal"] and r["hf_equal"], r
        assert r["logprob_diff"] < 1e-5, r


# ---------------------------------------------------------------- in one process (no launch)


def test_batches_must_split_over_the_processes():
    from afarm.methods.ppo import PPOConfig, check_ppo_batches

    cfg = PPOConfig(rollout_batch_size=512, rollout_micro_batch_size=32, step_batch_size=256, step_micro_batch_size=2, rollout_seeding="per_chunk")
    check_ppo_batches(cfg, 8)  # the paper: 512 = 8 x 2 x 32, 256 = 8 x 16 x 2
    with pytest.raises(ValueError, match=r"ppo\.rollout_batch_size 512 must be a multiple of rollout_micro_batch_size 32 x 32 processes = 1024"):
        check_ppo_batches(cfg, 32)
    with pytest.raises(ValueError, match=r"ppo\.step_batch_size 256 must be a multiple of step_micro_batch_size 2 x 256 process\(es\) = 512"):
        check_ppo_batches(PPOConfig(**{**cfg.__dict__, "rollout_micro_batch_size": 1}), 256)
    with pytest.raises(ValueError, match="rollout_seeding 'stream'.*per_chunk"):
        check_ppo_batches(PPOConfig(**{**cfg.__dict__, "rollout_seeding": "stream"}), 8)
    check_ppo_batches(PPOConfig(**{**cfg.__dict__, "rollout_seeding": "stream", "rollout_micro_batch_size": 48}), 1)  # one process: a short last chunk is fine


def test_rollout_shares_of_two_ranks_are_the_one_process_rollouts(inputs, monkeypatch):
    """Rank 0 and rank 1 (simulated in this process) sample their halves with per-chunk generators;
    gathered, they are exactly one process's rollouts: same tokens, logprobs, values and scores."""
    from afarm import distributed
    from afarm.methods import ppo

    policy, tok = load_model(inputs / "sft")
    value = ppo.ValueModel.from_reward_model(init_reward_model(policy, tok, seed=0))
    prompts = [format_prompt(f"Say something about item {i}.") for i in range(16)]
    ids = [tok(p)["input_ids"] for p in prompts]
    cfg = ppo.PPOConfig(rollout_batch_size=16, rollout_micro_batch_size=4, response_len=6, rollout_seeding="per_chunk", seed=3)
    count_e = lambda ps, rs: torch.tensor([float(r.count("e")) for r in rs])  # noqa: E731

    def share(r: int, world: int):
        monkeypatch.setattr(distributed, "world_size", lambda: world)
        monkeypatch.setattr(distributed, "rank", lambda: r)
        return ppo.rollout_share(cfg, 2, torch.Generator())

    def as_rank(r: int, world: int):
        mine, generators = share(r, world)
        return ppo.rollout(policy, policy, value, count_e, tok, prompts[mine], ids[mine], cfg, generators)

    whole, texts = as_rank(0, 1)
    parts = [as_rank(r, 2) for r in (0, 1)]
    merged = ppo._merge([b for b, _ in parts], tok.pad_token_id)
    assert [t for _, ts in parts for t in ts] == texts
    for key in whole:
        assert torch.equal(merged[key], whole[key]), key
    # Rank 1 of 2 holds prompts 8..15: the whole batch's chunks 2 and 3, with their generators.
    mine, generators = share(1, 2)
    assert (mine.start, mine.stop) == (8, 16) and len(generators) == 2
    assert torch.equal(generators[0].get_state(), ppo.chunk_generator(3, 2, 2).get_state())


SYNCED_WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    from afarm import distributed
    from afarm.models.generate import GenerationConfig, _generate_batch
    from afarm.models.lm import load_model

    distributed.init_process_group(2, "gloo", timeout_s=30)
    rank = distributed.rank()
    model, tok = load_model(sys.argv[1], dtype="float32", rank0_only=True)
    model = distributed.prepare_model(model, train=False)
    ids = torch.tensor([tok("Tell me about red.")["input_ids"]] * 3)
    cfg = GenerationConfig(max_new_tokens=12, do_sample=True, temperature=1.5, top_p=1.0)
    # each rank samples with other generators: unsynced, the ranks would stop at different steps (a hang)
    # or return different texts; synced, every rank takes rank 0's tokens
    gens = [torch.Generator().manual_seed(100 * rank + k) for k in range(3)]
    out = _generate_batch(model, ids, torch.ones_like(ids), cfg, gens, tok.eos_token_id)
    print(json.dumps({"rank": rank, "out": out}))
    distributed.destroy_process_group()
    """
)


def test_a_sharded_model_generating_the_same_batch_on_every_rank_follows_rank_0(inputs, tmp_path):
    outs = {r["rank"]: r["out"] for r in run_worker(SYNCED_WORKER, tmp_path, inputs / "sft")}
    assert outs[0] == outs[1] and any(outs[0])
