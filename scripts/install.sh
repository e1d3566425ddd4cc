#!/usr/bin/env bash
# Install the project and its dependencies into the current Python (use a venv if you like).
# torch is pinned to the CPU build for laptops and CI; on GPU machines install your CUDA torch first.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet "torch==2.13.0"
# The test extra includes upstream alpaca-eval==0.6.6 (tests/test_upstream_equality.py) with its
# requirements; checked with `pip install --dry-run`: it only adds packages (scikit-learn, joblib < 1.6,
# tiktoken, fire, termcolor, threadpoolctl) and changes no installed version (torch stays 2.13.0).
python -m pip install --quiet -e ".[test]"
