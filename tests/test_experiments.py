"""DVC experiment sweeps: `dvc exp run --queue -S ...`, `dvc queue start`, `dvc exp show`.

DVC runs a queued experiment in a copy of the repository under ``.dvc/tmp/exps/``. The annotation
cache (``paths.cache_dir``, relative) must still be the repository's own, so no judgement is made
twice across experiments: stages resolve relative ``paths`` against ``$DVC_ROOT``, which DVC sets to
the original repository in experiments. Two tiny experiments run the short chain data ->
published_gpt4 -> annotate_sim_gpt4 on 6 and 12 evaluation instructions (docs/experiments.md).
"""

from __future__ import annotations

import json
import re
import time

import pytest

from pipeline_helpers import make_workspace, run, sh

TARGET = "annotate_sim_gpt4"
METRICS = "results/metrics/annotate/sim/gpt4.json"


def _wait_for_queue(work, timeout_s: float = 1500) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = sh("dvc queue status", work)
        if not re.search(r"\b(Queued|Running)\b", status):
            return status
        time.sleep(5)
    raise AssertionError(f"the queue did not finish in {timeout_s} s:\n{status}")


def test_relative_paths_resolve_against_the_repository_root(monkeypatch):
    from afarm.stages._cli import repo_paths

    params = {"scale": "tiny", "paths": {"shared_data": "../shared/data", "cache_dir": ".cache/afarm"}}
    monkeypatch.delenv("DVC_ROOT", raising=False)
    # Snakemake: the working directory; a key the section leaves out (checkpoints) gets PathsConfig's default
    assert repo_paths(params) == {"shared_data": "../shared/data", "cache_dir": ".cache/afarm", "checkpoints": ".checkpoints"}
    monkeypatch.setenv("DVC_ROOT", "/home/me/afarm")  # what DVC sets in an experiment's copy
    assert repo_paths(params) == {"shared_data": "/home/me/afarm/../shared/data",
                                  "cache_dir": "/home/me/afarm/.cache/afarm", "checkpoints": "/home/me/afarm/.checkpoints"}
    params["paths"]["cache_dir"] = "/scratch/cache"
    assert repo_paths(params)["cache_dir"] == "/scratch/cache"  # absolute paths are kept


@pytest.mark.slow
def test_two_queued_experiments_run_show_and_share_one_annotation_cache(repo, shared, tmp_path):
    # the bundle path is absolute (a DVC dependency: DVC resolves it inside the experiment's copy);
    # the annotation cache keeps params.yaml's relative default
    work = make_workspace(repo, shared, tmp_path / "repo", tmp_path / "unused", extra={"paths": {"cache_dir": ".cache/afarm"}})
    for limit in (6, 12):
        sh(f"dvc exp run --queue -n limit{limit} -S data.eval_limit={limit} {TARGET}", work)
    sh("dvc queue start", work)  # one worker: the experiments run one after the other, in queue order
    status = _wait_for_queue(work)
    assert len(re.findall(r"\bSuccess\b", status)) == 2, status

    shown = json.loads(sh("dvc exp show --json", work))
    exps = {e["name"]: e["revs"][0]["data"] for base in shown for e in base.get("experiments") or []}
    assert set(exps) == {"limit6", "limit12"}
    for limit in (6, 12):
        data = exps[f"limit{limit}"]
        assert data["params"]["params.yaml"]["data"]["data"]["eval_limit"] == limit
        assert data["metrics"][METRICS]["data"]["n_pairs"] == limit  # one judgement per evaluation instruction

    # One cache across experiments: the first judged its 6 pairs, the second found those 6 and
    # judged only the other 6; the cache is the repository's, not the deleted copies'.
    assert "6 pairs: 6 judged now, 0 from the cache" in run("dvc queue logs limit6", work).stdout
    assert "12 pairs: 6 judged now, 6 from the cache" in run("dvc queue logs limit12", work).stdout
    assert (work / ".cache" / "afarm" / "annotations.sqlite").is_file()
