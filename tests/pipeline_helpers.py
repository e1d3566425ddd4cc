"""Helpers shared by the tests that run the real (reduced) DAG in a temporary copy of the repo.

``make_workspace`` copies the repository's tracked and untracked-but-not-ignored files
(never data/splits, results, models or dvc.lock) into a fresh git repo and shrinks
params.yaml with ``REDUCED``: only params differ from the real tiny run, never code.

``built_workspace`` runs the reduced DAG once per test session (``snakemake`` then
``dvc commit``) and returns that folder; tests take a ``clone_workspace`` copy of it and
never modify the original, so several test modules share one DAG run. When the session collects a
test that uses it, ``conftest.py`` starts that build in a background thread as the session starts
(``start_build``), and ``built_workspace`` waits for it.

``start_fresh_repro`` / ``fresh_repro``: the end-to-end test's from-scratch ``dvc repro`` (one stage at
a time, on one core) in a workspace of its own with the same code and params. When the session will run
that test (``conftest.py`` sets ``PREFETCH_FRESH_REPRO``) it starts in the background as the session
starts, and the test waits for it.

Under pytest-xdist (the suite runs on several worker processes) each background run is started once per
session, by the worker that ``claim``s it first, in the folder all workers share (``shared_root``); it
writes a marker file when it ends, which a test in any worker waits for (``wait_for``), and the worker
that started it waits for it before it exits (``finish_background``).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

REDUCED = {
    "data": {"sizes": {"tiny": {"sft": 64, "preference": 16, "unlabeled": 128, "validation": 16}}, "eval_limit": 24},
    "base_model": {
        "model": {"vocab_size": 512, "hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64},
        "train": {"num_epochs": 1, "max_length": 128},
    },
    "sft": {"train": {"num_epochs": 1, "max_length": {"tiny": 128}}},
    "sft_52k": {"train": {"num_epochs": {"tiny": 1}, "max_length": {"tiny": 128}}},
    "generate": {"max_new_tokens": {"tiny": 16}},
    "preference_data": {"limit": {"tiny": 16}, "generation": {"max_new_tokens": {"tiny": 16}}},
    "reward_model": {"num_epochs": {"tiny": 1}, "eval_size": {"tiny": 4}, "max_length": {"tiny": 128}},
    "best_of_n": {"n": {"tiny": 2}, "generation": {"max_new_tokens": {"tiny": 16}}},
    "expert_iteration": {
        "limit": {"tiny": 8},
        "best_of_n": {"n": {"tiny": 2}, "generation": {"max_new_tokens": {"tiny": 16}}},
        "train": {"num_epochs": 1, "max_length": {"tiny": 128}},
    },
    "ppo": {"max_steps": {"tiny": 1}, "rollout_batch_size": {"tiny": 8}, "step_batch_size": {"tiny": 8}, "response_len": {"tiny": 16}},
    "quark": {"max_steps": {"tiny": 1}, "rollout_batch_size": {"tiny": 8}, "step_batch_size": {"tiny": 8}, "response_len": {"tiny": 16}},
    "dpo": {"eval_size": {"tiny": 4}, "train": {"max_steps": 2, "max_length": {"tiny": 128}}},
    "feedme": {"train": {"num_epochs": 1, "max_length": {"tiny": 128}}},
    "reward_conditioning": {"train": {"num_epochs": 1, "max_length": {"tiny": 128}}},
    "analyze_annotators": {"max_pairs": {"tiny": 60}, "n_seeds": {"tiny": 2}},
    "sim_vs_human": {"n_bootstrap": 200},
    "method_health": {"best_of_n": {"tiny": 2}, "max_length": {"tiny": 128}, "pairs_per_prompt": {"tiny": 2}, "policy_samples": {"tiny": 2}},
}


def _scaled(value) -> bool:
    from afarm.config import SCALES

    return isinstance(value, dict) and bool(value) and set(value) <= set(SCALES)


def merge(base: dict, extra: dict) -> dict:
    """Deep-merge ``extra`` into ``base``; ``{tiny: x}`` updates only the tiny side of a per-scale value
    (likewise any scales named), and a plain value replaces the whole per-scale value."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            if _scaled(base[key]) and _scaled(value):
                for scale, entry in value.items():
                    old = base[key].get(scale)
                    base[key][scale] = merge(old, entry) if isinstance(entry, dict) and isinstance(old, dict) else entry
            elif _scaled(base[key]):  # a plain mapping (e.g. data sizes) replaces every scale's value
                base[key] = value
            else:
                merge(base[key], value)
        else:
            base[key] = value
    return base


