"""Bad inputs to every stage: one clear error line naming what and where, exit code 2,
and nothing already produced is lost.

This file covers data, base_model, generate, annotate and leaderboard (and params.yaml and the
``afarm`` CLI); test_bad_input_stages.py covers every other stage module, as the stage table
runs it (a test there checks that together the two cover every stage module of the DAG).

Each case writes valid inputs, then breaks one thing, puts a "previous run" file at every
output path, runs the stage (in-process through its real entry point ``_cli.run``; two
cases as real ``python -m`` subprocesses) and checks:

* the stage exits with code 2 and stderr has exactly one ``error:`` line, no traceback;
* that line names the file (and the row / field / key where there is one);
* every previous output is byte-for-byte intact and no temporary file is left beside it.

Inputs that are unusual but legitimate (an empty answer, a 1 MB answer) must NOT fail.
"""

from __future__ import annotations

import gzip
import importlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import yaml

from afarm.stages import _cli

EVAL_ROWS = 4


def _rows(shared: Path) -> list[dict]:
    src = shared / "alpaca_eval" / "results" / "text_davinci_003" / "model_outputs.json"
    return json.loads(src.read_text(encoding="utf-8"))[:EVAL_ROWS]


def _instructions(n: int = 8) -> list[dict]:
    return [{"id": f"i{i}", "instruction": f"Say the number {i}.", "input": "", "output": f"{i}"} for i in range(n)]


def _outputs(eval_rows: list[dict], generator: str = "m") -> list[dict]:
    return [{"instruction": r["instruction"], "output": f"answer {i} GOOD", "generator": generator, "dataset": r["dataset"]} for i, r in enumerate(eval_rows)]


def _annotations(eval_rows: list[dict], generator: str = "m") -> list[dict]:
    return [
        {"instruction": r["instruction"], "output_1": r["output"], "output_2": f"answer {i}", "generator_1": "text_davinci_003",
         "generator_2": generator, "preference": 1.0 + (i % 2), "annotator": "heuristic", "dataset": r["dataset"]}
        for i, r in enumerate(eval_rows)
    ]


@dataclass
class Workspace:
    root: Path
    shared: Path
    eval_rows: list[dict]
    params: dict = field(default_factory=dict)

    def write(self, name: str, content: object) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        elif name.endswith(".jsonl.gz"):
            path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in content).encode()))
        else:
            path.write_text(json.dumps(content, indent=1), encoding="utf-8")
        return path


@pytest.fixture
def ws(tmp_path, shared, repo) -> Workspace:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["paths"] = {"shared_data": str(shared), "cache_dir": str(tmp_path / "cache")}
    params["data"]["sizes"]["tiny"] = {"sft": 2, "preference": 2, "unlabeled": 2, "validation": 1}
    w = Workspace(tmp_path, shared, _rows(shared), params)
    w.write("eval_set.json", w.eval_rows)
    w.write("outputs.json", _outputs(w.eval_rows))
    w.write("annotations.json", _annotations(w.eval_rows))
    w.write("instructions.jsonl.gz", _instructions())
    w.write("split.json", _instructions(4))
    return w


# stage -> (inputs flags -> file in the workspace, outputs flags -> file)
STAGE_FILES: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "data": (
        {"instructions": "instructions.jsonl.gz", "eval_source": "eval_set.json"},
        {"eval_set": "out/eval_set.json", "sft": "out/sft.json", "preference": "out/preference.json",
         "unlabeled": "out/unlabeled.json", "validation": "out/validation.json"},
    ),
    "base_model": ({"unlabeled": "split.json", "validation": "split.json"}, {"out": "out/model", "metrics": "out/metrics.json"}),
    "generate": ({"model": "no_model_yet", "eval_set": "eval_set.json"}, {"out": "out/outputs.json"}),
    "annotate": ({"outputs": "outputs.json", "eval_set": "eval_set.json"}, {"out": "out/annotations.json", "metrics": "out/metrics.json"}),
    "leaderboard": (
        {"annotations": "annotations.json"},
        {"csv": "out/lb.csv", "markdown": "out/lb.md", "plot": "out/lb.png", "metrics": "out/metrics.json"},
    ),
}


