"""`snakemake --report report.html`: the leaderboards, the simulated-vs-human plot, method health and the training
curves are declared as report() outputs with captions, and the report builds from the committed results."""

from __future__ import annotations

import re
import shutil
import subprocess

import yaml

from afarm import dag
from pipeline_helpers import copy_repo, run


def test_report_declarations_cover_the_four_kinds_of_result(repo):
    items = dag.report_items()
    outputs = {p for s in dag.STAGES for p in [*s.outs.values(), *s.plots.values()]}
    assert set(items) <= outputs  # only stage outputs (metrics JSON are not shown)
    for pset in dag.PREFERENCE_SETS:
        assert {f"results/leaderboard_{pset}.png", f"results/leaderboard_{pset}.csv", f"results/method_health_{pset}.csv"} <= set(items)
    assert {"results/sim_vs_human.png", "results/sim_vs_human.csv"} <= set(items)
    curves = {p for s in dag.STAGES for p in s.plots.values() if p.startswith(dag.CURVES + "/")}
    assert curves and curves <= set(items)  # every training curve (a CSV per training stage; PPO, Quark: a PNG too)
    assert {dag.curve_path(s.name) for s in dag.STAGES if s.module in ("sft", "dpo", "ppo", "reward_model")} <= curves
    categories = {v["category"] for v in items.values()}
    assert categories == {"1. Leaderboards", "2. Simulated vs human", "3. Method health", "4. Training curves"}
    for item in items.values():
        caption = repo / item["caption"]
        assert caption.is_file() and caption.read_text().strip(), item
    snakefile = (repo / "Snakefile").read_text()
    assert re.search(r'^report: "workflow/report/workflow\.rst"$', snakefile, flags=re.M)
    assert (repo / "workflow" / "report" / "workflow.rst").is_file()


def test_the_report_builds_from_the_committed_results(repo, shared, tmp_path):
    """No run needed: results/ (leaderboards, figures, health tables, curves) is in git; Snakemake warns that
    it has no job metadata for them and builds the report."""
    committed = subprocess.run(["git", "ls-files", "results"], cwd=repo, capture_output=True, text=True, check=True).stdout.split()
    items = dag.report_items()
    assert set(items) <= set(committed), sorted(set(items) - set(committed))[:5]
    work = tmp_path / "repo"
    copy_repo(repo, work)
    for name in committed:
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, work / name)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["paths"]["shared_data"] = str(shared)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = run("snakemake --report report.html", work)
    out = result.stdout + result.stderr
    assert "Report created" in out
    added = re.findall(r"^Adding (\S+) \(", out, flags=re.M)
    assert sorted(added) == sorted(p.rsplit("/", 1)[1] for p in items)
    html = (work / "report.html").read_text(errors="replace")
    for caption in {v["caption"] for v in items.values()}:  # each caption's first words are in the page
        first = " ".join((repo / caption).read_text().split()[:5])
        assert first in html, caption
