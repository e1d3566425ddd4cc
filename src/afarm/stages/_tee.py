"""``python -m afarm.stages [--threads N] --tee LOG <module> ...``: one stage, its output also in LOG.

The Snakefile passes each rule's ``log:`` (``logs/<stage>.log``). The launcher (``afarm.stages._launch``)
then runs as a child process, unchanged, and this parent copies what it prints to the terminal (stdout to
stdout, stderr to stderr, as bytes arrive: progress bars stay visible) and to LOG. LOG opens with the
stage's name and command; when the stage fails it ends with a line naming the stage, its exit code and its
command, below the stage's own error (a traceback, or the launcher's one-line ``error:``).

No stage imports this module (only ``afarm.stages.__main__`` does), so it is no code dependency of a stage:
changing it reruns nothing, and ``dvc repro`` (whose commands have no ``--tee``) never runs it.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

OPTIONS = ("--threads", "--tee")  # the launcher's options, before the stage module


def split_tee(argv: list[str]) -> tuple[str | None, list[str]]:
    """(LOG of ``--tee LOG`` among the options before the module, or None; argv without it)."""
    i, log, rest = 0, None, []
    while i < len(argv) and argv[i] in OPTIONS and i + 1 < len(argv):
        if argv[i] == "--tee":
            log = argv[i + 1]
        else:
            rest += argv[i:i + 2]
        i += 2
    return log, rest + argv[i:]


def stage_name(argv: list[str]) -> str:
    """The stage table's name of the stage these launcher arguments run (the stage whose outputs they
    name), else its module."""
    from afarm.dag import STAGES

    i = 0
    while i < len(argv) and argv[i] in OPTIONS:
        i += 2
    module, given = (argv[i] if i < len(argv) else "?"), set(argv[i + 1:])
    for stage in STAGES:
        if stage.module == module and stage.outs and all(p in given for p in stage.outs.values()):
            return stage.name
    return module


def _pump(fd: int, sinks: list, lock: threading.Lock) -> None:
    while chunk := os.read(fd, 65536):
        with lock:
            for sink in sinks:
                sink.write(chunk)
                sink.flush()


def main(log_path: str, argv: list[str]) -> int:
    """Run ``python -m afarm.stages <argv>``, its output to ours and to ``log_path``; its exit code."""
    shown = shlex.join(["python", "-m", "afarm.stages", *argv])
    name = stage_name(argv)
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # the log keeps the order in which the stage printed
    if sys.stderr.isatty():  # a person watches: progress bars as often as on a terminal (afarm.stages: 30 s)
        env.setdefault("TQDM_MININTERVAL", "0.1")
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        log.write(f"# stage {name}: {shown}\n".encode())
        log.flush()
        proc = subprocess.Popen([sys.executable, "-m", "afarm.stages", *argv], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # A cancelled job: the stage gets the signal (a second one when the whole process group got it: harmless,
        # both end it). Ctrl-C reaches the stage from the terminal; this parent only waits for it to end.
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda signum, _frame: proc.send_signal(signum))
        signal.signal(signal.SIGINT, lambda _signum, _frame: None)
        lock = threading.Lock()
        pumps = [threading.Thread(target=_pump, args=(pipe.fileno(), [out, log], lock))
                 for pipe, out in ((proc.stdout, sys.stdout.buffer), (proc.stderr, sys.stderr.buffer))]
        for pump in pumps:
            pump.start()
        code = proc.wait()
        for pump in pumps:
            pump.join()
        if code != 0:
            how = f"signal {-code}" if code < 0 else f"exit {code}"
            line = f"error: stage {name} failed ({how}): {shown}\n".encode()
            log.write(line)
            sys.stderr.buffer.write(line)
            sys.stderr.flush()
    return code if code >= 0 else 128 - code
