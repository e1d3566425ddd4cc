"""REPORT.md: tables, relative image links, the stand-in statement, bad inputs, and the paper's numbers."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from afarm.io import InputError
from afarm.report.leaderboard import COLUMNS
from afarm.report.report import (
    PAPER_SPEARMAN,
    ReportConfig,
    ReportPaths,
    ScaleFacts,
    average_ranks,
    build_report,
    num_parameters,
    rank_correlations,
    read_paper_results,
)
from afarm.stages import report as stage

ROOT = Path(__file__).resolve().parents[1]
PAPER_CSV = ROOT / "data" / "paper" / "alpaca_farm_results.csv"
PNG = b"\x89PNG\r\n\x1a\n"

SIM_VS_HUMAN = """method,kind,sim_generator,human_generator,sim_win_rate,sim_standard_error,human_win_rate,human_standard_error,sim_rank,human_rank,trained
gpt4,shared,gpt4,gpt4,90.0,0.7,91.0,0.6,1,1,False
ppo,method,ppo_sim,ppo_human,10.5,1.0,20.25,1.2,2,2,True
sft,shared,sft,sft,8.0,0.9,6.0,0.8,3,4,True
best_of_n,method,best_of_n_sim,best_of_n_human,7.0,0.8,12.0,1.0,4,3,True
alpaca-farm-ppo-human,shared,alpaca-farm-ppo-human,alpaca-farm-ppo-human,50.0,1.2,55.0,1.1,,,False
"""
METRICS = {
    "spearman": 0.8,
    "spearman_ci": [0.4, 1.0],
    "kendall": 0.6667,
    "kendall_ci": [0.2, 1.0],
    "n_models": 4,
    # trained rows ppo, sft, best_of_n: sim ranks 1, 2, 3, human 1, 3, 2 -> Spearman 1 - 6*2/(3*8) = 0.5,
    # Kendall (2 concordant - 1 discordant) / 3
    "trained": {"spearman": 0.5, "spearman_ci": [-0.5, 1.0], "kendall": 0.3333, "kendall_ci": [-0.33, 1.0],
                "n_models": 3, "models": ["ppo", "sft", "best_of_n"]},
    "n_bootstrap": 1000,
    "confidence": 0.95,
    "sim_annotators": ["offline_pool"],
    "human_annotators": ["offline_judge"],
    "labels": {"sim": "simulated (offline pool)", "human": "human STAND-IN (offline_judge, no people)"},
}
PARAMS = {
    "scale": "tiny",
    "_path": "params.yaml",
    "report": {"title": "Test report"},
    "data": {"source": "local", "sizes": {"sft": 1000, "preference": 2000, "unlabeled": 2000, "validation": 200}},
    "base_model": {"model": {"pretrained": None, "vocab_size": 2048, "hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 336}},
}


def _board(rows):
    lines = [",".join(COLUMNS)]
    for g, lc, raw in rows:
        lines.append(f"{g},{lc},0.5,{raw},0.6,{raw},70,720,15,805,123.4")
    return "\n".join(lines) + "\n"


@pytest.fixture
def inputs(tmp_path):
    """Synthetic inputs laid out as in the repository: results/..., data/paper/..."""
    res = tmp_path / "results"
    (res / "metrics").mkdir(parents=True)
    (res / "annotators").mkdir()
    (tmp_path / "data" / "paper").mkdir(parents=True)
    (res / "leaderboard_sim.csv").write_text(_board([("gpt4", 60.5, 90.0), ("ppo_sim", 9.25, 10.5)]))
    (res / "leaderboard_human.csv").write_text(_board([("gpt4", 61.0, 91.0), ("ppo_human", 19.0, 20.25)]))
    (res / "sim_vs_human.csv").write_text(SIM_VS_HUMAN)
    (res / "metrics" / "sim_vs_human.json").write_text(json.dumps(METRICS))
    (res / "sim_vs_human.png").write_bytes(PNG)
    (res / "leaderboard_sim.png").write_bytes(PNG)
    (res / "alpacaeval2_reproduction.md").write_text(
        "## AlpacaEval 2 reproduction\n\n48 models: Spearman 0.9980, median |delta| 0.180.\n\n![fig](../docs/fig.png)\n\n| model | LC |\n|---|---:|\n| x | 1.0 |\n\nJudge `w`.\n"
    )
    (res / "annotators" / "analysis.md").write_text(
        "# Annotator analysis\n\n| annotator | agreement |\n|---|---:|\n| offline_judge | 0.909 |\n\n![agreement](agreement.png)\n\n```\n# not a heading\n```\n"
    )
    shutil.copy(PAPER_CSV, tmp_path / "data" / "paper" / "alpaca_farm_results.csv")
    return ReportPaths(
        sim_leaderboard=str(res / "leaderboard_sim.csv"),
        human_leaderboard=str(res / "leaderboard_human.csv"),
        sim_vs_human=str(res / "sim_vs_human.csv"),
        sim_vs_human_metrics=str(res / "metrics" / "sim_vs_human.json"),
        sim_vs_human_plot=str(res / "sim_vs_human.png"),
        lc_plot=str(res / "leaderboard_sim.png"),
        alpacaeval2=str(res / "alpacaeval2_reproduction.md"),
        annotators=str(res / "annotators" / "analysis.md"),
        paper_results=str(tmp_path / "data" / "paper" / "alpaca_farm_results.csv"),
        out=str(res / "REPORT.md"),
    )


def _args(paths: ReportPaths) -> argparse.Namespace:
    return stage.arguments().parse_args([x for f in paths.__dataclass_fields__ for x in (f"--{f}", getattr(paths, f))])


# ---------------------------------------------------------------- the paper's numbers


def test_paper_table_has_the_published_rows():
    rows = {r["generator"]: r for r in read_paper_results(PAPER_CSV)}
    assert len(rows) == 13
    assert (rows["ppo"]["sim_win_rate"], rows["ppo"]["human_win_rate"]) == (46.8, 55.1)  # paper Sec. 4.2 text
    assert (rows["gpt-3.5-turbo-0301"]["sim_win_rate"], rows["gpt-3.5-turbo-0301"]["human_win_rate"]) == (61.4, 52.9)
    assert (rows["sft"]["sim_win_rate"], rows["sft"]["human_standard_error"]) == (36.7, 1.7)
    assert [g for g, r in rows.items() if r["human_win_rate"] is None] == ["dpo", "quark", "reward_conditioning"]
    assert all(r["verified"].startswith("yes") for r in rows.values())


def test_paper_table_reproduces_the_published_spearman():
    both = [r for r in read_paper_results(PAPER_CSV) if r["human_win_rate"] is not None]
    rho, tau = rank_correlations([r["sim_win_rate"] for r in both], [r["human_win_rate"] for r in both])
    # two adjacent swaps (ChatGPT/PPO, SFT 52k/SFT 10k) among 10: 1 - 6*4/(10*99); tau = (43 - 2)/45
    assert rho == pytest.approx(1 - 24 / 990) and round(rho, 2) == PAPER_SPEARMAN
    assert tau == pytest.approx(41 / 45)


def test_average_ranks_share_ties():
    assert average_ranks([46.8, 79.0, 46.8, 11.3]) == [2.5, 1.0, 2.5, 4.0]


def test_parameter_count_matches_the_tiny_model():
    # results/metrics/base_model.json of the tiny run: 1,041,536 parameters
    assert num_parameters(ScaleFacts()) == 1_041_536
    assert num_parameters(ScaleFacts(pretrained="huggyllama/llama-7b")) is None


# ---------------------------------------------------------------- the report


def test_report_tables_links_and_stand_in(inputs):
    stage.main(_args(inputs), PARAMS)
    text = Path(inputs.out).read_text()
    assert text.startswith("# Test report\n")
    assert "`snakemake --cores all`" in text
    # relative image links from results/
    assert "![win rates: simulated vs human world](sim_vs_human.png)" in text
    assert "![length-controlled vs raw win rate](leaderboard_sim.png)" in text
    assert "[`../data/paper/alpaca_farm_results.csv`](../data/paper/alpaca_farm_results.csv)" in text
    # headline: trained rows (the headline) and all rows with CI, the paper's 0.98 and its recomputation
    assert ("| Spearman | 0.50 [-0.50, 1.00] | 0.80 [0.40, 1.00] | 0.98 (recomputed from its Table 2: 0.976) |"
            in text)
    assert "| Kendall tau | 0.33 [-0.33, 1.00] | 0.67 [0.20, 1.00] | 0.911 (computed from its Table 2) |" in text
    assert "| models | 3 | 4 | 10 with both entries in Table 2 |" in text
    assert "**The intervals cover evaluation noise only**" in text and "`bench/bench_seed_spread.py`" in text
    # the sim-vs-human table
    assert "| ppo | method | yes | ppo_sim | 10.50 ± 1.00 | 2 | ppo_human | 20.25 ± 1.20 | 2 |" in text
    assert ("| alpaca-farm-ppo-human | shared | no | alpaca-farm-ppo-human | 50.00 ± 1.20 | – | alpaca-farm-ppo-human "
            "| 55.00 ± 1.10 | – |") in text
    # ours vs paper, matched by generator; ranks within the 4 matched methods
    assert "| PPO | `ppo` | 10.50 ± 1.00 | 46.8 ± 1.8 | 20.25 ± 1.20 | 55.1 ± 1.7 | 2 / 2 | 2 / 2 |" in text
    assert "| SFT 10k | `sft` | 8.00 ± 0.90 | 36.7 ± 1.7 | 6.00 ± 0.80 | 44.3 ± 1.7 | 3 / 4 | 4 / 4 |" in text
    assert "| Best-of-n | `best_of_n` | 7.00 ± 0.80 | 45.0 ± 1.7 | 12.00 ± 1.00 | 50.7 ± 1.8 | 4 / 3 | 3 / 3 |" in text
    assert "| DPO | `dpo` (not run) | – | 46.8 ± 1.7 | – | – | – | – |" in text
    assert "- Ours only (not in the paper's Table 2): `alpaca-farm-ppo-human`." in text
    # sim ranks ours [1,2,3,4] vs paper [1,2,4,3]: Spearman 1 - 6*2/(4*15) = 0.8
    assert "- sim column, ours vs the paper over 4 methods: Spearman 0.80, Kendall tau 0.67." in text
    # both leaderboards with LC and raw
    assert "| 2 | ppo_sim | 9.25 ± 0.50 | 10.50 ± 0.60 | 10.50 | 70 / 15 / 805 | 123 |" in text
    assert "| 2 | ppo_human | 19.00 ± 0.50 | 20.25 ± 0.60 | 20.25 | 70 / 15 / 805 | 123 |" in text
    # AlpacaEval 2 summary without its table, annotator analysis included with headings demoted and links re-based
    assert "48 models: Spearman 0.9980, median |delta| 0.180." in text and "| x | 1.0 |" not in text
    assert "![fig](../docs/fig.png)" in text  # the same folder as REPORT.md: link unchanged
    assert "### Annotator analysis" in text and "| offline_judge | 0.909 |" in text
    assert "![agreement](annotators/agreement.png)" in text and "\n# not a heading\n" in text
    # the stand-in is named, and what differs at tiny scale
    assert "**stand-in**: `offline_judge` (human STAND-IN (offline_judge, no people)), not people." in text
    assert "share no judge" not in text  # no judges_note configured
    noted = build_report(inputs, ReportConfig(judges_note="The two worlds\n  share no judge."), stage.scale_facts(PARAMS))
    assert "not people.\n\n> The two worlds share no judge.\n" in noted
    assert "a 1.04M-parameter Llama-style model trained from scratch" in text
    assert "1,000 / 2,000 / 2,000 / 200" in text
    assert "absolute win rates are not comparable" in text


def test_report_is_deterministic_and_independent_of_the_working_folder(inputs, monkeypatch, tmp_path):
    facts = stage.scale_facts(PARAMS)
    first = build_report(inputs, ReportConfig(), facts)
    monkeypatch.chdir(tmp_path / "results")
    assert build_report(inputs, ReportConfig(), facts) == first


def test_paper_scale_says_what_still_differs(inputs):
    params = {**PARAMS, "scale": "paper", "base_model": {"model": {"pretrained": "huggyllama/llama-7b"}},
              "data": {"source": "hub", "sizes": {"sft": 10000, "preference": 20000, "unlabeled": 20000, "validation": 2000}}}
    text = build_report(inputs, ReportConfig(), stage.scale_facts(params))
    assert "## What differs from the paper at this scale (`paper`)" in text
    assert "The base model is `huggyllama/llama-7b`." in text
    assert "evaluated by the configured judge `offline_judge`, not by crowdworkers" in text
    assert "stand-in" not in text


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("name", ["sim_leaderboard", "sim_vs_human", "sim_vs_human_metrics", "sim_vs_human_plot", "annotators", "paper_results"])
def test_missing_input_names_the_file(inputs, name):
    Path(getattr(inputs, name)).unlink()
    with pytest.raises(InputError, match="file not found") as err:
        build_report(inputs, ReportConfig(), ScaleFacts())
    assert err.value.path == getattr(inputs, name)


@pytest.mark.parametrize(
    ("name", "text", "row", "field"),
    [
        ("sim_vs_human", SIM_VS_HUMAN.replace("ppo,method", "ppo,trained"), 1, "kind"),
        ("sim_vs_human", SIM_VS_HUMAN.replace("10.5,1.0", "ten,1.0"), 1, "sim_win_rate"),
        ("sim_vs_human", SIM_VS_HUMAN.replace("sft,shared", "ppo,shared"), 2, "method"),
        ("sim_vs_human", SIM_VS_HUMAN.replace("3,4,True", "3,4,yes"), 2, "trained"),
        ("sim_leaderboard", _board([("gpt4", 60.5, 190.0)]), 0, "win_rate"),
        ("sim_leaderboard", _board([("gpt4", 60.5, 90.0)]).replace(",805,", ",80.5,"), 0, "n_total"),
        ("human_leaderboard", "generator,win_rate\ngpt4,50\n", None, "lc_win_rate"),
    ],
)
def test_malformed_csv_names_file_row_and_field(inputs, name, text, row, field):
    Path(getattr(inputs, name)).write_text(text)
    with pytest.raises(InputError) as err:
        build_report(inputs, ReportConfig(), ScaleFacts())
    assert (err.value.path, err.value.row, err.value.field) == (getattr(inputs, name), row, field)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"spearman": 1.5}, "spearman"),
        ({"kendall_ci": [0.9, 0.1]}, "kendall_ci"),
        ({"labels": {"sim": "simulated"}}, "labels.human"),
        ({"human_annotators": []}, "human_annotators"),
        ({"n_models": "4"}, "n_models"),
        ({"trained": {**METRICS["trained"], "spearman": -2}}, "trained.spearman"),
        ({"trained": {k: v for k, v in METRICS["trained"].items() if k != "kendall_ci"}}, "trained.kendall_ci"),
        ({"trained": [0.5]}, "trained"),
    ],
)
def test_malformed_metrics_name_the_key(inputs, change, field):
    Path(inputs.sim_vs_human_metrics).write_text(json.dumps({**METRICS, **change}))
    with pytest.raises(InputError) as err:
        build_report(inputs, ReportConfig(), ScaleFacts())
    assert (err.value.path, err.value.field) == (inputs.sim_vs_human_metrics, field)


def test_missing_metrics_key_and_bad_json(inputs):
    Path(inputs.sim_vs_human_metrics).write_text(json.dumps({k: v for k, v in METRICS.items() if k != "kendall"}))
    with pytest.raises(InputError, match="missing key") as err:
        build_report(inputs, ReportConfig(), ScaleFacts())
    assert err.value.field == "kendall"
    Path(inputs.sim_vs_human_metrics).write_text("{")
    with pytest.raises(InputError, match="malformed JSON"):
        build_report(inputs, ReportConfig(), ScaleFacts())


def test_malformed_paper_results(inputs):
    path = Path(inputs.paper_results)
    good = path.read_text()
    path.write_text(good.replace("DPO,dpo,46.8,1.7,,,", "DPO,dpo,46.8,1.7,50.0,,"))
    with pytest.raises(InputError) as err:
        read_paper_results(path)
    assert (err.value.row, err.value.field) == (3, "human_standard_error")
    path.write_text(good.replace(",yes: full Table 2", ",maybe: full Table 2"))
    with pytest.raises(InputError) as err:
        read_paper_results(path)
    assert (err.value.row, err.value.field) == (0, "verified")


def test_empty_annotator_analysis_is_an_error(inputs):
    Path(inputs.annotators).write_text("\n")
    with pytest.raises(InputError, match="empty") as err:
        build_report(inputs, ReportConfig(), ScaleFacts())
    assert err.value.path == inputs.annotators


def test_bad_params_are_named():
    params = {**PARAMS, "base_model": {"model": {"hidden_size": "128"}}}
    with pytest.raises(InputError) as err:
        stage.scale_facts(params)
    assert err.value.field == "base_model.model.hidden_size"


def test_cli_writes_the_report_and_exits_2_on_a_missing_input(inputs, tmp_path, monkeypatch, capsys):
    import yaml

    from afarm.stages import _cli

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({k: v for k, v in PARAMS.items() if k != "_path"}))
    argv = ["--params", str(params)] + [x for f in inputs.__dataclass_fields__ for x in (f"--{f}", getattr(inputs, f))]
    _cli.run(stage.main, stage.arguments(), argv)
    first = Path(inputs.out).read_bytes()
    _cli.run(stage.main, stage.arguments(), argv)
    assert Path(inputs.out).read_bytes() == first  # same inputs, same bytes
    Path(inputs.lc_plot).unlink()
    with pytest.raises(SystemExit) as exit_:
        _cli.run(stage.main, stage.arguments(), argv)
    assert exit_.value.code == 2
    assert f"error: {inputs.lc_plot}: file not found" in capsys.readouterr().err
    assert Path(inputs.out).read_bytes() == first  # the earlier report survives


def test_method_health_tables_make_one_section_after_the_headline(inputs):
    import dataclasses

    res = Path(inputs.out).parent
    for pset in ("sim", "human"):
        (res / f"method_health_{pset}.md").write_text(
            f"### Method health, world `{pset}`: does each method do its job on held-out data?\n\n"
            f"| method | gain ± SE (n) | passes |\n|---|---:|:---:|\n| dpo | +0.081 ± 0.025 (400) | yes |\n")
    paths = dataclasses.replace(inputs, method_health_sim=str(res / "method_health_sim.md"),
                                method_health_human=str(res / "method_health_human.md"))
    stage.main(_args(paths), PARAMS)
    text = Path(paths.out).read_text()
    section = text.index("## Does each method do its job? Method health on held-out data")
    assert text.index("world `sim`") > section and text.index("world `human`") > text.index("world `sim`")
    assert "[`method_health_sim.md`](method_health_sim.md)" in text  # listed among the inputs
    # without the tables (e.g. an older run) there is no such section
    stage.main(_args(inputs), PARAMS)
    assert "Method health" not in Path(inputs.out).read_text()
