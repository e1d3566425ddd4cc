"""The pinned environment: requirements/lock-cpu.txt (pip-compile), the conda file made from it, install.sh."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("lock", REPO / "scripts" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements" / "lock-cpu.txt").read_text().splitlines():
        if line and not line.startswith(("#", " ", "-")):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_the_conda_file_lists_exactly_the_locks_pins():
    assert load_script().main(["--check"]) == 0
    env = yaml.safe_load((REPO / "workflow" / "envs" / "afarm.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda = dict(entry.split("==") for entry in pip if not entry.startswith("-"))
    assert {canonicalize_name(k): v for k, v in conda.items()} == lock_pins()
    assert [e for e in pip if e.startswith("-")] == ["--extra-index-url https://download.pytorch.org/whl/cpu"]
    header = (REPO / "requirements" / "lock-cpu.txt").read_text()
    assert f"python={header.split('with Python ')[1].split()[0]}" in env["dependencies"]  # the lock's Python


def test_check_detects_a_stale_conda_file(tmp_path, monkeypatch):
    script = load_script()
    monkeypatch.setattr(script, "CONDA", tmp_path / "afarm.yaml")
    assert script.main([]) == 0 and script.main(["--check"]) == 0
    text = (tmp_path / "afarm.yaml").read_text()
    (tmp_path / "afarm.yaml").write_text(text.replace("transformers==", "transformers>="))
    assert script.main(["--check"]) == 1


def test_the_lock_pins_cpu_torch_and_the_committed_runs_transformers():
    pins = lock_pins()
    assert pins["torch"] == "2.13.0"  # matched by the CPU wheel 2.13.0+cpu; never another torch
    assert not [n for n in pins if n.startswith(("nvidia-", "triton", "cuda-"))]  # a CUDA build's companions
    source = (REPO / "requirements" / "lock-cpu.in").read_text()
    wanted = dict(re.findall(r"^([\w-]+)==(\S+)", source, flags=re.M))
    assert wanted == {"torch": "2.13.0", "transformers": "5.24.0"}
    assert all(pins[canonicalize_name(n)] == v for n, v in wanted.items())


def test_every_requirement_of_pyproject_is_pinned_within_its_range():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = lock_pins()
    for spec in [*project["dependencies"], *project["optional-dependencies"]["test"]]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, spec
        assert req.specifier.contains(Version(pins[name]), prereleases=True), (spec, pins[name])


def test_install_sh_installs_the_lock_unless_floating():
    text = (REPO / "scripts" / "install.sh").read_text()
    assert "lock=requirements/lock-cpu.txt" in text and 'python -m pip install --quiet -r "$lock"' in text
    assert '"${AFARM_FLOATING:-0}" = "1"' in text and "python -m pip install --quiet -e \".[test]\"" in text
    assert "grep -v '^torch==' requirements/lock-cpu.txt" in text  # a GPU torch already installed is kept
