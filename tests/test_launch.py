"""The stage launcher (``python -m afarm.stages <module>``): one environment under every engine.

Unit tests of the environment and process count it computes, and one real check that it makes a
stage's bytes independent of the caller's environment: the same short training run twice through
the launcher, once from an environment that picks other CPU kernels and thread counts (ATen's
generic kernels, MKL's SSE-compatible path, 2 threads), gives identical bytes -- while the stage
module run directly from those two environments does not (so the kernel path really matters on
this machine, and the test can fail).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from afarm import distributed
from afarm.config import load_params
from afarm.io import InputError
from afarm import launch
from afarm.stages import _cli, _launch

REPO = Path(__file__).resolve().parents[1]


def params(tmp_path: Path, launch: dict | None = None, scale: str = "tiny") -> dict:
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["scale"] = scale
    data["launch"].update(launch or {})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_params(path)


def test_environment_pins_threads_kernels_and_hash_seed(tmp_path):
    base = {"OMP_NUM_THREADS": "8", "ATEN_CPU_CAPABILITY": "default", "PATH": "/bin"}
    env = launch.environment(params(tmp_path), base=base, machine="x86_64")
    assert env["PATH"] == "/bin"  # the rest of the caller's environment is kept
    assert env["PYTHONHASHSEED"] == "0"
    assert [env[v] for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")] == ["1", "1", "1"]
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["MKL_CBWR"] == "AVX2" and env["OPENBLAS_CORETYPE"] == "Haswell"
    # the x86 kernel pins mean nothing elsewhere; "native" and a null thread count leave the caller's values
    assert "MKL_CBWR" not in launch.environment(params(tmp_path), base={}, machine="aarch64")
    paper = launch.environment(params(tmp_path, scale="paper"), base=base, machine="x86_64")
    assert paper["OMP_NUM_THREADS"] == "8" and paper["ATEN_CPU_CAPABILITY"] == "default" and "MKL_CBWR" not in paper


def test_process_count_follows_the_stage_table(tmp_path, monkeypatch):
    from afarm import dag

    assert launch.processes("annotate", params(tmp_path, scale="paper")) == 1  # not a distributed stage
    monkeypatch.setattr(dag, "DISTRIBUTED", frozenset({"sft"}))
    assert launch.processes("sft", params(tmp_path)) == 1  # tiny: one process
    assert launch.processes("sft", params(tmp_path, scale="paper")) == dag.GPU_TRAIN.gpus  # one per reserved GPU
    assert launch.processes("sft", params(tmp_path, {"processes": 2})) == 2
    cmd = _launch.command("sft", ["--out", "x"], params(tmp_path, {"processes": 2}))
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert cmd[5:] == ["-m", "afarm.stages.sft", "--", "--out", "x"]  # "--": torchrun leaves the stage's flags alone
    assert _launch.command("annotate", ["--out", "x"], params(tmp_path))[1:] == ["-m", "afarm.stages.annotate", "--out", "x"]


def test_pinned_threads_win_and_unpinned_threads_follow_the_granted_cpus(tmp_path, monkeypatch):
    from afarm import dag

    monkeypatch.setattr(dag, "DISTRIBUTED", frozenset({"sft"}))
    pinned, free = params(tmp_path), params(tmp_path, {"num_threads": None})  # tiny pins 1; paper: null
    assert launch.threads("annotate", pinned, granted=8) == 1  # the tiny bytes depend on the pin
    assert launch.threads("annotate", free, granted=8) == 8
    assert launch.threads("annotate", free, granted=None) is None  # nothing granted: the libraries' default
    two = params(tmp_path, {"num_threads": None, "processes": 2})
    assert launch.threads("sft", two, granted=8) == 4 and launch.threads("sft", two, granted=1) == 1  # shared by the processes
    # SLURM's allocation when no engine passed --threads (dvc repro inside a job); --threads wins over it
    slurm = {"SLURM_CPUS_PER_TASK": "6", "OMP_NUM_THREADS": "1"}
    assert launch.environment(free, base=slurm, machine="x86_64", module="annotate")["OMP_NUM_THREADS"] == "6"
    assert launch.environment(free, base=slurm, machine="x86_64", module="annotate", granted=3)["MKL_NUM_THREADS"] == "3"
    assert launch.environment(pinned, base=slurm, machine="x86_64", module="annotate", granted=3)["OPENBLAS_NUM_THREADS"] == "1"
    # what a rule asks Snakemake / SLURM for: the pinned threads of every process, else the stage table's CPUs
    assert launch.cpus("sft", params(tmp_path, {"processes": 2}), reserved=16) == 2
    assert launch.cpus("sft", free, reserved=16) == 16


PROBE = """import atexit, json, os, sys

