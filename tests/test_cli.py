"""The `afarm` CLI: leaderboards from annotation folders, evaluate with the offline heuristic judge and the
AlpacaEval 2 judge against the fake OpenAI server, folders with bad files, upstream's flags and CSV columns."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
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


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    """The default annotation cache is ~/.cache/afarm: keep it inside the test's folder (and
    matplotlib's font cache where it is, so it is not rebuilt under the new home)."""
    import matplotlib

    monkeypatch.setenv("MPLCONFIGDIR", matplotlib.get_cachedir())
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def run_cli(argv, capsys) -> tuple[int, str]:
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip()


def test_help_is_enough():
    out = subprocess.run([sys.executable, "-m", "afarm.cli", "--help"], capture_output=True, text=True, check=True).stdout
    assert "leaderboard" in out and "evaluate" in out
    for sub, flags in [("leaderboard", ["--annotations_dir", "--out_dir", "--shared_data", "--annotator"]),
                       ("evaluate", ["--model_outputs", "--reference", "--annotator", "--cache_dir", "--out_dir",
                                     "--no_cache", "--strict", "--annotators_config", "--reference_outputs",
                                     "--output_path", "--max_instances", "--name"])]:
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
    table = pd.read_csv(tmp_path / "out" / "leaderboard.csv", index_col=0)
    assert list(table.index) == ["NullModel", "gpt4_1106_preview", "claude-2", "alpaca-7b"]  # sorted by LC
    official = bundle.load_leaderboard(BUNDLE)
    cols = ["win_rate", "standard_error", "n_wins", "n_draws", "n_total", "discrete_win_rate", "avg_length"]
    assert ((table.loc[models, cols] - official.loc[models, cols]).abs() < 2e-6).all().all()
    # LC with the rebuilt upstream inputs = upstream alpaca_eval 0.6.6 fed the same inputs (values recorded
    # from upstream; tests/test_upstream_equality.py recomputes them with upstream and re-checks them)
    for model, value in GOLDEN_LC.items():
        assert table.loc[model, "length_controlled_winrate"] == pytest.approx(value, abs=GOLDEN_LC_TOL)
    assert table.loc["gpt4_1106_preview", "length_controlled_winrate"] == 50.0
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
    table = pd.read_csv(tmp_path / "o" / "leaderboard.csv", index_col=0)
    frames = bundle.load_annotation_files({m: flat / f"{m}.json" for m in models})
    expected = {r["generator"]: r for r in leaderboard_rows(frames)}
    assert expected["gpt4"]["lc_method"] == "noreg"  # difficulty estimated over the 3 models
    for m in models:
        for ours, col in (("win_rate",) * 2, ("lc_win_rate", "length_controlled_winrate"),
                          ("lc_standard_error",) * 2, ("n_total",) * 2):
            assert table.loc[m, col] == pytest.approx(expected[m][ours], abs=1e-6)
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
    table = pd.read_csv(tmp_path / "a" / "leaderboard.csv", index_col=0)
    assert list(table.index) == [r["generator"] for r in expected]
    for ours, col in (("win_rate",) * 2, ("lc_win_rate", "length_controlled_winrate"), ("standard_error",) * 2):
        assert table[col].tolist() == pytest.approx([r[ours] for r in expected], abs=1e-6)
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
    table = pd.read_csv(tmp_path / "out" / "leaderboard.csv", index_col=0)
    kept = [r["preference"] - 1 for i, r in enumerate(a) if i != 4]
    assert table.loc["alpaca-7b", "n_total"] == 39
    assert table.loc["alpaca-7b", "win_rate"] == pytest.approx(100 * sum(kept) / 39, abs=1e-6)