def env(cwd: Path | None = None, base: dict | None = None, **extra: str) -> dict:
    """The test environment; in a workspace, ``afarm`` is imported from the workspace's own
    src/ (not the editable install), so a run uses exactly the code that was copied. ``base``: the
    environment to start from (default this process's now; the background build passes the session's
    first, so a test's ``monkeypatch.setenv`` never reaches it)."""
    # No PYTHONHASHSEED or thread variables of our own: stages get them from the launcher, as users do.
    out = dict(os.environ if base is None else base)
    if cwd is not None and (Path(cwd) / "src" / "afarm").is_dir():
        out["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(cwd) / "src"), out.get("PYTHONPATH", "")) if p)
    bin_dir = str(Path(sys.executable).parent)
    out["PATH"] = bin_dir + os.pathsep + out.get("PATH", "")
    out.update(
        GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.com", GIT_COMMITTER_NAME="test",
        GIT_COMMITTER_EMAIL="test@example.com", DVC_NO_ANALYTICS="1",
    )
    out.update(extra)
    return out


def run(cmd: str, cwd: Path, check: bool = True, timeout: float | None = 2400, base: dict | None = None,
        **extra_env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, shell=True, cwd=cwd, env=env(cwd, base, **extra_env), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"`{cmd}` failed in {cwd} ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def sh(cmd: str, cwd: Path, base: dict | None = None, **extra_env: str) -> str:
    """Run a shell command; fail with its output if it fails; return stdout + stderr. (The timeout of
    `run` only stops a hung command: a whole reduced DAG takes 5-15 minutes on 2 loaded cores.)"""
    result = run(cmd, cwd, base=base, **extra_env)
    return result.stdout + result.stderr


def copy_repo(repo: Path, dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=repo, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        src = repo / name
        if src.is_file() and not name.startswith(("data/splits/", "results/", "models/")) and name != "dvc.lock":
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def write_params(work: Path, shared: Path, cache_dir: Path, extra: dict | None = None) -> dict:
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["paths"]["shared_data"] = str(shared)
    params["paths"]["cache_dir"] = str(cache_dir)
    merge(params, REDUCED)
    merge(params, extra or {})
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def make_workspace(repo: Path, shared: Path, work: Path, cache_dir: Path, extra: dict | None = None,
                   base: dict | None = None) -> Path:
    """A git repo at ``work`` with the project's files and the reduced params (nothing run yet)."""
    copy_repo(repo, work)
    write_params(work, shared, cache_dir, extra)
    sh("git init -q -b main && git add -A && git commit -qm reduced", work, base)
    return work


def out_hashes(lock_path: Path) -> dict[str, str]:
    lock = yaml.safe_load(lock_path.read_text())
    return {o["path"]: o["md5"] for stage in lock["stages"].values() for o in stage.get("outs", [])}


_BUILT: dict[str, object] = {}  # "root": the session's shared folder; "thread": the build, if this process runs it
_FRESH: dict[str, object] = {}  # "root"; "proc": the from-scratch repro, if this process runs it
WAIT = 3600  # seconds a test waits for a background run (a whole reduced DAG takes 5-15 minutes on 2 loaded cores)


def shared_root(tmp_path_factory) -> Path:
    """The folder every test process of the session sees: the session's temporary folder, or under pytest-xdist
    the folder that holds each worker's own (``popen-gw0``, ...)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def claim(root: Path, name: str) -> bool:
    """True for the one process of the session that creates ``root/name.claim`` first: it runs the work."""
    try:
        os.close(os.open(root / f"{name}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def wait_for(done: Path, what: str, failed: Path | None = None, timeout: float = WAIT) -> str:
    """Wait until another thread or process writes ``done`` (return its text) or ``failed`` (fail with it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if failed is not None and failed.exists():
            raise AssertionError(f"{what} failed:\n{failed.read_text()}")
        if done.exists():
            return done.read_text()
        time.sleep(1.0)
    raise AssertionError(f"{what} did not finish in {timeout:.0f} s")


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # the waiting process never reads half a marker


def _build(repo: Path, shared: Path, root: Path, base: dict) -> None:
    try:
        work = make_workspace(repo, shared, root / "built", root / "built-annotation-cache", base=base)
        sh("snakemake --cores 2 --quiet", work, base)
        sh("dvc commit -f", work, base)
        sh("git add -A && git commit -qm 'tiny run'", work, base)
        _write(root / "built.done", str(work))
    except BaseException as err:  # noqa: BLE001 - reported to the tests that wait for the build
        _write(root / "built.failed", f"{type(err).__name__}: {err}"[-10000:])


def start_build(repo: Path, shared: Path, tmp_path_factory) -> None:
    """Start building the reduced workspace in a background thread, once per session: under pytest-xdist in the
    worker that claims it first (the others wait for its marker file)."""
    if "root" in _BUILT:
        return
    root = _BUILT["root"] = shared_root(tmp_path_factory)
    if claim(root, "built"):
        args = (repo, shared, root, dict(os.environ))  # the environment as of now
        thread = threading.Thread(target=_build, args=args, daemon=True)
        _BUILT["thread"] = thread
        thread.start()


def built_workspace(repo: Path, shared: Path, tmp_path_factory) -> Path:
    """The reduced DAG run once per session with Snakemake, recorded in dvc.lock and committed
    to git (do not modify it: take a ``clone_workspace`` copy). Waits for ``start_build``'s run."""
    start_build(repo, shared, tmp_path_factory)
    root = _BUILT["root"]
    return Path(wait_for(root / "built.done", "building the reduced workspace", failed=root / "built.failed"))


PREFETCH_FRESH_REPRO = False  # set by conftest.py when the session collects the end-to-end test


def start_fresh_repro(repo: Path, shared: Path, tmp_path_factory) -> None:
    """Start ``dvc repro`` from scratch, in the background, in a workspace of its own (``make_workspace``: the
    built workspace's code and params, no outputs, no dvc.lock) with its own empty annotation cache; once
    per session (under pytest-xdist in the worker that claims it first). Like ``start_build`` it runs with the
    environment as of its start."""
    if "root" in _FRESH:
        return
    root = _FRESH["root"] = shared_root(tmp_path_factory)
    if not claim(root, "fresh"):
        return
    base = dict(os.environ)
    fresh = make_workspace(repo, shared, root / "fresh", root / "fresh-annotation-cache", base=base)
    # the exit code goes to a marker file so that a test in any worker can wait for it
    cmd = "dvc repro -q; echo $? > ../fresh.rc.tmp && mv ../fresh.rc.tmp ../fresh.rc"
    with open(root / "fresh-repro.log", "w") as log:
        proc = subprocess.Popen(cmd, shell=True, cwd=fresh, env=env(fresh, base), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    _FRESH["proc"] = proc
    atexit.register(_stop, proc)


def fresh_repro(timeout: float = WAIT) -> Path:
    """Wait for ``start_fresh_repro``'s run; its workspace, or a failure with the end of its log."""
    root = _FRESH["root"]
    code = wait_for(root / "fresh.rc", "`dvc repro` from scratch", timeout=timeout).strip()
    if code != "0":
        log = (root / "fresh-repro.log").read_text()
        raise AssertionError(f"`dvc repro` from scratch failed in {root / 'fresh'} ({code}):\n{log[-6000:]}")
    return root / "fresh"


def finish_background() -> None:
    """Wait for the background runs this process started (under pytest-xdist a test in another worker may still
    need them, and this worker's exit would end them); a run still going after ``WAIT`` seconds is left to
    ``_stop`` at exit, and the tests waiting for it fail on their own timeout."""
    if "thread" in _BUILT:
        _BUILT["thread"].join(WAIT)
    if "proc" in _FRESH:
        with contextlib.suppress(subprocess.TimeoutExpired):
            _FRESH["proc"].wait(timeout=WAIT)


def _stop(proc: subprocess.Popen) -> None:
    """End a background run still going when the test process exits (its whole process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)


def clone_workspace(built: Path, dest: Path) -> Path:
    """A byte-for-byte copy (timestamps, .snakemake metadata, DVC cache, git) of a built workspace."""
    shutil.copytree(built, dest, symlinks=True)
    return dest
