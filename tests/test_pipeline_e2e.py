"""One real end-to-end run of a reduced tiny DAG, with both engines and a DVC remote.

The repository is copied into a temporary git repo and params.yaml is shrunk (fewer
instructions, a smaller model, 24 evaluation instructions): only params differ from the
real tiny run, never code. Then:

1. ``snakemake`` builds everything: each world's leaderboard has the shared rows (base model,
   SFT models, published models, the reference at exactly 50%) and that world's trained methods;
   the sim-vs-human comparison and REPORT.md exist; a second ``snakemake -n`` has nothing to do;
2. ``dvc commit -f`` fills dvc.lock, ``dvc status`` is clean, ``dvc push`` to a local
   directory remote;
3. a fresh ``git clone`` + ``dvc pull`` + ``snakemake --touch``: neither ``dvc status`` nor
   ``snakemake -n`` wants to recompute anything;
4. another workspace (the same code and params, no outputs) runs the DAG from scratch with ``dvc repro``
   and its own empty annotation cache: every output has the same hash as the Snakemake run
   (bit-for-bit reproducible, with no test-only environment: no PYTHONHASHSEED or thread variables are
   set here; the stage launcher sets them for every engine), and a second ``dvc repro`` is a no-op.
   It runs in the background from the start of the session (``pipeline_helpers.start_fresh_repro``: one stage
   at a time on one core, about 10 minutes, beside the build and the other tests), and the test waits for it here.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml

import pytest

from pipeline_helpers import built_workspace, clone_workspace, fresh_repro, out_hashes, sh, start_fresh_repro

pytestmark = pytest.mark.slow


def test_reduced_tiny_dag_with_snakemake_dvc_push_pull_and_repro(repo, shared, tmp_path, tmp_path_factory):
    # 1. Snakemake builds the whole DAG (once per test session, shared with other modules:
    #    pipeline_helpers.built_workspace); a second run has nothing to do.
    built = built_workspace(repo, shared, tmp_path_factory)
    start_fresh_repro(repo, shared, tmp_path_factory)  # step 4 in the background (already running since the session started)
    work = clone_workspace(built, tmp_path / "work")
    from afarm.dag import PUBLISHED, REFERENCE

    methods = {"ppo", "best_of_n", "expert_iteration", "quark", "dpo", "feedme", "reward_conditioning"}
    shared_rows = {"base_model", "sft", "sft_52k", REFERENCE, *PUBLISHED}
    for pset in ("sim", "human"):
        with open(work / "results" / f"leaderboard_{pset}.csv") as handle:
            rows = {r["generator"]: r for r in csv.DictReader(handle)}
        assert set(rows) == shared_rows | {f"{m}_{pset}" for m in methods}
        assert float(rows["text_davinci_003"]["win_rate"]) == pytest.approx(50.0)  # reference vs itself: all ties
        assert int(rows["sft"]["n_total"]) == 24
    # the two worlds use different judges, so the shared rows' win rates differ somewhere
    sim = {r["generator"]: r for r in csv.DictReader(open(work / "results" / "leaderboard_sim.csv"))}
    human = {r["generator"]: r for r in csv.DictReader(open(work / "results" / "leaderboard_human.csv"))}
    assert any(sim[g]["win_rate"] != human[g]["win_rate"] for g in shared_rows - {REFERENCE})
    comparison = json.loads((work / "results" / "metrics" / "sim_vs_human.json").read_text())
    assert comparison["n_models"] == len(shared_rows) - 1 + len(methods)  # the reference is left out
    for stat in ("spearman", "kendall"):
        assert -1 <= comparison[f"{stat}_ci"][0] <= comparison[stat] <= comparison[f"{stat}_ci"][1] <= 1
        trained = comparison["trained"]  # the rows our pipeline trained; null only if a world gives them all one rate
        assert trained[stat] is None or -1 <= trained[f"{stat}_ci"][0] <= trained[stat] <= trained[f"{stat}_ci"][1] <= 1
    # trained rows: every method and the shared rows our stages train; never a published row or the reference
    assert set(comparison["trained"]["models"]) == methods | {"base_model", "sft", "sft_52k"}
    assert comparison["trained"]["n_models"] == len(methods) + 3
    assert comparison["sim_annotators"] == ["features_pool"] and comparison["human_annotators"] == ["offline_judge"]
    report = (work / "results" / "REPORT.md").read_text()
    assert "stand-in" in report.lower() and "sim_vs_human.png" in report
    assert "ours: trained rows (headline)" in report and "evaluation noise only" in report
    # method health: every method's own check, per world, on held-out data (the reduced scale trains too
    # little for the checks to pass; results/metrics/method_health_*.json of the real tiny run are asserted by
    # tests/test_committed_health.py). Here: every row is there, with a finite standard error, on the
    # held-out pairs of the 16 validation prompts, and "passed" is exactly "gain > k SE".
    for pset in ("sim", "human"):
        health = json.loads((work / "results" / "metrics" / f"method_health_{pset}.json").read_text())
        assert set(health["checks"]) == methods | {"sft", "sft_52k", "reward_model", "reward_conditioning_control"}
        assert health["num_prompts"] == 16 and 0 < health["num_pairs"] <= 32
        for name, check in health["checks"].items():
            assert check["se"] >= 0 and check["passed"] == (check["gain"] > health["k"] * check["se"] and check["gain"] > 0), name
        assert health["checks"]["best_of_n"]["gain"] >= 0  # the RM's pick of n samples scores at least the first
        rm = health["checks"]["reward_model"]
        assert 0 <= rm["labels_accuracy"] <= 1
        if pset == "sim":  # the sim labeller has label noise: the checks use its clean counterpart's labels
            assert 0 <= rm["ceiling"] <= 1 and rm["trained"] == rm["clean_accuracy"]
    assert "Does each method do its job?" in report and "method_health_sim" in report

    assert "Nothing to be done" in sh("snakemake --cores 2 -n", work)

    # 2. DVC records the run and pushes it to a local directory remote.
    sh("dvc commit -f -q", work)
    assert "up to date" in sh("dvc status", work)
    remote = tmp_path / "remote"
    sh(f"dvc remote add -d local {remote} && dvc push -q", work)
    sh("git add -A && git commit -qm 'remote'", work)

    # 3. A fresh clone pulls instead of recomputing.
    clone = tmp_path / "clone"
    sh(f"git clone -q {work} {clone}", tmp_path)
    sh("dvc pull -q", clone)
    assert "up to date" in sh("dvc status", clone)
    sh("snakemake --cores 2 --touch --quiet", clone)
    assert "Nothing to be done" in sh("snakemake --cores 2 -n", clone)
    assert (clone / "results" / "REPORT.md").read_text() == (work / "results" / "REPORT.md").read_text()

    # 4. dvc repro from scratch in another workspace gives the same bytes; a rerun is a no-op.
    #    It gets its own empty annotation cache: every judgement is made again, as on a user's machine.
    fresh = fresh_repro()
    cache_dir = Path(yaml.safe_load((fresh / "params.yaml").read_text())["paths"]["cache_dir"])
    assert cache_dir.is_dir() and cache_dir != Path(yaml.safe_load((work / "params.yaml").read_text())["paths"]["cache_dir"])
    assert out_hashes(fresh / "dvc.lock") == out_hashes(work / "dvc.lock")
    assert "up to date" in sh("dvc repro", fresh) or "didn't change" in sh("dvc repro", fresh)
