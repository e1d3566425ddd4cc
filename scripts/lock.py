"""The pinned CPU environment: ``requirements/lock-cpu.txt`` (pip-compile) and the conda file made from it.

    python scripts/lock.py --compile [--from_installed] [--upgrade]   # re-resolve the lock (needs pip-tools)
    python scripts/lock.py                                            # write workflow/envs/afarm.yaml from the lock
    python scripts/lock.py --check                                    # exit 1 if that file is stale

``--compile`` runs ``pip-compile`` (pip-tools) on ``pyproject.toml`` with its ``test`` extra and
``requirements/lock-cpu.in`` (torch 2.13.0, the CPU build; transformers at the version the committed
model folders were written with). pip-compile keeps the pins already in the lock unless ``--upgrade``;
``--from_installed`` takes the versions installed in this Python as constraints (how the first lock
was made: the versions the suite had passed with). pip-compile resolves torch 2.13.0 to the CPU
wheel it finds (``2.13.0+cpu``); the lock says ``torch==2.13.0``, which that wheel satisfies, so
``pip install -r`` works where only the plain version exists too.

The conda file (``snakemake --software-deployment-method conda``, every rule's ``conda:``) lists the
same pins in its pip section, with the PyTorch CPU index so torch is the CPU build there as well.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock-cpu.txt"
SOURCE = ROOT / "requirements" / "lock-cpu.in"
CONDA = ROOT / "workflow" / "envs" / "afarm.yaml"
PYTHON = "3.11"  # the Python the lock was compiled with (its header says so)
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def pins(text: str) -> dict[str, str]:
    """name -> version of every ``name==version`` line of a requirements file."""
    return {m.group(1).lower(): m.group(2) for line in text.splitlines() if (m := PIN.match(line.strip()))}


def conda_env(lock_text: str) -> str:
    lines = [
        "# GENERATED from requirements/lock-cpu.txt by `python scripts/lock.py`. Do not edit by hand.",
        "# Every rule of the Snakefile names it (`conda:`): snakemake --software-deployment-method conda",
        "name: afarm",
        "channels:",
        "  - conda-forge",
        "dependencies:",
        f"  - python={PYTHON}",
        "  - pip",
        "  - pip:",
        f"      - --extra-index-url {TORCH_CPU_INDEX}  # torch==2.13.0 resolves to the CPU build (2.13.0+cpu)",
    ]
    lines += [f"      - {name}=={version}" for name, version in pins(lock_text).items()]
    return "\n".join(lines) + "\n"


def compile_lock(from_installed: bool, upgrade: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ["pip-compile", "--quiet", "--strip-extras", "--no-annotate", "--extra", "test",
               "--no-emit-index-url", "--no-emit-find-links", "--output-file", str(LOCK.relative_to(ROOT)),
               "pyproject.toml", str(SOURCE.relative_to(ROOT))]
        if upgrade:
            cmd.append("--upgrade")
        if from_installed:
            frozen = subprocess.run([sys.executable, "-m", "pip", "list", "--format=freeze", "--exclude", "afarm"],
                                    capture_output=True, text=True, check=True).stdout
            # the .in pins win over what is installed; pip and setuptools stay out of the lock (pip-compile's default)
            wanted = {*pins(SOURCE.read_text(encoding="utf-8")), "pip", "setuptools"}
            keep = [line for line in frozen.splitlines() if (m := PIN.match(line)) and m.group(1).lower() not in wanted]
            constraints = Path(tmp) / "installed.txt"
            constraints.write_text("\n".join(keep) + "\n")
            cmd += ["--constraint", str(constraints)]
        env = {**os.environ, "CUSTOM_COMPILE_COMMAND": "python scripts/lock.py --compile"}
        subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    text = LOCK.read_text(encoding="utf-8")
    LOCK.write_text(re.sub(r"^torch==2\.13\.0\+cpu$", "torch==2.13.0", text, flags=re.M), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--compile", action="store_true", help="re-resolve requirements/lock-cpu.txt with pip-compile first")
    p.add_argument("--from_installed", action="store_true", help="with --compile: this Python's versions as constraints")
    p.add_argument("--upgrade", action="store_true", help="with --compile: let pip-compile move every pin")
    p.add_argument("--check", action="store_true", help="exit 1 if workflow/envs/afarm.yaml does not match the lock")
    args = p.parse_args(argv)
    if args.compile:
        compile_lock(args.from_installed, args.upgrade)
    text = conda_env(LOCK.read_text(encoding="utf-8"))
    if args.check:
        if not CONDA.exists() or CONDA.read_text(encoding="utf-8") != text:
            print(f"{os.path.relpath(CONDA, ROOT)} is stale: run `python scripts/lock.py`", file=sys.stderr)
            return 1
        print(f"{os.path.relpath(CONDA, ROOT)} matches {os.path.relpath(LOCK, ROOT)}")
        return 0
    CONDA.parent.mkdir(parents=True, exist_ok=True)
    CONDA.write_text(text, encoding="utf-8")
    print(f"wrote {os.path.relpath(CONDA, ROOT)} ({len(pins(LOCK.read_text(encoding='utf-8')))} pins from {os.path.relpath(LOCK, ROOT)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
