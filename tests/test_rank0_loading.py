"""Loading once: among 2 gloo processes only rank 0 reads a checkpoint; rank 1 builds the model on the meta
device and receives its shards, and the sharded model holds exactly the checkpoint's weights.

The worker runs under ``torch.distributed.run`` with ``tests/rank0_guard`` on PYTHONPATH, whose
``sitecustomize.py`` makes every safetensors read fail on a rank other than 0. The worker first shows
the guard bites (rank 1's plain ``load_model`` fails), then prepares each kind of model the trainers
shard: a policy (fp32, trained), a frozen bf16 reference, a value model copied from a meta reward
model with the reward head, and a Quark policy grown by its control tokens. Gathered on rank 0, each
equals the same model loaded the plain way bit for bit, and rank 1's buffers (the rotary frequencies,
in no checkpoint) equal rank 0's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from afarm.methods.reward_model import init_reward_model, save_reward_model
from afarm.models.lm import ModelConfig, build_model, save_model
from afarm.models.tokenizer import train_tokenizer

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"

WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    from afarm import distributed
    from afarm.methods.ppo import ValueModel
    from afarm.methods.quark import add_reward_tokens
    from afarm.methods.reward_model import load_reward_model
    from afarm.models.lm import load_model

    distributed.init_process_group(2, "gloo", timeout_s=60)
    rank, sft, rm = distributed.rank(), sys.argv[1], sys.argv[2]
    report = {"rank": rank}
    try:
        load_model(sft)
        report["plain_load"] = "read"
    except RuntimeError as err:
        report["plain_load"] = str(err)

    def compare(name, build_sharded, build_plain, train, precision):
        model = distributed.prepare_model(build_sharded(), train=train, precision=precision)
        state = distributed.full_state_dict(model)
        buffers = distributed.all_gather_objects({k: v.float().tolist() for k, v in model.named_buffers()})
        if rank == 0:
            plain = build_plain()
            expected = plain.state_dict()
            if not train and precision == "bf16_mixed":
                expected = {k: v.to(torch.bfloat16) for k, v in expected.items()}
            report[name] = {
                "keys": sorted(state) == sorted(expected),
                "equal": all(torch.equal(state[k], expected[k]) for k in expected),
                "buffers_equal": buffers[0] == buffers[1] and len(buffers[0]) > 0,
            }

    compare("policy", lambda: load_model(sft, "float32", rank0_only=True)[0], lambda: load_model(sft, "float32")[0], True, "fp32")
    compare("reference", lambda: load_model(sft, "bfloat16", rank0_only=True)[0], lambda: load_model(sft, "bfloat16")[0], False, "bf16_mixed")
    compare("value", lambda: ValueModel.from_reward_model(load_reward_model(rm, rank0_only=True)[0], "reward").float(),
            lambda: ValueModel.from_reward_model(load_reward_model(rm)[0], "reward").float(), True, "bf16_mixed")

    def grown(rank0_only):
        model, tok = load_model(sft, "float32", rank0_only=rank0_only)
        add_reward_tokens(model, tok, 4, seed=3)
        return model

    compare("quark_policy", lambda: grown(True), lambda: grown(False), True, "fp32")
    if rank == 0:
        print(json.dumps(report))
    else:
        print(json.dumps({"rank": 1, "plain_load": report["plain_load"]}))
    distributed.destroy_process_group()
    """
)


def test_only_rank_0_reads_and_every_shard_is_the_checkpoint(tmp_path):
    tok = train_tokenizer([f"Item {i} is fine and red." for i in range(30)], vocab_size=301)
    sft = build_model(ModelConfig(hidden_size=36, num_layers=2, num_heads=2, intermediate_size=70, max_position_embeddings=128), tok)
    save_model(sft, tok, tmp_path / "sft")
    save_reward_model(init_reward_model(sft, tok, seed=0), tok, tmp_path / "rm")
    (tmp_path / "worker.py").write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(TESTS / "rank0_guard"), str(SRC), os.environ.get("PYTHONPATH", "")) if p)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(tmp_path / "worker.py"),
           str(tmp_path / "sft"), str(tmp_path / "rm")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-6000:]
    reports = {r["rank"]: r for r in (json.loads(line) for line in result.stdout.splitlines() if line.startswith("{"))}
    assert reports[0]["plain_load"] == "read"  # rank 0 may read
    assert "only rank 0 may" in reports[1]["plain_load"]  # the guard bites on rank 1
    for name in ("policy", "reference", "value", "quark_policy"):
        assert reports[0][name] == {"keys": True, "equal": True, "buffers_equal": True}, name
