"""bench/gpu_check.py, the first-GPU-hour check, runs here on the CPU at toy size: the same code path
(bf16_mixed with gradient checkpointing, SFT steps, two PPO steps with rollouts from the sharded policy,
data-parallel generation, save and reload) in one process, and prints its JSON report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_the_paper_path_at_toy_size_and_reports_every_phase(tmp_path):
    out = tmp_path / "report.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--size", "toy", "--out", str(out)],
                            capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["world_size"] == 1 and report["device"] == "cpu"
    for phase in ("sft", "ppo", "generate"):
        row = report[phase]
        assert row["tokens"] > 0 and row["tokens_per_second"] > 0 and row["seconds"] > 0, phase
        # on a CPU the measured bytes are the plan's tensor terms only (no allocator peak): never above the plan
        assert 0 < row["measured_bytes"] <= row["planned_bytes"], (phase, row)
    assert len(report["sft_losses"]) == 4 and len(report["ppo_scores"]) == 2
    assert report["reload"] == {"num_parameters": report["parameters"], "dtype": "torch.float32", "architecture": "LlamaForCausalLM"}