def _record():  # at the stage process's exit: the torch thread count it ran with
    if "torch" in sys.modules:
        with open(os.environ["THREADS_PROBE"], "a") as f:
            f.write(json.dumps({"argv": sys.argv[:1], "torch_threads": sys.modules["torch"].get_num_threads()}) + "\\n")

atexit.register(_record)
"""


def test_granted_threads_reach_torch_in_the_stage_process(tmp_path):
    """`python -m afarm.stages --threads 1 base_model ...` (the Snakefile passes the rule's threads) with
    unpinned params: the stage process's torch runs 1 thread (a sitecustomize hook reads
    torch.get_num_threads() as it exits), not torch's default of one per core. (A count above the
    machine's cores would show the cores: torch caps OMP_NUM_THREADS there.)"""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: torch's default is 1 thread anyway, the check would prove nothing")
    _write_training_inputs(tmp_path)
    data = yaml.safe_load((tmp_path / "params.yaml").read_text())
    data["launch"]["num_threads"] = None
    data["base_model"]["train"]["num_threads"] = None
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "sitecustomize.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k not in (*launch.THREAD_VARIABLES, launch.SLURM_CPUS)}
    env.update(PYTHONPATH=os.pathsep.join([str(tmp_path / "probe"), str(REPO / "src")]), THREADS_PROBE=str(tmp_path / "threads.jsonl"))
    argv = [sys.executable, "-m", "afarm.stages", "--threads", "1", "base_model", "--unlabeled", "train.json",
            "--validation", "validation.json", "--out", "model", "--metrics", "metrics.json"]
    result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    probes = [json.loads(line) for line in (tmp_path / "threads.jsonl").read_text().splitlines()]
    assert probes == [{"argv": [str(REPO / "src" / "afarm" / "stages" / "base_model.py")], "torch_threads": 1}]


@pytest.mark.parametrize(
    "section, field",
    [({"cpu_kernels": "avx512"}, "launch.cpu_kernels"), ({"processes": 0}, "launch.processes"),
     ({"backend": "mpi"}, "launch.backend"), ({"num_treads": 1}, "launch.num_treads")],
)
def test_bad_launch_params_name_the_field(tmp_path, section, field):
    with pytest.raises(InputError, match=field.replace(".", r"\.")):
        launch.launch_config(params(tmp_path, section))


def test_a_stage_promised_several_processes_that_finds_itself_alone_stops(tmp_path, monkeypatch):
    from afarm import dag

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(dag, "DISTRIBUTED", frozenset({"sft"}))
    with pytest.raises(distributed.DistributedError, match="should run in 2 processes but was started alone"):
        with _cli._processes("sft", params(tmp_path, {"processes": 2})):
            pass
    monkeypatch.setenv("WORLD_SIZE", "2")  # a non-distributed stage started in 2 processes
    with pytest.raises(distributed.DistributedError, match="should run in 1 processes but was started in 2"):
        with _cli._processes("annotate", params(tmp_path)):
            pass


