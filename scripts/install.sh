#!/usr/bin/env bash
# Install the project and its dependencies into the current Python (use a venv if you like).
#
# By default the exact versions of requirements/lock-cpu.txt (pip-compile, scripts/lock.py): torch 2.13.0
# (the CPU build, the version the tiny scale's bytes were checked with), transformers at the version the
# committed model folders were written with (it writes its version into each config.json), and every other
# package at the version the test suite passed with. AFARM_FLOATING=1: a floating install instead
# (pip install -e '.[test]', the newest versions pyproject.toml allows; torch still 2.13.0).
# A CUDA or ROCm build of torch already installed is kept either way (no torch pin): on a GPU machine
# install your CUDA torch first.
set -euo pipefail
cd "$(dirname "$0")/.."
gpu_torch=$(python -c 'import torch; print(torch.__version__ if (torch.version.cuda or torch.version.hip) else "")' 2>/dev/null || true)
if [ -n "$gpu_torch" ]; then
    echo "keeping the installed GPU build of torch $gpu_torch (no torch==2.13.0 pin)"
fi
if [ "${AFARM_FLOATING:-0}" = "1" ]; then
    echo "AFARM_FLOATING=1: floating install (versions not pinned by requirements/lock-cpu.txt)"
    if [ -z "$gpu_torch" ]; then
        python -m pip install --quiet "torch==2.13.0"
    fi
    # The test extra includes upstream alpaca-eval==0.6.6 (tests/test_upstream_equality.py) with its
    # requirements; checked with `pip install --dry-run`: it only adds packages (scikit-learn, joblib < 1.6,
    # tiktoken, fire, termcolor, threadpoolctl) and changes no installed version (torch stays 2.13.0).
    python -m pip install --quiet -e ".[test]"
else
    lock=requirements/lock-cpu.txt
    if [ -n "$gpu_torch" ]; then  # every pin but torch's
        lock=$(mktemp)
        trap 'rm -f "$lock"' EXIT
        grep -v '^torch==' requirements/lock-cpu.txt > "$lock"
    fi
    python -m pip install --quiet -r "$lock"
    python -m pip install --quiet --no-deps -e .  # the package itself: its requirements are the lock's
fi
