"""The Snakefile is lint-clean: every rule has a log (logs/<stage>.log, written through the launcher's --tee)
and names the one conda environment; a stage's log holds its output, and a failed stage's log names the
stage, its command and the error."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from afarm import dag
from afarm.stages import _tee
from pipeline_helpers import copy_repo, run, sh


@pytest.fixture
def workspace(repo, shared, tmp_path):
    work = tmp_path / "repo"
    copy_repo(repo, work)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["paths"]["shared_data"] = str(shared)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return work


def test_snakemake_lint_reports_nothing(workspace):
    result = run("snakemake --lint", workspace, check=False)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "Lints for" not in out and "Congratulations, your workflow is in a good condition!" in out
    # the oldest Snakemake the Snakefile accepts is the one pyproject.toml requires
    import tomllib

    floor = re.search(r'^min_version\("([\d.]+)"\)', (workspace / "Snakefile").read_text(), flags=re.M)
    deps = tomllib.loads((workspace / "pyproject.toml").read_text())["project"]["dependencies"]
    assert floor and f"snakemake>={floor.group(1)}" in deps


def test_every_rule_logs_to_its_file_through_the_launcher_and_names_the_conda_env(workspace, shared):
    out = sh("snakemake -n -p --forceall --cores 1", workspace)
    blocks = {m.group(1): block for block in re.split(r"^(?=(?:local)?rule )", out, flags=re.M)
              if (m := re.match(r"rule (\w[\w-]*):", block))}
    assert set(blocks) - {"all"} == {s.name for s in dag.STAGES}
    for stage in dag.STAGES:
        block = blocks[stage.name]
        assert f"    log: logs/{stage.name}.log\n" in block, stage.name
        shell = re.search(r"^Shell command: (.*)$", block, flags=re.M).group(1).strip()
        # the stage's dvc.yaml command, with the rule's threads and its log file as the launcher's options
        assert shell == f"python -m afarm.stages --threads 1 --tee logs/{stage.name}.log {stage.arguments(str(shared))}", shell
    snakefile = (workspace / "Snakefile").read_text()
    assert re.search(r'^ENV = "workflow/envs/afarm.yaml"$', snakefile, flags=re.M)
    assert re.search(r"^        conda:\n            ENV\n", snakefile, flags=re.M)  # in the one rule template
    assert (workspace / "workflow" / "envs" / "afarm.yaml").is_file()
    assert "/logs/" in (workspace / ".gitignore").read_text().splitlines()


def test_a_stage_log_has_its_output_and_a_failed_stage_log_names_stage_command_and_error(workspace):
    done = run("snakemake data --cores 1", workspace)
    log = (workspace / "logs" / "data.log").read_text()
    first, *rest = log.splitlines()
    assert first.startswith("# stage data: python -m afarm.stages --threads 1 data --instructions data/raw/instructions.jsonl.gz ")
    said = re.search(r"afarm\.stages\.data: sft: \d+ rows -> data/splits/sft\.json", log)  # the stage's own output ...
    assert said and said.group(0) in done.stdout + done.stderr  # ... also on the terminal
    assert "failed" not in log

    bad = run("snakemake data --cores 1 --forcerun data --config 'data={eval_limit: many}'", workspace, check=False)
    assert bad.returncode != 0
    lines = (workspace / "logs" / "data.log").read_text().splitlines()
    assert lines[0].startswith("# stage data: python -m afarm.stages --threads 1 data ") and lines[0].endswith(".yaml")
    assert "field 'data.eval_limit': expected int | None, got str 'many'" in lines[-2]  # the error
    assert lines[-1] == f"error: stage data failed (exit 2): {lines[0].split(': ', 1)[1]}"
    assert "logs/data.log" in bad.stdout + bad.stderr  # Snakemake points at it


def test_tee_option_is_split_from_the_launcher_options_only():
    argv = ["--threads", "2", "--tee", "logs/sft_52k.log", "sft", "--out", "models/sft_52k", "--log", "results/curves/sft_52k.csv"]
    log, rest = _tee.split_tee(argv)
    assert log == "logs/sft_52k.log" and rest == ["--threads", "2", "sft", "--out", "models/sft_52k", "--log", "results/curves/sft_52k.csv"]
    assert _tee.split_tee(["data", "--tee", "x"]) == (None, ["data", "--tee", "x"])  # a stage flag is the stage's
    by_name = {s.name: s for s in dag.STAGES}
    for name in ("sft", "sft_52k", "generate_dpo_sim", "annotate_human_gpt4"):
        stage = by_name[name]
        assert _tee.stage_name(["--threads", "1", *stage.arguments("/bundle").split()]) == name


def test_a_cancelled_teed_stage_is_stopped_and_its_log_says_so(tmp_path):
    """SIGTERM to the --tee parent (a cancelled job) reaches the stage process; the log ends with the signal."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from pipeline_helpers import env
    from test_launch import REPO, _write_training_inputs

    _write_training_inputs(tmp_path)
    argv = [sys.executable, "-m", "afarm.stages", "--threads", "1", "--tee", "logs/base_model.log", "base_model",
            "--unlabeled", "train.json", "--validation", "validation.json", "--out", "model", "--metrics", "m.json", "--log", "c.csv"]
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env(base={**os.environ, "PYTHONPATH": str(REPO / "src")}),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "logs" / "base_model.log"
    deadline = time.monotonic() + 60
    while not log.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # the stage process is importing torch
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    last = log.read_text().splitlines()[-1]
    assert last.startswith("error: stage base_model failed (signal 15): python -m afarm.stages --threads 1 base_model --unlabeled train.json")
    time.sleep(0.5)
    left = []  # processes still working in this folder: the stage process would be one
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.readlink(entry / "cwd") == str(tmp_path):
                left.append(entry.name)
        except OSError:
            continue
    assert left == []
    assert not (tmp_path / "model").exists()