def _argv(w: Workspace, stage: str, inputs: dict[str, str], outputs: dict[str, str]) -> list[str]:
    argv = ["--params", str(w.root / "params.yaml")]
    for flag, name in {**inputs, **outputs}.items():
        argv += [f"--{flag}", str(w.root / name)]
    if stage == "generate":
        argv += ["--generator", "m"]
    return argv


def _plant_previous_outputs(w: Workspace, outputs: dict[str, str]) -> dict[Path, bytes]:
    """A finished earlier run: a file (or a folder with a file) at every output path."""
    planted = {}
    for name in outputs.values():
        path = w.root / name
        if Path(name).suffix == "":  # a model folder
            path.mkdir(parents=True, exist_ok=True)
            path = path / "model.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        content = f"previous run of {name}\n".encode()
        path.write_bytes(content)
        planted[path] = content
    return planted


def run_stage(w: Workspace, stage: str, inputs: dict[str, str] | None = None, capsys=None) -> tuple[int, str, dict]:
    default_in, outputs = STAGE_FILES[stage]
    inputs = {**default_in, **(inputs or {})}
    if not (w.root / "params.yaml").exists():
        w.write("params.yaml", yaml.safe_dump(w.params, sort_keys=False))
    planted = _plant_previous_outputs(w, outputs)
    module = importlib.import_module(f"afarm.stages.{stage}")
    capsys.readouterr()
    code = 0
    try:
        _cli.run(module.main, module.arguments(), _argv(w, stage, inputs, outputs))
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err, planted


def assert_clear_error(code: int, err: str, planted: dict[Path, bytes], *fragments: str) -> str:
    assert code == 2, f"exit code {code}, stderr:\n{err}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    for path, content in planted.items():
        assert path.read_bytes() == content, f"{path} was changed"
        assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")], "temporary file left behind"
    return lines[0]


# ------------------------------------------------------------------ record files: (stage, flag, broken content, expected fragments)
def _eval(w: Workspace) -> list[dict]:
    return [dict(r) for r in w.eval_rows]


