#!/usr/bin/env bash
# Install the project and its dependencies into the current Python (use a venv if you like).
# torch is pinned (2.13.0, the version the tiny scale's bytes were checked with) unless the installed
# torch is a CUDA or ROCm build: on a GPU machine install your CUDA torch first and it is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
gpu_torch=$(python -c 'import torch; print(torch.__version__ if (torch.version.cuda or torch.version.hip) else "")' 2>/dev/null || true)
if [ -n "$gpu_torch" ]; then
    echo "keeping the installed GPU build of torch $gpu_torch (no torch==2.13.0 pin)"
else
    python -m pip install --quiet "torch==2.13.0"
fi
# The test extra includes upstream alpaca-eval==0.6.6 (tests/test_upstream_equality.py) with its
# requirements; checked with `pip install --dry-run`: it only adds packages (scikit-learn, joblib < 1.6,
# tiktoken, fire, termcolor, threadpoolctl) and changes no installed version (torch stays 2.13.0).
python -m pip install --quiet -e ".[test]"
