"""Bad input to the stages that test_bad_input.py does not cover, each run as the stage table runs it.

Every case is a folder laid out like the repository (``data/``, ``models/``, ``results/``, a
``params.yaml``) holding valid inputs for one entry of ``afarm.dag.STAGES``, one of them broken,
and a "previous run" file at every output path. The stage runs as the exact command of the stage
table (``python -m afarm.stages.<module> --flag path ...``, the data bundle at ``{shared_data}``;
a broken bundle file sits in a mirror of the bundle made of symlinks). The commands run in one
warm interpreter (``stage_runner.py`` forks one child per command: importing torch costs seconds
per process). Each case checks:

* exit code 2 and exactly one ``error:`` line on stderr, the last line, no traceback;
* the line names the file (as the command gave it) and the row and/or field;
* every previous output is byte-for-byte intact and no temporary file is left beside it.

Between this file and test_bad_input.py every stage module of the DAG has a case (a test checks).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml

from afarm import dag

HERE = Path(__file__).resolve().parent
EVAL_ROWS = 4
STAGES = {s.name: s for s in dag.STAGES}


# ------------------------------------------------------------------ valid inputs
def _eval_rows(shared: Path) -> list[dict]:
    return json.loads((shared / "alpaca_eval/results/text_davinci_003/model_outputs.json").read_text(encoding="utf-8"))[:EVAL_ROWS]


def _split(name: str) -> list[dict]:
    return [{"instruction": f"{name}: say the number {i}.", "input": "" if i % 2 else f"{i}", "output": f"{i}"} for i in range(4)]


def _preferences() -> list[dict]:
    return [{"instruction": f"Say {i}.", "input": "", "output_1": f"{i}", "output_2": f"the number {i}", "preference": 1 + i % 2,
             "annotator": "offline_pool"} for i in range(4)]


def _sft_samples(name: str, eval_rows: list[dict], repo: Path) -> list[dict]:
    """The `sft_samples` stage's file: as many samples per prompt as its recipe asks at the tiny scale."""
    from afarm.config import load_params
    from afarm.methods.sft_samples import recipe

    source, recipe_name, _ = dag.SFT_SAMPLES[name]
    n = recipe(load_params(repo / "params.yaml"), recipe_name).generation.num_samples
    rows = eval_rows if source == "data/eval_set.json" else _split(Path(source).stem)
    return [{"instruction": r["instruction"], "input": r.get("input", ""), "samples": [f"sample {j} of {i}" for j in range(n)],
             "finished": [j % 2 == 0 for j in range(n)]} for i, r in enumerate(rows)]


def _annotations(eval_rows: list[dict], generator: str) -> list[dict]:
    return [{"instruction": r["instruction"], "output_1": r["output"], "output_2": f"answer {i}", "generator_1": dag.REFERENCE,
             "generator_2": generator, "preference": 1.0 + (i % 2), "annotator": "offline_judge"} for i, r in enumerate(eval_rows)]


def _difficulty(eval_rows: list[dict]) -> str:
    return "index,instruction,instruction_difficulty\n" + "".join(
        f'{i},"{r["instruction"]}",{0.1 * i - 0.1}\n' for i, r in enumerate(eval_rows))


def _gamed() -> str:
    return "model,index,preference,std_delta_len,instruction_difficulty\n" + "".join(
        f"gpt4_1106_preview{s},{i},{0.3 + 0.1 * i},{0.5 * i - 0.5},{0.1 * i}\n" for s in ("_concise", "_verbose") for i in range(3))