CASES: dict[str, tuple[str, str, Callable[[Workspace], object], tuple[str, ...]]] = {
    "data/truncated_gzip": ("data", "instructions", lambda w: gzip.compress(b'{"id": "a"}\n' * 50)[:-10], ("instructions.jsonl.gz", "cannot read")),
    "data/malformed_jsonl_line": ("data", "instructions", lambda w: gzip.compress(b'{"id": "a", "instruction": "x", "input": "", "output": "y"}\n{"id": \n'), ("instructions.jsonl.gz", "row 1", "malformed JSON at line 2")),
    "data/duplicate_ids": ("data", "instructions", lambda w: _instructions(3) + [_instructions(3)[1]], ("instructions.jsonl.gz", "row 3", "field 'id'", "duplicate value 'i1'")),
    "data/missing_field": ("data", "instructions", lambda w: [{k: v for k, v in r.items() if k != "output"} for r in _instructions(3)], ("instructions.jsonl.gz", "row 0", "field 'output'", "missing field")),
    "data/non_utf8_eval_source": ("data", "eval_source", lambda w: b'[{"instruction": "caf\xe9", "output": "x", "generator": "g", "dataset": "d"}]', ("eval_set.json", "not valid UTF-8")),
    "data/duplicate_eval_instruction": ("data", "eval_source", lambda w: _eval(w) + [_eval(w)[0]], ("eval_set.json", f"row {EVAL_ROWS}", "field 'instruction'", "duplicate value")),
    "data/eval_source_missing_dataset": ("data", "eval_source", lambda w: [{k: v for k, v in r.items() if k != "dataset"} for r in _eval(w)], ("eval_set.json", "row 0", "field 'dataset'")),
    "base_model/truncated_split": ("base_model", "unlabeled", lambda w: json.dumps(_instructions(4))[:-20], ("split.json", "malformed JSON at line 1")),
    "base_model/split_not_a_list": ("base_model", "unlabeled", lambda w: {"rows": _instructions(2)}, ("split.json", "expected a JSON list of records, got dict")),
    "base_model/split_missing_instruction": ("base_model", "validation", lambda w: [{"output": "x"}], ("split.json", "row 0", "field 'instruction'")),
    "generate/eval_set_wrong_type": ("generate", "eval_set", lambda w: [{**r, "output": 3} for r in _eval(w)], ("eval_set.json", "row 0", "field 'output'", "wrong type int")),
    "annotate/truncated_outputs": ("annotate", "outputs", lambda w: json.dumps(_outputs(w.eval_rows))[:200], ("outputs.json", "malformed JSON")),
    "annotate/empty_file": ("annotate", "outputs", lambda w: b"", ("outputs.json", "malformed JSON at line 1, column 1")),
    "annotate/output_not_a_string": ("annotate", "outputs", lambda w: [{**r, "output": ["a", "list"]} for r in _outputs(w.eval_rows)], ("outputs.json", "row 0", "field 'output'", "wrong type list")),
    "annotate/missing_output_field": ("annotate", "outputs", lambda w: [{k: v for k, v in r.items() if k != "output"} for r in _outputs(w.eval_rows)], ("outputs.json", "row 0", "field 'output'", "missing field")),
    "annotate/missing_instructions": ("annotate", "outputs", lambda w: _outputs(w.eval_rows)[:2], ("outputs.json", f"2 of {EVAL_ROWS} evaluation instructions have no output")),
    "annotate/duplicate_instructions": ("annotate", "outputs", lambda w: _outputs(w.eval_rows) + _outputs(w.eval_rows)[:1], ("outputs.json", f"row {EVAL_ROWS}", "duplicate value")),
    "annotate/two_generators": ("annotate", "outputs", lambda w: _outputs(w.eval_rows)[:2] + _outputs(w.eval_rows, "other")[2:], ("outputs.json", "one file must hold one generator")),
    "annotate/empty_list": ("annotate", "outputs", lambda w: [], ("outputs.json", f"{EVAL_ROWS} of {EVAL_ROWS} evaluation instructions have no output")),
    "annotate/non_utf8_outputs": ("annotate", "outputs", lambda w: json.dumps(_outputs(w.eval_rows)).encode().replace(b"answer 1", b"answer \xff"), ("outputs.json", "not valid UTF-8")),
    "annotate/unknown_instruction": ("annotate", "outputs", lambda w: _outputs(w.eval_rows)[:-1] + [{**_outputs(w.eval_rows)[-1], "instruction": "not in the set"}], ("outputs.json", "evaluation instructions have no output")),
    "leaderboard/bad_preference": ("leaderboard", "annotations", lambda w: [{**a, "preference": "first"} for a in _annotations(w.eval_rows)], ("annotations.json", "row 0", "field 'preference'", "'first'")),
    "leaderboard/missing_generator_2": ("leaderboard", "annotations", lambda w: [{k: v for k, v in a.items() if k != "generator_2"} for a in _annotations(w.eval_rows)], ("annotations.json", "row 0", "field 'generator_2'")),
    "leaderboard/preference_out_of_range": ("leaderboard", "annotations", lambda w: [{**a, "preference": 7} for a in _annotations(w.eval_rows)], ("annotations.json", "row 0", "field 'preference'", "7.0 is outside [1, 2]")),
    "leaderboard/empty_annotations": ("leaderboard", "annotations", lambda w: [], ("annotations.json",)),
}
# Gaps found by this suite in modules owned by others (fix there, then drop the mark).
XFAIL: dict[str, str] = {}  # known gaps, as strict xfails (none at the moment)


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.xfail(reason=XFAIL[c], strict=True)) if c in XFAIL else c for c in sorted(CASES)])
def test_bad_record_file(ws, capsys, case):
    stage, flag, make, fragments = CASES[case]
    name = f"broken_{flag}" + (".jsonl.gz" if flag == "instructions" else ".json")
    ws.write(name, make(ws))
    code, err, planted = run_stage(ws, stage, {flag: name}, capsys)
    # fragments[0] is the kind of file; the line must name the actual broken file
    assert_clear_error(code, err, planted, str(ws.root / name), *fragments[1:])


