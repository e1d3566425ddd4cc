"""Resume: a PPO run and an SFT run in 2 gloo processes killed with SIGKILL mid-run continue from their
last checkpoint when the same command runs again, and end with the weights of an uninterrupted run, bit
for bit.

``ppo.checkpoint_every: 1`` saves after every step (``afarm.checkpoint``: DCP shards of policy, value
model and AdamW, plus scheduler, KL controller, prompt stream, generators and the log) under
``.checkpoints/`` beside the run, outside the stage's outputs. Every random draw of a step comes from
state the checkpoint holds, and fp32 loads what was saved exactly, so the resumed run repeats the
uninterrupted one's arithmetic. A corrupt newest checkpoint is skipped with one line and the older one
is used; the same checkpoints also resume in one process (DCP reshards; 1 and 2 processes differ by
float rounding only, as in tests/test_distributed_rl.py).
"""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_distributed_rl import COMMON, env, inputs  # noqa: E402,F401  (inputs: the module's fixture)

pytestmark = pytest.mark.slow
SECTION = {**COMMON, "kl_coef": 0.05, "max_steps": 4, "precision": "fp32", "checkpoint_every": 1}


SFT = {"learning_rate": 1e-3, "num_epochs": 1, "batch_size": 4, "micro_batch_size": 1, "warmup_ratio": 0.25, "lr_scheduler": "cosine",
       "max_length": 256, "seed": 0, "num_threads": 1, "show_progress": False, "precision": "fp32", "checkpoint_every": 2}


def command(inputs: Path, out: Path, processes: int, stage: str = "ppo") -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    params = {"scale": "tiny", "launch": {"processes": processes, "backend": "gloo", "timeout_s": 60, "num_threads": 1},
              "ppo": SECTION, "sft": {"train": SFT},
              "generate": {"max_new_tokens": 6, "do_sample": False, "batch_size": 2, "num_threads": 1, "show_progress": False}}
    (out / "params.yaml").write_text(yaml.safe_dump(params))
    if stage == "sft":  # the prompts file as training data (its outputs are "x"): 40 examples, 10 steps
        return [sys.executable, "-m", "afarm.stages", "sft", "--params", "params.yaml", "--base_model", str(inputs / "sft"),
                "--sft", str(inputs / "unlabeled.json"), "--validation", str(inputs / "unlabeled.json"), "--out", "model",
                "--metrics", "metrics.json", "--log", "log.csv"]
    return [sys.executable, "-m", "afarm.stages", "ppo", "--params", "params.yaml", "--sft", str(inputs / "sft"),
            "--reward_model", str(inputs / "rm"), "--unlabeled", str(inputs / "unlabeled.json"), "--out", "model",
            "--metrics", "metrics.json", "--plot", "curves.png", "--log", "log.csv", "--preference_set", "sim"]


def run(cmd: list[str], out: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=out, env=env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-5000:]
    return result


def kill_after(cmd: list[str], out: Path, step: int, stage: str = "ppo") -> None:
    """Start ``cmd`` and SIGKILL it and every process it started once checkpoint ``step`` is complete."""
    proc = subprocess.Popen(cmd, cwd=out, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while not list((out / ".checkpoints").glob(f"{stage}/*/step_{step}/COMPLETE")):
        assert proc.poll() is None, "the run ended before its checkpoint"
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.05)
    tree = descendants(proc.pid)  # torchrun starts its workers in sessions of their own: kill every process, as a node dies
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    while any(Path(f"/proc/{pid}").exists() and "zombie" not in state(pid) for pid in tree[1:]):
        time.sleep(0.05)
    assert not (out / "model").exists()  # killed: no output written


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            children.setdefault(int(stat.read_text().rsplit(")", 1)[1].split()[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


def state(pid: int) -> str:
    with contextlib.suppress(OSError):
        return {"Z": "zombie", "X": "dead"}.get(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0], "running")
    return "dead"


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model" / "model.safetensors")


def curve(out: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader((out / "log.csv").open())]


@pytest.fixture(scope="module")
def uninterrupted(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("whole")
    run(command(inputs, out, 2), out)
    assert not list((out / ".checkpoints").glob("ppo/*"))  # a finished run removes its checkpoints
    return out


def test_killed_run_resumes_and_ends_with_the_same_weights(inputs, uninterrupted, tmp_path):
    cmd = command(inputs, tmp_path, 2)
    kill_after(cmd, tmp_path, step=2)
    result = run(cmd, tmp_path)
    assert "resuming from checkpoint" in result.stderr and "(step " in result.stderr
    a, b = weights(uninterrupted), weights(tmp_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert curve(uninterrupted) == curve(tmp_path)  # every step's statistics, before and after the kill
    assert not (tmp_path / ".checkpoints" / "ppo").exists() or not any((tmp_path / ".checkpoints" / "ppo").iterdir())


def test_a_corrupt_checkpoint_is_skipped_and_one_process_resumes_two(inputs, uninterrupted, tmp_path):
    cmd = command(inputs, tmp_path, 2)
    kill_after(cmd, tmp_path, step=2)
    steps = sorted(tmp_path.glob(".checkpoints/ppo/*/step_*"), key=lambda p: int(p.name[5:]))
    assert len(steps) <= 2 and (steps[-1] / "COMPLETE").is_file()  # the last two are kept
    newest = steps[-1]
    for shard in (newest / "dcp").glob("*.distcp"):
        shard.write_bytes(shard.read_bytes()[:100])  # truncated, as by a full disk
    result = run(command(inputs, tmp_path, 1), tmp_path)  # and resumed in one process: DCP reshards
    skipped = [line for line in result.stderr.splitlines() if "unreadable, skipped" in line]
    assert len(skipped) == 1 and str(newest) in skipped[0]
    assert f"(step {int(newest.name[5:]) - 1})" in result.stderr  # the older checkpoint
    a, b = weights(uninterrupted), weights(tmp_path)
    # one process sums the gradients in another order than two: float rounding (see test_distributed_rl.py)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def test_killed_sft_resumes_and_ends_with_the_same_weights(inputs, tmp_path):
    whole = tmp_path / "whole"
    run(command(inputs, whole, 2, "sft"), whole)
    killed = tmp_path / "killed"
    cmd = command(inputs, killed, 2, "sft")
    kill_after(cmd, killed, step=4, stage="sft")
    result = run(cmd, killed)
    assert "resuming from checkpoint" in result.stderr
    a, b = weights(whole), weights(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert curve(whole) == curve(killed) and len(curve(whole)) == 10  # losses, learning rates, gradient norms of all 10 steps
