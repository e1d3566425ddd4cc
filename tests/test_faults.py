"""Faults that clusters produce: a job killed with SIGKILL, a corrupted cache file, an
unwritable results folder, a full disk.

* SIGKILL of Snakemake and the running stage (a node dying mid-job): no output is left that
  looks finished; Snakemake's incomplete-output marker remains, so even a non-atomic partial
  file would be refused; ``dvc status`` sees the stage changed (dvc.lock disagrees); after
  ``snakemake --unlock`` the rerun of the killed job writes the bytes of the undisturbed run.
* A process killed while our ``atomic_write`` / ``atomic_dir`` is writing leaves the previous
  output intact.
* A corrupted object in the DVC cache is detected by ``dvc status`` (re-hashed: "not in
  cache"), never checked out, and ``dvc pull`` restores the right bytes.
* Unwritable results folder (a read-only bind mount if we may mount, and a path whose parent
  is a regular file, which root cannot write either) and full disk (a 64 KiB tmpfs if we may
  mount, else ENOSPC injected into the write): one error line naming the path, exit code 1,
  every previous output intact (a stage commits its outputs together), no temporary file left.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import yaml

from afarm import io as afarm_io
from afarm.io import OutputError, atomic_write, read_json, write_json
from afarm.stages import _cli
from pipeline_helpers import built_workspace, clone_workspace, env, run, sh

STAGE_TIMEOUT = 600


def _pids_with(fragment: str, cwd: Path) -> list[int]:
    """Processes whose command line contains ``fragment`` and that run in ``cwd`` (ours only)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            try:
                here = (entry / "cwd").resolve() == cwd.resolve()
            except OSError:
                continue
            if fragment in cmdline and here and int(entry.name) != os.getpid():
                pids.append(int(entry.name))
    return pids


