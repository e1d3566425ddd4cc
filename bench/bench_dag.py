"""Time the tiny DAG: each stage cold, then the warm no-op of both engines; print output hashes.

    python bench/bench_dag.py                 # the full tiny DAG in a temporary copy of the repo
    python bench/bench_dag.py --keep DIR      # keep the copy (e.g. to inspect results)
    python bench/bench_dag.py --parallel      # one cold `snakemake --cores all`: wall time (the issue's
                                              # 30-minute budget) and each job's time from Snakemake's log

Default mode:
The repository's tracked files are copied to a temporary folder (results of your own runs are
not touched), each stage is built with its own `snakemake <outputs>` call in table order (so
each time is one stage plus ~1 s of Snakemake start-up), then `snakemake` and `dvc repro` are
timed on the finished DAG, where both must have nothing to do. Last, the DVC hash of every
output is printed: run the script twice, or on two machines, and compare them.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from afarm.dag import STAGES  # noqa: E402


def sh(cmd: str, cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(cmd, shell=True, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"`{cmd}` failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return elapsed, result.stdout + result.stderr


def job_times(log_text: str) -> list[tuple[float, str]]:
    """(seconds, rule) per finished job, from the timestamps of a Snakemake log."""
    stamp, rule, started, times = None, None, {}, []
    for line in log_text.splitlines():
        if m := re.match(r"\[(\w+ \w+ +\d+ [\d:]+ \d+)\]", line):
            stamp = datetime.datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
        elif m := re.match(r"(?:local)?rule (\S+):", line):
            rule = (m.group(1), stamp)
        elif (m := re.match(r"\s+jobid: (\d+)", line)) and rule:
            started[m.group(1)], rule = rule, None
        elif (m := re.match(r"Finished job(?:id:)? (\d+)", line)) and m.group(1) in started:
            name, start = started.pop(m.group(1))
            times.append(((stamp - start).total_seconds(), name))
    return sorted(times, reverse=True)


def parallel(work: Path) -> None:
    seconds, _ = sh("snakemake --cores all", work)
    log = max((work / ".snakemake" / "log").glob("*.snakemake.log"), key=lambda p: p.stat().st_mtime)
    times = job_times(log.read_text())
    print(f"{'job':<40}{'seconds':>10}")
    for job_seconds, name in times:
        print(f"{name:<40}{job_seconds:>10.0f}")
    print(f"\n{len(times)} jobs; sum of job times {sum(t for t, _ in times):.0f} s; "
          f"wall time of `snakemake --cores all` on {os.cpu_count()} cores: {seconds:.0f} s ({seconds / 60:.1f} min)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="build in this folder and keep it")
    parser.add_argument("--parallel", action="store_true", help="one cold `snakemake --cores all`: wall time and job times")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="afarm-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if name != "dvc.lock" and not name.startswith("results/"):
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, work / name)
    params = yaml.safe_load((work / "params.yaml").read_text())
    shared = (REPO / params["paths"]["shared_data"]).resolve()
    params["paths"]["shared_data"] = str(shared)
    params["paths"]["cache_dir"] = str(work / ".cache" / "afarm")  # a cold annotation cache
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    sh("git init -q && git add -A && git -c user.name=bench -c user.email=bench@example.com commit -qm bench", work)

    print(f"tiny DAG in {work} (scale={params['scale']}, {os.cpu_count()} cores)\n")
    if args.parallel:
        parallel(work)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        return
    print(f"{'stage':<28}{'seconds':>10}")
    total = 0.0
    for stage in STAGES:
        targets = " ".join([*stage.outs.values(), *stage.metrics.values(), *stage.plots.values()])
        seconds, _ = sh(f"snakemake --cores all --quiet {targets}", work)
        total += seconds
        print(f"{stage.name:<28}{seconds:>10.1f}")
    print(f"{'cold total':<28}{total:>10.1f}\n")

    seconds, out = sh("snakemake --cores all -n", work)
    print(f"{'warm snakemake -n':<28}{seconds:>10.1f}  ({'nothing to do' if 'Nothing to be done' in out else 'WOULD RERUN'})")
    sh("dvc commit -f -q", work)
    seconds, out = sh("dvc repro", work)
    print(f"{'warm dvc repro':<28}{seconds:>10.1f}  ({'nothing to do' if 'up to date' in out or 'didn' in out else 'RERAN'})\n")

    lock = yaml.safe_load((work / "dvc.lock").read_text())
    print("DVC hashes of the outputs (compare across runs and machines):")
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            print(f"  {out['md5']}  {out['path']}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
