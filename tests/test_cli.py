"""The `afarm` CLI: leaderboards from annotation folders, evaluate with the offline heuristic judge, bad input."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from afarm import cli
from afarm.annotators.heuristic import HeuristicAnnotator
from afarm.metrics import bundle
from afarm.metrics.board import leaderboard_rows
from upstream_reference import GOLDEN_LC, GOLDEN_LC_TOL

BUNDLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_eval"
SHARED = BUNDLE.parent
AE2 = bundle.AE2_ANNOTATOR
pytestmark = pytest.mark.skipif(not BUNDLE.is_dir(), reason="AlpacaEval bundle absent")


def copy_bundle_models(dest: Path, models, annotator=AE2) -> Path:
    for m in models:
        target = dest / "results" / m / annotator
        target.mkdir(parents=True)
        shutil.copy(bundle.annotation_path(BUNDLE, m, annotator), target)
    return dest


def records(model: str, annotator: str = AE2) -> list[dict]:
    with gzip.open(bundle.annotation_path(BUNDLE, model, annotator), "rt", encoding="utf-8") as f:
        return json.load(f)


def run_cli(argv, capsys) -> tuple[int, str]:
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip()


def test_help_is_enough():
    out = subprocess.run([sys.executable, "-m", "afarm.cli", "--help"], capture_output=True, text=True, check=True).stdout
    assert "leaderboard" in out and "evaluate" in out
    for sub, flags in [("leaderboard", ["--annotations_dir", "--out_dir", "--shared_data", "--annotator"]),
                       ("evaluate", ["--model_outputs", "--reference", "--annotator", "--cache_dir", "--out_dir"])]:
        text = subprocess.run([sys.executable, "-m", "afarm.cli", sub, "--help"], capture_output=True, text=True, check=True).stdout
        assert all(f in text for f in flags), sub
    exe = shutil.which("afarm")
    if exe:  # the installed entry point
        assert subprocess.run([exe, "--help"], capture_output=True).returncode == 0


def test_leaderboard_from_bundle_layout_rebuilds_upstream_lc(tmp_path, capsys):
    models = ["alpaca-7b", "claude-2", "NullModel", "gpt4_1106_preview"]
    src = copy_bundle_models(tmp_path / "in", models)
    code, err = run_cli(["leaderboard", "--annotations_dir", src, "--out_dir", tmp_path / "out", "--shared_data", SHARED], capsys)
    assert code == 0, err
    for name in ("leaderboard.csv", "leaderboard.md", "leaderboard.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    table = pd.read_csv(tmp_path / "out" / "leaderboard.csv", index_col="generator")
    assert list(table.index) == ["NullModel", "gpt4_1106_preview", "claude-2", "alpaca-7b"]  # sorted by LC
    official = bundle.load_leaderboard(BUNDLE)
    cols = ["win_rate", "standard_error", "n_wins", "n_draws", "n_total", "discrete_win_rate", "avg_length"]
    assert ((table.loc[models, cols] - official.loc[models, cols]).abs() < 2e-6).all().all()
    # LC with the rebuilt upstream inputs = upstream alpaca_eval 0.6.6 fed the same inputs (values recorded
    # from upstream; tests/test_upstream_equality.py recomputes them with upstream and re-checks them)
    for model, value in GOLDEN_LC.items():
        assert table.loc[model, "lc_win_rate"] == pytest.approx(value, abs=GOLDEN_LC_TOL)
    assert table.loc["gpt4_1106_preview", "lc_win_rate"] == 50.0
    assert "length_controlled_v1" in (tmp_path / "out" / "leaderboard.md").read_text()


def test_flat_folder_fallback_equals_library(tmp_path, capsys):
    # AlpacaEval 1 annotations (vs Davinci003) as flat <model>.json files: fallback LC
    flat = tmp_path / "flat"
    flat.mkdir()
    models = ["alpaca-7b", "gpt4", "vicuna-13b"]
    for m in models:
        (flat / f"{m}.json").write_text(json.dumps(records(m, bundle.AE1_ANNOTATOR)))
    code, err = run_cli(["leaderboard", "--annotations_dir", flat, "--annotator", "alpaca_eval_gpt4", "--out_dir", tmp_path / "o"], capsys)
    assert code == 0, err
    table = pd.read_csv(tmp_path / "o" / "leaderboard.csv", index_col="generator")
    frames = bundle.load_annotation_files({m: flat / f"{m}.json" for m in models})
    expected = {r["generator"]: r for r in leaderboard_rows(frames)}
    assert expected["gpt4"]["lc_method"] == "noreg"  # difficulty estimated over the 3 models
    for m in models:
        for col in ("win_rate", "lc_win_rate", "lc_standard_error", "n_total"):
            assert table.loc[m, col] == pytest.approx(expected[m][col], abs=1e-6)
    official = bundle.load_leaderboard(BUNDLE, bundle.AE1_ANNOTATOR)
    assert (table.loc[models, "win_rate"] - official.loc[models, "win_rate"]).abs().max() < 1e-6


def test_evaluate_heuristic_then_cache_makes_no_call(tmp_path, capsys, monkeypatch):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    for m in ["alpaca-7b", "gpt-3.5-turbo-0301"]:
        shutil.copy(BUNDLE / "results" / m / "model_outputs.json", outputs / f"{m}.json")
    calls = []
    judge = HeuristicAnnotator.judge
    monkeypatch.setattr(HeuristicAnnotator, "judge", lambda self, pairs: calls.append(len(pairs)) or judge(self, pairs))
    argv = ["evaluate", "--model_outputs", outputs, "--reference", BUNDLE / "results/text_davinci_003/model_outputs.json",
            "--annotator", "heuristic", "--cache_dir", tmp_path / "cache", "--quiet"]
    code, err = run_cli([*argv, "--out_dir", tmp_path / "a"], capsys)
    assert code == 0, err
    first_calls = sum(calls)
    assert first_calls > 1500  # 2 x 805 pairs minus identical-output ties
    stats = json.loads((tmp_path / "a" / "annotation_stats.json").read_text())
    # (a few pairs repeat within a file: the second copy is a cache hit of the same run)
    assert {s["n_judged"] + s["n_cached"] + s["n_ties_identical"] for s in stats.values()} == {805}
    # the numbers are the library's, recomputed from the annotations the CLI wrote
    files = {p.stem: p for p in (tmp_path / "a" / "annotations").glob("*.json")}
    assert sorted(files) == ["alpaca-7b", "gpt-3.5-turbo-0301"]
    expected = leaderboard_rows(bundle.load_annotation_files(files))
    table = pd.read_csv(tmp_path / "a" / "leaderboard.csv")
    assert list(table["generator"]) == [r["generator"] for r in expected]
    for col in ("win_rate", "lc_win_rate", "standard_error"):
        assert table[col].tolist() == pytest.approx([r[col] for r in expected], abs=1e-6)
    # rerun: every judgement from the cache, identical outputs
    calls.clear()
    code, err = run_cli([*argv, "--out_dir", tmp_path / "b"], capsys)
    assert code == 0, err
    assert sum(calls) == 0
    stats = json.loads((tmp_path / "b" / "annotation_stats.json").read_text())
    assert all(s["n_judged"] == 0 and s["n_cached"] + s["n_ties_identical"] == 805 for s in stats.values())
    for name in ("leaderboard.csv", "leaderboard.md", "leaderboard.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


# ---------------------------------------------------------------- bad input


def _flat(tmp_path: Path, recs_by_model: dict) -> Path:
    folder = tmp_path / "bad"
    folder.mkdir(exist_ok=True)
    for m, recs in recs_by_model.items():
        (folder / f"{m}.json").write_text(json.dumps(recs))
    return folder


@pytest.fixture(scope="module")
def small():
    return records("alpaca-7b")[:40], records("claude-2")[:40]


@pytest.mark.parametrize("case,pattern", [
    ("out_of_range", r"bad/alpaca-7b.json, row 3, field 'preference'.*outside \[1, 2\]"),
    ("missing_field", r"bad/alpaca-7b.json, row 5, field 'output_2'"),
    ("mixed_reference", r"bad/alpaca-7b.json, row 7, field 'generator_1'.*mixed"),
    ("string_preference", r"bad/alpaca-7b.json, row 2, field 'preference'"),
    ("two_references", r"bad/claude-2.json, row 0, field 'generator_1'.*differs"),
])
def test_bad_annotations_exit_2_with_one_line(tmp_path, capsys, small, case, pattern):
    a, c = [dict(r) for r in small[0]], [dict(r) for r in small[1]]
    if case == "out_of_range":
        a[3]["preference"] = 2.5
    elif case == "missing_field":
        del a[5]["output_2"]
    elif case == "mixed_reference":
        a[7]["generator_1"] = "someone_else"
    elif case == "string_preference":
        a[2]["preference"] = "2"
    elif case == "two_references":
        c = [{**r, "generator_1": "text_davinci_003"} for r in c]
    folder = _flat(tmp_path, {"alpaca-7b": a, "claude-2": c})
    code, err = run_cli(["leaderboard", "--annotations_dir", folder, "--out_dir", tmp_path / "out"], capsys)
    assert code == 2
    assert err.count("\n") == 0 and err.startswith("error: ")
    assert re.search(pattern, err), err
    assert not (tmp_path / "out" / "leaderboard.csv").exists()


def test_missing_preference_is_dropped_as_upstream(tmp_path, capsys, small):
    a = [dict(r) for r in small[0]]
    a[4]["preference"] = None
    folder = _flat(tmp_path, {"alpaca-7b": a, "claude-2": small[1]})
    code, err = run_cli(["leaderboard", "--annotations_dir", folder, "--out_dir", tmp_path / "out"], capsys)
    assert code == 0, err
    table = pd.read_csv(tmp_path / "out" / "leaderboard.csv", index_col="generator")
    kept = [r["preference"] - 1 for i, r in enumerate(a) if i != 4]
    assert table.loc["alpaca-7b", "n_total"] == 39
    assert table.loc["alpaca-7b", "win_rate"] == pytest.approx(100 * sum(kept) / 39, abs=1e-6)


def test_bad_cli_inputs_exit_2(tmp_path, capsys):
    ref = BUNDLE / "results/text_davinci_003/model_outputs.json"
    short = json.loads((BUNDLE / "results/alpaca-7b/model_outputs.json").read_text())[:800]
    (tmp_path / "short.json").write_text(json.dumps(short))
    cases = [
        (["evaluate", "--model_outputs", tmp_path / "short.json", "--reference", ref, "--annotator", "heuristic"],
         r"short.json, field 'instruction'.*5 of 805 evaluation instructions have no output"),
        (["evaluate", "--model_outputs", tmp_path / "short.json", "--reference", ref, "--annotator", "no_such_judge"],
         r"--annotator.*unknown annotator 'no_such_judge'"),
        (["evaluate", "--model_outputs", tmp_path / "nothing.json", "--reference", ref, "--annotator", "heuristic"],
         r"nothing.json: file not found"),
        (["leaderboard", "--annotations_dir", tmp_path / "empty_dir"], r"empty_dir: not a folder"),
    ]
    (tmp_path / "empty").mkdir()
    cases.append((["leaderboard", "--annotations_dir", tmp_path / "empty"], r"empty: no annotation files"))
    for argv, pattern in cases:
        code, err = run_cli([*argv, "--out_dir", tmp_path / "out"], capsys)
        assert code == 2 and err.count("\n") == 0 and re.search(pattern, err), (argv, err)