# ------------------------------------------------------------------ params.yaml
PARAMS_CASES: dict[str, tuple[str, Callable[[dict], object], tuple[str, ...]]] = {
    "unknown_key": ("annotate", lambda p: p["annotate"].update(annotater={"sim": "heuristic"}), ("params.yaml", "field 'annotate.annotater'", "did you mean 'annotators'")),
    "wrong_type": ("annotate", lambda p: p["annotate"].update(seed="zero"), ("params.yaml", "field 'annotate.seed'", "got str 'zero'")),
    "wrong_type_scaled": ("generate", lambda p: p["generate"].update(max_new_tokens={"tiny": 1.5, "paper": 300}), ("params.yaml", "field 'generate.max_new_tokens'", "got float 1.5")),
    "nested_unknown_key": ("base_model", lambda p: p["base_model"]["train"].update(learning_rat=0.1), ("params.yaml", "field 'base_model.train.learning_rat'", "did you mean 'learning_rate'")),
    "unknown_section": ("leaderboard", lambda p: p.update(leaderbord={"title": "x"}), ("params.yaml", "field 'leaderbord'", "unknown section", "did you mean 'leaderboard'")),
    "unknown_paths_key": ("data", lambda p: p["paths"].update(shared_dat="x"), ("params.yaml", "field 'paths.shared_dat'", "did you mean 'shared_data'")),
    "bad_scale": ("annotate", lambda p: p.update(scale="huge"), ("params.yaml", "field 'scale'", "scale must be one of")),
    "malformed_yaml": ("annotate", lambda p: "scale: tiny\nannotate: {seed: [1, 2\n", ("params.yaml", "malformed YAML at line")),
    "non_utf8_yaml": ("annotate", lambda p: "scale: tiny\n# caf\udcff\n", ("params.yaml", "not valid UTF-8")),
}


@pytest.mark.parametrize("case", sorted(PARAMS_CASES))
def test_bad_params(ws, capsys, case):
    stage, edit, fragments = PARAMS_CASES[case]
    replaced = edit(ws.params)
    if isinstance(replaced, str):
        ws.write("params.yaml", replaced.encode("utf-8", "surrogateescape"))
    else:
        ws.write("params.yaml", yaml.safe_dump(ws.params, sort_keys=False))
    code, err, planted = run_stage(ws, stage, None, capsys)
    assert_clear_error(code, err, planted, *fragments)


def test_missing_params_file(ws, capsys):
    module = importlib.import_module("afarm.stages.annotate")
    inputs, outputs = STAGE_FILES["annotate"]
    argv = _argv(ws, "annotate", inputs, outputs)
    argv[1] = str(ws.root / "nowhere" / "params.yaml")
    with pytest.raises(SystemExit) as stop:
        _cli.run(module.main, module.arguments(), argv)
    assert stop.value.code == 2
    assert "nowhere/params.yaml: params file not found" in capsys.readouterr().err


def test_missing_shared_folder_is_named(ws, capsys):
    """The data bundle (../shared) is absent: the error names the missing folder."""
    missing = ws.root / "shared_elsewhere" / "data" / "alpaca_eval" / "results" / "model_outputs.json"
    code, err, planted = run_stage(ws, "data", {"eval_source": str(missing.relative_to(ws.root))}, capsys)
    assert_clear_error(code, err, planted, "model_outputs.json", f"folder {ws.root / 'shared_elsewhere'} does not exist")


def test_broken_model_folder(ws, capsys):
    """A model folder without its files (an interrupted copy): one line, not a traceback."""
    (ws.root / "broken_model").mkdir()
    (ws.root / "broken_model" / "config.json").write_text('{"model_type": "llama", "hidd')
    code, err, planted = run_stage(ws, "generate", {"model": "broken_model"}, capsys)
    assert_clear_error(code, err, planted, "broken_model")


