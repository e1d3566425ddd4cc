#!/usr/bin/env bash
# Install, get the AlpacaEval data if missing, then run the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# The AlpacaEval data at params.yaml paths.shared_data: fetched (pinned commit, SHA-256 checked) only when
# missing; present, nothing is fetched or written. No network: one line naming the manual route, exit 1.
python scripts/get_alpaca_eval.py --if_missing
# Two worker processes (pytest-xdist): the slow tests mostly wait on subprocesses, which leaves a core idle
# with one. loadfile runs each test file on one worker, so a module's fixture (some train models for minutes)
# runs once; the shared reduced DAG runs once per session whatever the worker count (tests/pipeline_helpers.py).
# pytest-benchmark, where installed, would warn that xdist disables it (no test here uses it).
python -m pytest -q -ra --durations=15 -n 2 --dist loadfile -p no:benchmark "$@"