# ------------------------------------------------------------------ SIGKILL
@pytest.mark.slow
def test_sigkill_mid_stage_leaves_nothing_that_looks_finished(repo, shared, tmp_path, tmp_path_factory):
    built = built_workspace(repo, shared, tmp_path_factory)
    work = clone_workspace(built, tmp_path / "work")
    # sft_52k: the longest training stage of the reduced DAG (a few seconds) with few stages after it
    expected = (built / "models" / "sft_52k" / "model.safetensors").read_bytes()

    proc = subprocess.Popen("snakemake --cores 2 --forcerun sft_52k", shell=True, cwd=work, env=env(work),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + STAGE_TIMEOUT
        stage_pids: list[int] = []
        while not stage_pids and time.time() < deadline and proc.poll() is None:
            stage_pids = _pids_with("afarm.stages.sft ", work)
            time.sleep(0.1)
        assert stage_pids, "the sft_52k stage never started"
        time.sleep(3.0)  # inside the stage: imports, model loading, training
        assert proc.poll() is None, "snakemake finished before it could be killed"
        for pid in [proc.pid, *stage_pids]:  # the node dies: everything at once
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # our own session (start_new_session)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    for pid in _pids_with("afarm.stages.sft ", work):  # anything of ours that survived
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    sft = work / "models" / "sft_52k"
    # Nothing looks finished: the folder is gone (Snakemake removed the old one before the job)
    # and atomic_dir never renamed its temporary folder into place.
    assert not (sft / "model.safetensors").exists()
    assert list((work / ".snakemake" / "incomplete").iterdir()), "Snakemake's incomplete marker is missing"
    assert "sft_52k:" in sh("dvc status", work)  # dvc.lock says the stage's outputs are not what it recorded

    # A non-atomic tool would have left a partial file: Snakemake refuses to trust it.
    sft.mkdir(exist_ok=True)
    (sft / "model.safetensors").write_bytes(expected[: len(expected) // 2])
    (sft / "config.json").write_text("{}")
    sh("snakemake --unlock", work)
    dry = run("snakemake --cores 2 -n --rerun-triggers mtime", work, check=False)
    text = dry.stdout + dry.stderr
    assert dry.returncode != 0 and "incomplete" in text.lower(), text[-2000:]

    # The rerun of the killed job (the profiles set rerun-incomplete) writes the undisturbed run's bytes.
    # Only that job: a plain `snakemake` would also redo the ~20 jobs after it (their inputs are newer
    # now), the same bytes again (the end-to-end test checks reruns from scratch) for minutes of CPU.
    sh("snakemake sft_52k --cores 2 --rerun-incomplete --quiet", work)
    assert (sft / "model.safetensors").read_bytes() == expected  # deterministic: the same bytes
    assert not list((work / ".snakemake" / "incomplete").iterdir()), "Snakemake still marks outputs incomplete"
    # Every recorded hash holds again: sft_52k's outputs and, through them, every stage after it.
    assert "up to date" in sh("dvc status", work)
    # Snakemake sees nothing incomplete or missing: it would redo the jobs after sft_52k only because the rerun's
    # outputs are newer than theirs.
    reasons = [line.split("reason:", 1)[1].strip() for line in sh("snakemake --cores 2 -n", work).splitlines() if "reason:" in line]
    assert reasons and all(r == "Updated input files: models/sft_52k" or r.startswith("Input files updated by another job")
                           for r in reasons), reasons


WRITER = """
import os, signal, sys
from afarm.io import atomic_dir, atomic_write
target = sys.argv[2]
if sys.argv[1] == "file":
    with atomic_write(target) as handle:
        handle.write('{"half": ')
        handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)
else:
    with atomic_dir(target) as tmp:
        (tmp / "model.safetensors").write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_sigkill_while_writing_keeps_the_previous_output(tmp_path, kind):
    target = tmp_path / ("out.json" if kind == "file" else "model")
    if kind == "file":
        write_json(target, {"previous": True})
    else:
        target.mkdir()
        (target / "model.safetensors").write_bytes(b"previous")
    result = subprocess.run([sys.executable, "-c", WRITER, kind, str(target)], env=env(), capture_output=True)
    assert result.returncode == -signal.SIGKILL
    if kind == "file":
        assert read_json(target) == {"previous": True}
    else:
        assert (target / "model.safetensors").read_bytes() == b"previous"
        assert sorted(p.name for p in target.iterdir()) == ["model.safetensors"]
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert leftovers and all(name.startswith(f".{target.name}.") for name in leftovers)  # hidden, never mistaken for output


# ------------------------------------------------------------------ DVC cache corruption
@pytest.mark.slow
def test_corrupted_dvc_cache_object_is_detected_and_repaired_by_pull(repo, shared, tmp_path, tmp_path_factory):
    work = clone_workspace(built_workspace(repo, shared, tmp_path_factory), tmp_path / "work")
    sh(f"dvc remote add -d backup {tmp_path / 'remote'} && dvc push -q", work)
    lock = yaml.safe_load((work / "dvc.lock").read_text())
    md5 = next(o["md5"] for s in lock["stages"].values() for o in s.get("outs", []) if o["path"] == "results/outputs/sft.json")
    obj = work / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    good = obj.read_bytes()
    obj.chmod(0o644)
    obj.write_bytes(good.replace(b'"output"', b'"outpvt"', 1))  # one flipped byte, same size

    status = sh("dvc status", work)
    assert "not in cache" in status and "results/outputs/sft.json" in status, status
    (work / "results" / "outputs" / "sft.json").unlink()
    checkout = run("dvc checkout results/outputs/sft.json", work, check=False)
    assert checkout.returncode != 0 and "results/outputs/sft.json" in checkout.stdout + checkout.stderr
    assert not (work / "results" / "outputs" / "sft.json").exists()  # the corrupted bytes were never checked out
    sh("dvc pull -q", work)
    assert (work / "results" / "outputs" / "sft.json").read_bytes() == good
    assert "up to date" in sh("dvc status", work)


# ------------------------------------------------------------------ unwritable folder, full disk
def _leaderboard_run(tmp_path: Path, shared: Path, out_dir: Path, capsys) -> tuple[int, str]:
    from afarm.stages import leaderboard

    rows = json.loads((shared / "alpaca_eval/results/text_davinci_003/model_outputs.json").read_text())[:8]
    annotations = [{"instruction": r["instruction"], "output_1": r["output"], "output_2": "x " * i, "generator_1": "text_davinci_003",
                    "generator_2": "m", "preference": 1.0 + (i % 2), "annotator": "a"} for i, r in enumerate(rows)]
    write_json(tmp_path / "annotations.json", annotations)
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())  # the repo's, as is
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    argv = ["--params", str(tmp_path / "params.yaml"), "--annotations", str(tmp_path / "annotations.json")]
    for flag, name in (("csv", "lb.csv"), ("markdown", "lb.md"), ("plot", "lb.png"), ("metrics", "metrics.json")):
        argv += [f"--{flag}", str(out_dir / name)]
    capsys.readouterr()
    try:
        _cli.run(leaderboard.main, leaderboard.arguments(), argv)
    except SystemExit as stop:
        return int(stop.code), capsys.readouterr().err
    return 0, capsys.readouterr().err


def _error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@contextmanager
def _mount(args: list[str], target: Path):
    """Mount (root only); yields False if mounting is not permitted here."""
    target.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", *args, str(target)], capture_output=True).returncode != 0:
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def test_results_folder_under_a_regular_file(tmp_path, shared, capsys):
    """Root can write anywhere, but not below a regular file: the classic "results is a file" mistake."""
    (tmp_path / "results").write_text("I am a file\n")
    code, err = _leaderboard_run(tmp_path, shared, tmp_path / "results" / "tables", capsys)
    line = _error_line(err)
    assert code == 1
    assert "cannot write" in line and str(tmp_path / "results" / "tables") in line and "is not a folder" in line, line
    assert (tmp_path / "results").read_text() == "I am a file\n"


def test_read_only_results_folder(tmp_path, shared, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "lb.csv").write_text("previous\n")
    with _mount(["--bind", str(out)], out) as mounted:
        if not mounted:
            pytest.skip("mount not permitted here (needs root); the regular-file case covers unwritable paths")
        assert subprocess.run(["mount", "-o", "remount,bind,ro", str(out)], capture_output=True).returncode == 0
        code, err = _leaderboard_run(tmp_path, shared, out, capsys)
        line = _error_line(err)
        assert code == 1 and "cannot write" in line and str(out) in line and "not writable" in line, line
        assert (out / "lb.csv").read_text() == "previous\n"
        assert sorted(p.name for p in out.iterdir()) == ["lb.csv"]


def test_full_disk_keeps_the_previous_output(tmp_path, shared, capsys, monkeypatch):
    out = tmp_path / "small"
    with _mount(["-t", "tmpfs", "-o", "size=64k", "tmpfs"], out) as mounted:
        if not mounted:  # inject the failure the kernel would give instead

            def full(fd):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            monkeypatch.setattr(afarm_io.os, "fsync", full)
        (out / "lb.csv").write_text("previous\n")
        (out / "filler").write_bytes(b"\0" * (56 * 1024) if mounted else b"")  # leave less room than the plot needs
        code, err = _leaderboard_run(tmp_path, shared, out, capsys)
        line = _error_line(err)
        assert code == 1 and "cannot write" in line and str(out) in line and "disk is full" in line, line
        # outputs are committed together: the failed stage replaced none of them, wrote no new one
        assert (out / "lb.csv").read_text() == "previous\n"
        assert sorted(p.name for p in out.iterdir()) == ["filler", "lb.csv"]


def test_output_error_names_path_and_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "x.json"
    write_json(target, {"old": 1})

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(afarm_io.os, "fsync", full)
    with pytest.raises(OutputError, match=r"cannot write .*x\.json: No space left on device \(the disk is full\)"):
        with atomic_write(target) as handle:
            handle.write("new")
    monkeypatch.undo()
    assert read_json(target) == {"old": 1}
    assert os.listdir(tmp_path) == ["x.json"]
