"""Run many stage commands quickly: ``python stage_runner.py JOBS.json`` prints a JSON result per job.

A job is ``{"cmd": "python -m afarm.stages.<module> --flag value ...", "cwd": folder}``, the
command exactly as the stage table writes it. Importing torch and transformers costs seconds
per process, so the runner imports the shared libraries once and forks one child per job; the
child runs the module the way ``python -m`` does (``runpy``, as ``__main__``, ``sys.argv`` from
the command) in the job's folder, with its own stdout and stderr. The result is
``{"returncode", "stderr", "seconds"}``; an uncaught exception prints its traceback and gives 1, as Python does.

``AFARM_STAGE_RUNNER=subprocess`` runs every job as its own ``python -m`` process instead (slow;
to check that the forked runs behave the same).
"""

from __future__ import annotations

import json
import os
import runpy
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

JOB_TIMEOUT = 300  # seconds; a stage that hangs fails its case instead of the whole run


def _command(cmd: str) -> tuple[str, list[str]]:
    parts = shlex.split(cmd)
    if parts[:2] != ["python", "-m"] or len(parts) < 3:
        raise ValueError(f"not a `python -m <module>` command: {cmd!r}")
    return parts[2], parts[3:]


def _child(module: str, argv: list[str], cwd: str, err_path: str) -> None:
    """In the forked child: run ``module`` as ``python -m`` would, then exit with its code."""
    code = 1
    try:
        os.chdir(cwd)
        err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        out = os.open(os.devnull, os.O_WRONLY)
        os.dup2(out, 1)
        os.dup2(err, 2)
        signal.alarm(JOB_TIMEOUT)
        sys.argv = [module, *argv]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            code = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - report like the interpreter does
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run_forked(job: dict) -> dict:
    module, argv = _command(job["cmd"])
    with tempfile.NamedTemporaryFile(prefix="stage-stderr-", delete=False) as handle:
        err_path = handle.name
    pid = os.fork()
    if pid == 0:
        _child(module, argv, job["cwd"], err_path)
    _, status = os.waitpid(pid, 0)
    stderr = Path(err_path).read_text(encoding="utf-8", errors="replace")
    os.unlink(err_path)
    return {"returncode": os.waitstatus_to_exitcode(status), "stderr": stderr}


def run_subprocess(job: dict) -> dict:
    module, argv = _command(job["cmd"])
    result = subprocess.run([sys.executable, "-m", module, *argv], cwd=job["cwd"], capture_output=True, text=True,
                            timeout=JOB_TIMEOUT)
    return {"returncode": result.returncode, "stderr": result.stderr}


def main(jobs_file: str) -> None:
    jobs = json.loads(Path(jobs_file).read_text(encoding="utf-8"))
    if os.environ.get("AFARM_STAGE_RUNNER") == "subprocess" or not hasattr(os, "fork"):
        runner = run_subprocess
    else:  # the libraries every stage imports (the stage modules themselves run fresh in each child)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401
        import afarm.annotators.registry  # noqa: F401
        import afarm.methods.ppo  # noqa: F401
        import afarm.methods.quark  # noqa: F401
        import afarm.metrics.bundle  # noqa: F401
        import afarm.models.generate  # noqa: F401
        import afarm.stages._cli  # noqa: F401

        runner = run_forked
    results = []
    for job in jobs:
        start = time.monotonic()
        results.append({**runner(job), "seconds": round(time.monotonic() - start, 2)})
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
