"""The committed tiny run: every method passes its own held-out check, in both worlds.

Reads ``results/metrics/method_health_<set>.json`` that the tiny DAG's `method_health` stages wrote
(committed with the run): each method's gain over its starting point on data it never trained on
must exceed ``k`` (2) standard errors, on at least 200 held-out preference pairs. A change that
silently stops a method from learning fails here once the tiny run is redone.
"""

from __future__ import annotations

import json

import pytest

from afarm.metrics.health import Estimate, passes

# Checks the committed tiny run fails, per (world, check), each with what was measured (an entry here is a
# finding, not a fix: remove it when the method passes). The numbers are those of results/method_health_*.md.
# FeedME in the human world (why: params.yaml, feedme): its recipe (lr 1e-4 x 3 epochs) passes in the simulated
# world (0.550 +- 0.017 on the clean labels); against the human stand-in's labels it stays near chance. What a
# 1M-parameter model learns of either world's labels is mostly length ("the longer output is preferred": sim
# 0.794, human 0.591 of the held-out pairs); FeedME, trained on the chosen half only, recovers about a quarter of
# that in both worlds, 1.4 SE in the human one. 5 epochs (0.529) or lr 3e-4 (0.530) do not change it.
KNOWN_FAILING = {
    ("human", "feedme"): "implicit-reward accuracy 0.524, gain +0.024 +- 0.017 on 800 held-out pairs",
}

CHECKS = {"sft", "sft_52k", "reward_model", "dpo", "feedme", "reward_conditioning", "reward_conditioning_control",
          "ppo", "quark", "expert_iteration", "best_of_n"}


@pytest.mark.parametrize("pset", ["sim", "human"])
def test_every_method_passes_its_held_out_check_in_the_committed_tiny_run(repo, pset):
    path = repo / "results" / "metrics" / f"method_health_{pset}.json"
    if not path.is_file():
        pytest.skip(f"{path.relative_to(repo)} not committed yet: run the tiny DAG (scripts/run_tiny.sh)")
    health = json.loads(path.read_text())
    assert health["preference_set"] == pset and health["k"] >= 2
    assert health["num_pairs"] >= 200  # the minimum of held-out pairs
    assert set(health["checks"]) == CHECKS
    failed = {}
    for name, check in health["checks"].items():
        gain = Estimate(check["gain"], check["se"], check["n"])
        if (pset, name) not in KNOWN_FAILING and not passes(gain, health["k"]):
            failed[name] = f"{check['measure']}: gain {gain} (n {gain.n}) is not > {health['k']} SE"
    assert not failed, failed
    # the list of known failures stays true: an entry whose check now passes must be removed
    stale = [name for (world, name) in KNOWN_FAILING if world == pset
             and passes(Estimate(health["checks"][name]["gain"], health["checks"][name]["se"], health["checks"][name]["n"]), health["k"])]
    assert not stale, f"these checks pass now: remove them from KNOWN_FAILING: {stale}"
    for name in ("reward_conditioning_control", "ppo", "quark", "expert_iteration", "best_of_n"):  # the sampling rows
        check = health["checks"][name]  # mean lengths of the samples compared (characters): what the judges reward most
        assert 0 < check["start_chars"] and 0 < check["trained_chars"], (name, check)
    rm = health["checks"]["reward_model"]
    if rm.get("ceiling") is not None:  # no RM beats the label-noise ceiling on the noisy labels beyond noise
        assert rm["labels_accuracy"] <= rm["ceiling"] + 3 * rm["se"]


def test_the_committed_results_come_from_the_current_code_and_params(repo):
    """The committed tiny run (dvc.lock, results/) is the run of this commit's code and params: no stage has a
    modified code or data dependency, changed params, or an output edited by hand. Then the checks above and the README's numbers
    (tests/test_readme_numbers.py) guard the code as it is: a change that stops a method from learning must
    rerun the tiny DAG to land, and its checks then fail here. Outputs missing from the DVC cache (a fresh
    clone) are not staleness and are ignored."""
    import shutil
    import subprocess

    dvc = shutil.which("dvc")
    if dvc is None:
        pytest.skip("dvc is not installed")
    proc = subprocess.run([dvc, "status", "--json"], cwd=repo, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    stale = {}
    for stage, changes in json.loads(proc.stdout or "{}").items():
        for change in changes if isinstance(changes, list) else []:
            if not isinstance(change, dict):
                continue
            modified = [dep for dep, state in (change.get("changed deps") or {}).items() if state != "deleted"]
            modified += [f"output {out}" for out, state in (change.get("changed outs") or {}).items() if state == "modified"]
            if modified or change.get("changed params"):
                stale[stage] = modified + [f"params: {p}" for p in change.get("changed params") or {}]
    assert not stale, ("the committed tiny run is stale; rerun it (scripts/run_tiny.sh) and commit results/ and dvc.lock: "
                       f"{dict(list(stale.items())[:5])}")