def test_unknown_module_is_a_usage_error():
    result = subprocess.run([sys.executable, "-m", "afarm.stages", "sftt"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "stage modules:" in result.stderr and "'sftt'" in result.stderr
    result = subprocess.run([sys.executable, "-m", "afarm.stages", "--threads", "0", "data"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "--threads takes a positive integer, got '0'" in result.stderr


def _write_training_inputs(root: Path) -> None:
    """A base-model stage small enough to train in seconds (inputs: instruction/output records)."""
    words = "the a model data small large answer question write list explain give three reasons".split()
    rows = [{"instruction": " ".join(words[(i * k) % len(words)] for k in range(1, 6)),
             "input": "", "output": " ".join(words[(i + k) % len(words)] for k in range(8))} for i in range(48)]
    (root / "train.json").write_text(json.dumps(rows))
    (root / "validation.json").write_text(json.dumps(rows[:8]))
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["base_model"]["model"].update(vocab_size=300, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    data["base_model"]["train"].update(num_epochs=1, batch_size=8, micro_batch_size=8, max_length=64)
    (root / "params.yaml").write_text(yaml.safe_dump(data))


def _train(root: Path, out: str, env: dict, launcher: bool) -> str:
    module = ["afarm.stages", "base_model"] if launcher else ["afarm.stages.base_model"]
    argv = [sys.executable, "-m", *module, "--unlabeled", "train.json", "--validation", "validation.json",
            "--out", out, "--metrics", f"{out}.json", "--log", f"{out}.csv"]
    result = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return hashlib.md5((root / out / "model.safetensors").read_bytes() + (root / f"{out}.csv").read_bytes()).hexdigest()  # weights and training curve


@pytest.mark.slow  # trains a model four times (half a minute)
@pytest.mark.skipif(os.uname().machine not in ("x86_64", "AMD64"), reason="CPU kernel paths are x86's")
def test_launcher_bytes_do_not_depend_on_the_callers_kernels_or_threads(tmp_path):
    _write_training_inputs(tmp_path)
    src = str(REPO / "src")
    clean = {k: v for k, v in os.environ.items() if k not in (*launch.THREAD_VARIABLES, *launch.KERNEL_VARIABLES["avx2"])}
    clean["PYTHONPATH"] = os.pathsep.join(p for p in (src, clean.get("PYTHONPATH")) if p)
    # Another machine, simulated: generic ATen kernels, MKL's SSE-compatible path, two threads.
    other = {**clean, "ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    pinned = {**clean, **launch.KERNEL_VARIABLES["avx2"], "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    direct_pinned, direct_other = _train(tmp_path, "dp", pinned, launcher=False), _train(tmp_path, "do", other, launcher=False)
    assert direct_pinned != direct_other, "the kernel path made no difference here: this test would prove nothing"
    # Through the launcher, both environments give the pinned bytes.
    assert _train(tmp_path, "lc", clean, launcher=True) == _train(tmp_path, "lo", other, launcher=True) == direct_pinned


def test_a_plan_that_does_not_fit_stops_before_any_work(tmp_path):
    """PPO's four 7B models on one 80 GB device: one clear line, exit 2, nothing started (no torch)."""
    p = params(tmp_path, {"device_memory_gb": 80, "processes": 1}, scale="paper")
    with pytest.raises(InputError, match="stage 'ppo' needs .* GB per device, 80 GB available"):
        _launch.check_memory("ppo", p)
    assert _launch.check_memory("annotate", p) is None  # holds no model
    out = tmp_path / "ppo_model"
    argv = [sys.executable, "-X", "importtime", "-m", "afarm.stages", "ppo", "--params", str(tmp_path / "params.yaml"), "--out", str(out)]
    result = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    errors = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert result.returncode == 2 and len(errors) == 1 and "memory plan: stage 'ppo'" in errors[0], errors
    assert "| torch\n" not in result.stderr and not out.exists()  # stopped before importing torch or writing


def test_no_sync_accumulation_reaches_the_stage_environment(tmp_path):
    """launch.no_sync_accumulation is passed to the stage processes under the name afarm.distributed reads."""
    assert launch.NO_SYNC_VARIABLE == distributed.NO_SYNC_VARIABLE
    assert launch.environment(params(tmp_path), base={})[launch.NO_SYNC_VARIABLE] == "0"  # default: reduce every micro-batch
    assert launch.environment(params(tmp_path, {"no_sync_accumulation": True}), base={})[launch.NO_SYNC_VARIABLE] == "1"


def test_checkpoints_go_under_paths_checkpoints_or_its_default(tmp_path, monkeypatch):
    """A params file whose paths section leaves checkpoints out (as many do) still gets a checkpoint folder:
    PathsConfig's default, under the repository root (DVC_ROOT when DVC runs the stage)."""
    import argparse
    from dataclasses import dataclass

    @dataclass
    class Cfg:
        checkpoint_every: int = 0

    monkeypatch.delenv("DVC_ROOT", raising=False)
    args = argparse.Namespace(out="models/x", params="params.yaml")
    base = {"scale": "tiny", "_path": "params.yaml"}
    partial = _cli.checkpoints({**base, "paths": {"shared_data": "/data"}}, "sft", args, Cfg(), [], 5)
    assert partial.folder.parent == Path(".checkpoints") / "sft" and partial.every == 5
    named = _cli.checkpoints({**base, "paths": {"checkpoints": str(tmp_path / "ck")}}, "sft", args, Cfg(), [], 5)
    assert named.folder.parent == tmp_path / "ck" / "sft"
    assert named.folder.name == partial.folder.name  # the key: flags, config and inputs, not where it is stored
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert _cli.checkpoints(base, "sft", args, Cfg(), [], 5).folder.parent == tmp_path / ".checkpoints" / "sft"
