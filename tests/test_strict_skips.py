"""The strict switch itself: the same skipping test passes as a skip locally and fails in CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _run(tmp_path: Path, ci: str | None, *flags: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n\n"
        "def test_needs_a_tool():\n    pytest.skip('slurm-wlm not installed')\n\n"
        "@pytest.mark.xfail(reason='known')\ndef test_known_bug():\n    assert False\n\n"
        "def test_fine():\n    assert True\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH")) if p)
    if ci is not None:
        env["CI"] = ci
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "strict_skips", "-p", "no:cacheprovider", str(tmp_path / "test_sample.py"), *flags]
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)


def test_a_skip_is_a_skip_locally(tmp_path):
    result = _run(tmp_path, None)
    assert result.returncode == 0 and "1 passed, 1 skipped, 1 xfailed" in result.stdout, result.stdout


def test_a_skip_fails_in_ci_with_its_reason(tmp_path):
    for ci, flags in (("true", ()), (None, ("--strict-skips",))):
        result = _run(tmp_path, ci, *flags)
        assert result.returncode == 1, result.stdout
        assert "1 failed, 1 passed, 1 xfailed" in result.stdout  # the xfail stays an xfail
        assert "strict mode (CI): a skipped test is a failure: slurm-wlm not installed" in result.stdout


def test_a_file_skipped_at_collection_fails_in_ci(tmp_path):
    (tmp_path / "test_sample.py").write_text("import pytest\n\ndef test_fine():\n    assert True\n")
    (tmp_path / "test_module_skip.py").write_text(
        "import pytest\n\npytest.importorskip('a_module_that_is_not_installed')\n\ndef test_never_runs():\n    assert True\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH")) if p)
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "strict_skips", "-p", "no:cacheprovider", str(tmp_path)]
    local = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert local.returncode == 0 and "1 passed, 1 skipped" in local.stdout, local.stdout
    for extra in ([], ["-n", "2"]):  # also under xdist, as scripts/test.sh runs the suite
        ci = subprocess.run(argv + extra, capture_output=True, text=True, env={**env, "CI": "true"}, cwd=tmp_path, timeout=120)
        assert ci.returncode == 1, ci.stdout
        assert "1 passed" in ci.stdout  # the other tests still ran
        assert "strict mode (CI): a skipped test file is a failure: test_module_skip.py: could not import 'a_module_that_is_not_installed'" in ci.stdout, ci.stdout