SIM_VS_HUMAN_METRICS = {"spearman": 0.8, "spearman_ci": [0.4, 1.0], "kendall": 0.6, "kendall_ci": [0.2, 0.9], "n_models": 12,
                        "n_bootstrap": 200, "confidence": 0.95, "sim_annotators": ["offline_pool"],
                        "human_annotators": ["offline_judge"], "labels": {"sim": "simulated", "human": "human (stand-in)"}}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A tiny random causal LM and a reward model built from it, saved as stage outputs would be."""
    from afarm.methods.reward_model import init_reward_model, save_reward_model
    from afarm.models.lm import ModelConfig, build_model, save_model
    from afarm.models.prompts import format_prompt
    from afarm.models.tokenizer import train_tokenizer

    tok = train_tokenizer([format_prompt(f"Say the number {i}.") + f" {i} the number" for i in range(10)] * 3, vocab_size=300)
    model = build_model(ModelConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_position_embeddings=128), tok)
    folder = tmp_path_factory.mktemp("tiny_models")
    save_model(model, tok, folder / "lm")
    save_reward_model(init_reward_model(model, tok, seed=0), tok, folder / "rm")
    return {"lm": folder / "lm", "rm": folder / "rm"}


def _write(path: Path, content: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content, indent=1), encoding="utf-8")


def write_valid_input(ws: Path, rel: str, eval_rows: list[dict], models: dict[str, Path], repo: Path) -> None:
    """A valid file (or model folder) at the stage-table path ``rel`` (bundle paths need nothing)."""
    path = ws / rel
    if rel.startswith("models/"):
        shutil.copytree(models["rm" if rel.startswith("models/reward_model_") else "lm"], path)
    elif rel.startswith("data/splits/"):
        _write(path, _split(Path(rel).stem))
    elif rel == "data/eval_set.json":
        _write(path, eval_rows)
    elif rel.startswith("data/preferences/"):
        _write(path, _preferences())
    elif rel.startswith("data/sft_samples/"):
        _write(path, _sft_samples(Path(rel).stem, eval_rows, repo))
    elif rel.startswith("results/annotations/"):
        _write(path, _annotations(eval_rows, Path(rel).stem))
    elif rel == "results/lc_inputs/instruction_difficulty.csv":
        _write(path, _difficulty(eval_rows))
    elif rel == "results/lc_inputs/gamed.csv":
        _write(path, _gamed())
    elif rel == "results/metrics/sim_vs_human.json":
        _write(path, SIM_VS_HUMAN_METRICS)
    elif rel.startswith("results/method_health_") and rel.endswith(".md"):
        _write(path, "### Method health\n\n| method | passes |\n|---|:---:|\n| dpo | yes |\n")
    elif (repo / rel).is_file():  # the committed tables, figures and paper numbers
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(repo / rel, path)
    else:
        raise AssertionError(f"no valid content for {rel}: add it to write_valid_input")


# ------------------------------------------------------------------ breaking things
def edit_json(fn: Callable[[list], object], gz: bool = False) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        opener = gzip.open if gz else open
        with opener(path, "rt", encoding="utf-8") as handle:
            data = json.load(handle)
        text = json.dumps(fn(data), indent=1)
        if path.is_symlink():
            path.unlink()
        path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    return edit


def set_field(row: int, key: str, value: object) -> Callable[[list], list]:
    return lambda rows: [{**r, key: value} if i == row else r for i, r in enumerate(rows)]


def drop_field(row: int, key: str) -> Callable[[list], list]:
    return lambda rows: [{k: v for k, v in r.items() if not (i == row and k == key)} for i, r in enumerate(rows)]


def drop_column(column: str) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
        k = rows[0].index(column)
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([r[:k] + r[k + 1:] for r in rows])
        if path.is_symlink():
            path.unlink()
        path.write_text(buf.getvalue(), encoding="utf-8")
    return edit


def blank_cell(row: int, column: str) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
        rows[row][column] = ""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        path.write_text(buf.getvalue(), encoding="utf-8")
    return edit


def remove(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).unlink()


def truncate(name: str, keep: int) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_bytes((folder / name).read_bytes()[:keep])


@dataclass
class Case:
    stage: str  # entry of the stage table
    path: str  # the broken input as the stage table names it (``{shared_data}/...`` for the bundle)
    breaks: Callable[[Path], None]  # edits the valid file (or model folder) in place
    fragments: tuple[str, ...]  # besides the path: what the error line must say


GOLD = f"{dag.BUNDLE}/results/LMCocktail-10.7B-v1/alpaca_eval_gpt4/annotations.json.gz"  # first gold model (params)
CASES: dict[str, Case] = {
    "sft/split_row_missing_instruction": Case("sft", "data/splits/sft.json", edit_json(drop_field(1, "instruction")), ("row 1, field 'instruction': missing field",)),
    "sft/base_model_without_config": Case("sft", "models/base_model", remove("config.json"), ("config.json is missing",)),
    "reward_model/preference_3": Case("reward_model_sim", "data/preferences/sim.json", edit_json(set_field(2, "preference", 3)), ("row 2, field 'preference'", "got 3")),
    "reward_model/missing_preference": Case("reward_model_human", "data/preferences/human.json", edit_json(drop_field(0, "preference")), ("row 0, field 'preference': missing field",)),
    "ppo/reward_model_without_config": Case("ppo_sim", "models/reward_model_sim", remove("config.json"), ("config.json is missing",)),
    "quark/eval_set_missing_instruction": Case("quark_sim", "data/eval_set.json", edit_json(drop_field(0, "instruction")), ("row 0, field 'instruction': missing field",)),
    "dpo/preference_as_text": Case("dpo_sim", "data/preferences/sim.json", edit_json(set_field(1, "preference", "2")), ("row 1, field 'preference': wrong type str",)),
    "best_of_n/truncated_reward_model_config": Case("best_of_n_human", "models/reward_model_human", truncate("config.json", 40), ("config.json: malformed JSON at line",)),
    "expert_iteration/blank_instruction": Case("expert_iteration_sim", "data/splits/unlabeled.json", edit_json(set_field(2, "instruction", "  ")), ("row 2, field 'instruction': empty value",)),
    "feedme/preference_0": Case("feedme_human", "data/preferences/human.json", edit_json(set_field(3, "preference", 0)), ("row 3, field 'preference'", "got 0")),
    "reward_conditioning/output_not_text": Case("reward_conditioning_sim", "data/preferences/sim.json", edit_json(set_field(1, "output_2", ["a"])), ("row 1, field 'output_2': wrong type list",)),
    "sft_samples/split_missing_input": Case("sft_samples_preference", "data/splits/preference.json", edit_json(drop_field(0, "input")), ("row 0, field 'input': missing field",)),
    "preference_data/one_sample_of_a_pair": Case("preference_data_sim", "data/sft_samples/preference.json", edit_json(set_field(1, "samples", ["one"])), ("row 1, field 'samples': expected 2 strings",)),
    "sim_vs_human/annotation_preference_3": Case("sim_vs_human", "results/annotations/human/sft.json", edit_json(set_field(2, "preference", 3)), ("row 2, field 'preference'", "3.0 is outside [1, 2]")),
    "sim_vs_human/annotation_missing_generator": Case("sim_vs_human", "results/annotations/sim/ppo_sim.json", edit_json(drop_field(0, "generator_2")), ("row 0, field 'generator_2': missing field",)),
    "method_health/validation_missing_input": Case("method_health_sim", "data/splits/validation.json", edit_json(drop_field(0, "input")), ("row 0, field 'input': missing field",)),
    "report/leaderboard_missing_column": Case("report", "results/leaderboard_sim.csv", drop_column("win_rate"), ("field 'win_rate': missing column",)),
    "analyze_annotators/gold_bad_preference": Case("analyze_annotators", GOLD, edit_json(set_field(3, "preference", "A"), gz=True), ("row 3, field 'preference'", "'A'")),
    "instruction_difficulty/leaderboard_missing_column": Case("instruction_difficulty", dag.AE2_LEADERBOARD, drop_column("length_controlled_winrate"), ("field 'length_controlled_winrate': missing column",)),
    "alpacaeval2_reproduction/difficulty_missing_value": Case("alpacaeval2_reproduction", "results/lc_inputs/instruction_difficulty.csv", blank_cell(1, "instruction_difficulty"), ("row 1, field 'instruction_difficulty': missing value",)),
    "published_outputs/source_missing_output": Case("published_gpt4", f"{dag.BUNDLE}/results/gpt4/model_outputs.json", edit_json(drop_field(2, "output")), ("row 2, field 'output': missing field",)),
}


# ------------------------------------------------------------------ running every case once
def mirror_bundle(real: Path, fake: Path, rel: str) -> Path:
    """``fake`` mirrors ``real`` with symlinks, except along ``rel``, whose file is a copy (to break)."""
    parts = Path(rel).parts
    here, there = real, fake
    for k, part in enumerate(parts):
        there.mkdir(parents=True, exist_ok=True)
        for child in here.iterdir():
            if child.name != part:
                (there / child.name).symlink_to(child)
        here, there = here / part, there / part
    shutil.copyfile(here, there)
    return there


def plant_previous_outputs(ws: Path, stage: dag.Stage) -> dict[Path, bytes]:
    planted = {}
    for rel in [*stage.outs.values(), *stage.metrics.values(), *stage.plots.values()]:
        path = ws / rel
        if dag.is_directory(rel):
            path = path / "model.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        content = f"previous run of {rel}\n".encode()
        path.write_bytes(content)
        planted[path] = content
    return planted


@dataclass
class Outcome:
    returncode: int
    stderr: str
    seconds: float
    path: str  # the broken input as the command names it
    planted: dict[Path, bytes]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, shared, repo, tiny_models) -> dict[str, Outcome]:
    root = tmp_path_factory.mktemp("bad_input_stages")
    eval_rows = _eval_rows(shared)
    params = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    jobs, prepared = [], {}
    for name, case in CASES.items():
        ws = root / name.replace("/", "__")
        ws.mkdir()
        stage = STAGES[case.stage]
        shared_root = shared
        if case.path.startswith("{shared_data}/"):  # a broken bundle file: a mirror of the bundle holds it
            shared_root = ws / "shared"
            broken = mirror_bundle(shared, shared_root, case.path.removeprefix("{shared_data}/"))
        for rel in [p for v in stage.deps.values() for p in dag.as_list(v)]:
            if not rel.startswith("{shared_data}/"):
                write_valid_input(ws, rel, eval_rows, tiny_models, repo)
        if not case.path.startswith("{shared_data}/"):
            broken = ws / case.path
        case.breaks(broken)
        _write(ws / "params.yaml", yaml.safe_dump({**params, "paths": {"shared_data": str(shared_root), "cache_dir": str(ws / "cache")}},
                                                  sort_keys=False))
        planted = plant_previous_outputs(ws, stage)
        jobs.append({"cmd": stage.command(shared_data=str(shared_root)), "cwd": str(ws)})
        prepared[name] = (case.path.format(shared_data=shared_root), planted)
    (root / "jobs.json").write_text(json.dumps(jobs), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(repo / "src")}
    done = subprocess.run([sys.executable, str(HERE / "stage_runner.py"), str(root / "jobs.json")], capture_output=True, text=True,
                          env=env, cwd=root, timeout=1200)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    return {name: Outcome(r["returncode"], r["stderr"], r["seconds"], *prepared[name]) for name, r in zip(CASES, results)}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.slow  # its fixture runs every stage module on broken inputs (minutes): not in the fast tier
def test_stage_rejects_bad_input(outcomes, case):
    out = outcomes[case]
    assert out.returncode == 2, f"exit code {out.returncode}, stderr:\n{out.stderr}"
    assert "Traceback" not in out.stderr, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, out.stderr
    assert lines[0] == out.stderr.strip().splitlines()[-1], out.stderr
    assert f"error: {out.path}" in lines[0] or f"error: cannot read input: {out.path}" in lines[0], lines[0]
    for fragment in CASES[case].fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    for path, content in out.planted.items():
        assert path.read_bytes() == content, f"{path} was changed"
        leftovers = [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp") or p.name.endswith(".old")]
        assert not leftovers, f"temporary files left beside {path}: {leftovers}"


def test_every_stage_module_has_a_bad_input_case():
    from test_bad_input import CASES as IN_PROCESS_CASES

    covered = {STAGES[c.stage].module for c in CASES.values()} | {c[0] for c in IN_PROCESS_CASES.values()}
    assert covered == {s.module for s in dag.STAGES}, sorted({s.module for s in dag.STAGES} - covered)