def test_bad_cli_inputs_exit_2(tmp_path, capsys):
    ref = BUNDLE / "results/text_davinci_003/model_outputs.json"
    short = json.loads((BUNDLE / "results/alpaca-7b/model_outputs.json").read_text())[:800]
    (tmp_path / "short.json").write_text(json.dumps(short))
    cases = [
        (["evaluate", "--model_outputs", tmp_path / "short.json", "--reference", ref, "--annotator", "heuristic", "--strict"],
         r"short.json, field 'instruction'.*5 of 805 evaluation instructions have no output"),
        (["evaluate", "--model_outputs", tmp_path / "short.json", "--annotator", "heuristic"],
         r"--reference: give --reference PATH"),
        (["evaluate", "--model_outputs", tmp_path / "short.json", "--reference", ref],  # the default judge
         r"--shared_data: annotator 'weighted_alpaca_eval_gpt4_turbo' reads its prompt files from the data bundle"),
        (["evaluate", "--model_outputs", tmp_path / "short.json", "--reference", ref, "--annotator", "heuristic",
          "--max_instances", "0"], r"--max_instances: must be at least 1"),
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


# ---------------------------------------------------------------- a folder of models, upstream's flags and columns

REF = BUNDLE / "results/text_davinci_003/model_outputs.json"


def outputs_of(model: str) -> list[dict]:
    return json.loads((BUNDLE / "results" / model / "model_outputs.json").read_text())


def picked_by_upstream(n: int) -> list[int]:
    """Reference rows upstream's --max_instances n judges: pandas ``sample(frac=1, random_state=123)``
    draws ``RandomState(123).permutation(805)``, and the first n are taken."""
    return sorted(np.random.RandomState(123).permutation(805)[:n].tolist())


def test_folder_with_bad_files_writes_the_board_of_the_rest(tmp_path, capsys):
    rows = picked_by_upstream(40)
    reference = json.loads(REF.read_text())
    folder = tmp_path / "outputs"
    folder.mkdir()
    (folder / "alpaca-7b.json").write_text(json.dumps(outputs_of("alpaca-7b")))
    gpt4 = outputs_of("gpt4")
    dropped = gpt4.pop(rows[5])["instruction"]  # one picked instruction left unanswered
    (folder / "gpt4.json").write_text(json.dumps(gpt4))
    null = outputs_of("NullModel")
    null[3]["output"] = None
    (folder / "NullModel.json").write_text(json.dumps(null))
    (folder / "zz_truncated.json").write_text('[{"instruction": "x", ')
    argv = ["evaluate", "--model_outputs", folder, "--reference_outputs", REF, "--annotators_config", "heuristic",
            "--max_instances", 40, "--output_path", tmp_path / "out", "--quiet"]
    code, err = run_cli(argv, capsys)
    assert code == 2  # a file was skipped
    lines = err.splitlines()
    assert any(re.search(r"^error: .*NullModel.json, row 3, field 'output'", line) for line in lines), err
    assert any(re.search(r"^error: .*zz_truncated.json.*malformed JSON", line) for line in lines), err
    assert any(re.search(r"^warning: .*gpt4.json: 1 of 40 evaluation instructions have no output.*"
                         r"evaluating the 39 answered", line) for line in lines), err
    assert re.search(r"2 of 4 model_outputs files were skipped.*NullModel.json.*zz_truncated.json", lines[-1]), err

    table = pd.read_csv(tmp_path / "out" / "leaderboard.csv", index_col=0)
    assert sorted(table.index) == ["alpaca-7b", "gpt4"]
    assert table.loc["alpaca-7b", "n_total"] == 40 and table.loc["gpt4", "n_total"] == 39
    picked = {reference[i]["instruction"] for i in rows}
    for model, n in (("alpaca-7b", 40), ("gpt4", 39)):
        recs = json.loads((tmp_path / "out" / "annotations" / f"{model}.json").read_text())
        assert {r["instruction"] for r in recs} == (picked - {dropped} if model == "gpt4" else picked)
        p = [r["preference"] - 1 for r in recs]
        assert table.loc[model, "win_rate"] == pytest.approx(100 * sum(p) / n, abs=1e-6)
    assert "gpt4 (39 of 40)" in (tmp_path / "out" / "leaderboard.md").read_text()
    stats = json.loads((tmp_path / "out" / "annotation_stats.json").read_text())
    assert stats["gpt4"]["n_missing_outputs"] == 1 and stats["alpaca-7b"]["n_missing_outputs"] == 0

    # --strict: the unanswered instruction makes gpt4.json bad input too
    code, err = run_cli([*argv[:-3], "--output_path", tmp_path / "strict", "--strict", "--quiet"], capsys)
    assert code == 2 and re.search(r"gpt4.json, field 'instruction': 1 of 40 evaluation instructions have no output", err)
    assert list(pd.read_csv(tmp_path / "strict" / "leaderboard.csv", index_col=0).index) == ["alpaca-7b"]


def test_every_file_is_checked_before_the_first_judge_call(tmp_path, capsys, monkeypatch):
    from afarm.annotators.openai_backend import AnnotatorError

    folder = tmp_path / "outputs"
    folder.mkdir()
    (folder / "a_good.json").write_text(json.dumps(outputs_of("alpaca-7b")))
    (folder / "z_bad.json").write_text(json.dumps([{**r, "generator": 7} for r in outputs_of("gpt4")]))

    def judge(self, pairs):
        print("JUDGE CALLED", file=sys.stderr)
        raise AnnotatorError("the judge is down")

    monkeypatch.setattr(HeuristicAnnotator, "judge", judge)
    code, err = run_cli(["evaluate", "--model_outputs", folder, "--reference", REF, "--annotator", "heuristic",
                         "--out_dir", tmp_path / "out", "--quiet"], capsys)
    assert code == 1 and "the judge is down" in err
    assert re.search(r"z_bad.json, row 0, field 'generator'", err), err
    assert err.index("z_bad.json") < err.index("JUDGE CALLED")
    assert not (tmp_path / "out" / "leaderboard.csv").exists()


def test_a_folder_of_bad_files_exits_2_and_names_each(tmp_path, capsys):
    folder = tmp_path / "outputs"
    folder.mkdir()
    (folder / "empty.json").write_text("[]")
    (folder / "elsewhere.json").write_text(json.dumps([{"instruction": "not an AlpacaEval instruction", "output": "x",
                                                        "generator": "m"}]))
    twice = outputs_of("alpaca-7b")
    (folder / "one.json").write_text(json.dumps(twice))
    (folder / "two.json").write_text(json.dumps(twice))  # the same generator again
    code, err = run_cli(["evaluate", "--model_outputs", folder, "--reference", REF, "--annotator", "heuristic",
                         "--out_dir", tmp_path / "out", "--name", "x"], capsys)
    assert code == 2 and re.search(r"--name: names one model, but .* holds 4 model_outputs files", err), err
    code, err = run_cli(["evaluate", "--model_outputs", folder, "--reference", REF, "--annotator", "heuristic",
                         "--max_instances", 3, "--out_dir", tmp_path / "out", "--quiet"], capsys)
    assert code == 2
    assert re.search(r"empty.json: no outputs", err), err
    assert re.search(r"elsewhere.json, field 'instruction': none of its 1 outputs answers one of the 3 evaluation", err), err
    assert re.search(r"two.json, field 'generator': generator 'alpaca-7b' is also the generator of .*one.json", err), err
    assert "warning: " not in err
    assert list(pd.read_csv(tmp_path / "out" / "leaderboard.csv", index_col=0).index) == ["alpaca-7b"]


def test_csv_has_upstream_columns_and_upstream_reads_it(tmp_path, capsys):
    models = ["alpaca-7b", "claude-2", "NullModel"]
    src = copy_bundle_models(tmp_path / "in", models)
    code, err = run_cli(["leaderboard", "--annotations_dir", src, "--output_path", tmp_path / "out"], capsys)
    assert code == 0, err
    path = tmp_path / "out" / "leaderboard.csv"
    header = path.read_text().splitlines()[0].split(",")
    official = bundle.leaderboard_path(BUNDLE).read_text().splitlines()[0].split(",")
    assert official[0] == "" and "length_controlled_winrate" in official
    assert header[: len(official)] == official  # upstream's columns in upstream's order, then ours
    assert header[len(official):] == ["lc_method"]
    table = pd.read_csv(path, index_col=0)
    assert set(table["mode"]) == {"community"}
    # upstream's own readers, where upstream is installed
    from upstream_reference import import_glm, require_glm

    if import_glm() is None:
        require_glm()  # fails under CI, skips elsewhere
    from alpaca_eval import utils as upstream_utils

    board, _ = upstream_utils.get_precomputed_leaderboard(str(path), None, None)
    assert sorted(board) == sorted(models)
    assert board["claude-2"]["length_controlled_winrate"] == pytest.approx(table.loc["claude-2", "length_controlled_winrate"])
    frame = upstream_utils.load_or_convert_to_dataframe(path)
    upstream_utils.print_leaderboard(frame, "community", current_name="claude-2",
                                     cols_to_print=["length_controlled_winrate", "win_rate", "standard_error", "n_total"])
    assert "claude-2" in capsys.readouterr().out


def test_default_judge_is_alpacaeval2_and_the_cache_is_on_by_default(tmp_path, capsys, monkeypatch, home):
    from fake_openai_server import FakeOpenAIServer, TemplateJudge, bundle_templates

    args = cli.build_parser().parse_args(["evaluate", "--model_outputs", "m.json", "--out_dir", "o"])
    assert args.annotator == bundle.AE2_ANNOTATOR and not args.no_cache
    folder = tmp_path / "outputs"
    folder.mkdir()
    for m in ("alpaca-7b", "gpt4"):
        (folder / f"{m}.json").write_text(json.dumps(outputs_of(m)))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    argv = ["evaluate", "--model_outputs", folder, "--reference", REF, "--shared_data", SHARED, "--max_instances", 6,
            "--quiet"]
    with FakeOpenAIServer(TemplateJudge(bundle_templates(SHARED))) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        code, err = run_cli([*argv, "--out_dir", tmp_path / "a"], capsys)
        assert code == 0, err
        first = server.calls
        assert first == 12  # 2 models x 6 instructions, one pair per call (no identical outputs among them)
        recs = json.loads((tmp_path / "a" / "annotations" / "gpt4.json").read_text())
        assert {r["annotator"] for r in recs} == {bundle.AE2_ANNOTATOR} and len(recs) == 6
        assert (home / ".cache" / "afarm" / "annotations.sqlite").is_file()
        code, err = run_cli([*argv, "--out_dir", tmp_path / "b"], capsys)
        assert code == 0 and server.calls == first  # every judgement from the default cache
        code, err = run_cli([*argv, "--out_dir", tmp_path / "c", "--no_cache"], capsys)
        assert code == 0 and server.calls == 2 * first
    for name in ("leaderboard.csv", "leaderboard.md"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes() == (tmp_path / "c" / name).read_bytes()


def test_annotators_config_takes_a_config_folder(tmp_path, capsys):
    from afarm.annotators.registry import BUILTIN_CONFIGS

    judge = tmp_path / "judges" / "my_judge"
    judge.mkdir(parents=True)
    shutil.copy(BUILTIN_CONFIGS / "heuristic" / "config.yaml", judge / "config.yaml")
    (tmp_path / "m.json").write_text(json.dumps(outputs_of("alpaca-7b")))
    code, err = run_cli(["evaluate", "--model_outputs", tmp_path / "m.json", "--reference_outputs", REF, "--name", "mine",
                         "--annotators_config", judge, "--max_instances", 5, "--output_path", tmp_path / "out",
                         "--no_cache", "--quiet"], capsys)
    assert code == 0, err
    recs = json.loads((tmp_path / "out" / "annotations" / "mine.json").read_text())
    assert {r["annotator"] for r in recs} == {"my_judge"} and {r["generator_2"] for r in recs} == {"mine"}
    assert not (tmp_path / "home" / ".cache" / "afarm").exists()  # --no_cache: no cache written