# ------------------------------------------------------------------ legitimate but unusual inputs
def test_empty_and_one_megabyte_outputs_are_accepted(ws, capsys):
    outputs = _outputs(ws.eval_rows)
    outputs[0]["output"] = ""  # upstream treats an empty answer as a (losing) answer
    outputs[1]["output"] = "GOOD " * 200_000  # 1 MB
    ws.write("big_outputs.json", outputs)
    code, err, _ = run_stage(ws, "annotate", {"outputs": "big_outputs.json"}, capsys)
    assert code == 0, err
    records = json.loads((ws.root / "out" / "annotations.json").read_text())
    assert [r["output_2"] for r in records[:2]] == ["", "GOOD " * 200_000]
    assert all(1.0 <= r["preference"] <= 2.0 for r in records)  # the heuristic judge's soft preference
    assert records[0]["preference"] < 1.5  # the empty answer loses to the reference


# ------------------------------------------------------------------ real processes
@pytest.mark.parametrize("stage,flag,content,fragment", [
    ("annotate", "outputs", b'[{"instruction": "x", "output": ', "malformed JSON"),
    ("leaderboard", "annotations", b'[{"instruction": "x"}]', "field 'output_1'"),
])
def test_python_dash_m_exits_2_with_one_line(ws, stage, flag, content, fragment):
    ws.write("params.yaml", yaml.safe_dump(ws.params, sort_keys=False))
    ws.write("broken.json", content)
    inputs, outputs = STAGE_FILES[stage]
    planted = _plant_previous_outputs(ws, outputs)
    argv = _argv(ws, stage, {**inputs, flag: "broken.json"}, outputs)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    result = subprocess.run([sys.executable, "-m", f"afarm.stages.{stage}", *argv], capture_output=True, text=True, env=env, cwd=ws.root)
    line = assert_clear_error(result.returncode, result.stderr, planted, "broken.json", fragment)
    assert line == result.stderr.strip().splitlines()[-1]


# ------------------------------------------------------------------ the `afarm` CLI
CLI_CASES: dict[str, tuple[Callable[[Workspace], list[str]], tuple[str, ...]]] = {
    "leaderboard/truncated_annotations": (
        lambda w: ["leaderboard", "--annotations_dir", str(w.write("ann/m.json", b'[{"instruction": "x", ').parent)],
        ("m.json", "malformed JSON")),
    "leaderboard/missing_dir": (lambda w: ["leaderboard", "--annotations_dir", str(w.root / "nowhere")], ("nowhere", "not a folder")),
    "evaluate/duplicate_instruction": (
        lambda w: ["evaluate", "--model_outputs", str(w.write("dup.json", _outputs(w.eval_rows) + _outputs(w.eval_rows)[:1])),
                   "--reference", str(w.root / "eval_set.json"), "--annotator", "heuristic", "--cache_dir", str(w.root / "cache")],
        ("dup.json", f"row {EVAL_ROWS}", "field 'instruction'", "duplicate value")),
    "evaluate/non_utf8_outputs": (
        lambda w: ["evaluate", "--model_outputs", str(w.write("bad.json", b'[{"instruction": "\xff"}]')),
                   "--reference", str(w.root / "eval_set.json"), "--annotator", "heuristic", "--cache_dir", str(w.root / "cache")],
        ("bad.json", "not valid UTF-8")),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_bad_input(ws, capsys, case):
    cli = pytest.importorskip("afarm.cli")
    make_argv, fragments = CLI_CASES[case]
    out = ws.root / "cli_out"
    planted = _plant_previous_outputs(ws, {"csv": "cli_out/leaderboard.csv", "md": "cli_out/leaderboard.md"})
    argv = make_argv(ws) + ["--out_dir", str(out)]
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as stop:
        code = stop.code
    assert_clear_error(code, capsys.readouterr().err, planted, *fragments)
