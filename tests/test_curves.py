"""Training curves: the CSV writer by hand, every training stage declares its curve as a DVC plot,
and a real SFT run writes one row per optimizer step that ``dvc plots show`` reads."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import yaml

from afarm import dag
from afarm.curves import curve_columns, curve_csv, log_columns, write_curve
from afarm.io import outputs_together

# Stage modules that train a model: each writes a training curve.
TRAINING = {"base_model", "sft", "reward_model", "dpo", "feedme", "reward_conditioning", "expert_iteration", "ppo", "quark"}


# ---------------------------------------------------------------- the writer


def test_curve_csv_by_hand():
    text = curve_csv({"loss": [2.5, 1.25], "learning_rate": [0.001, 0.0005], "grad_norm": [3, float("nan")]})
    assert text == "step,loss,learning_rate,grad_norm\n1,2.5,0.001,3\n2,1.25,0.0005,nan\n"
    assert curve_csv({"loss": []}) == "step,loss\n"  # nothing trained: the header alone
    assert curve_csv({"loss": [0.1 + 0.2]}) == "step,loss\n1,0.30000000000000004\n"  # every digit: reads back exactly


def test_curve_csv_refuses_ragged_or_empty_columns():
    with pytest.raises(ValueError, match="different lengths"):
        curve_csv({"loss": [1.0, 2.0], "grad_norm": [1.0]})
    with pytest.raises(ValueError, match="at least one column"):
        curve_csv({})
    with pytest.raises(ValueError, match="'step'"):
        curve_csv({"step": [1], "loss": [1.0]})


def test_one_column_name_per_quantity():
    stats = {"rejected_rewards": [-1.0], "losses": [0.5], "accuracies": [1.0], "learning_rates": [1e-4], "grad_norms": [2.0],
             "num_steps": 1, "seconds": 9.0, "eval_after": {"loss": 0.1}}
    # the per-step lists only, renamed, in the fixed order of COLUMNS (not the order of the result)
    assert curve_columns(stats) == {"loss": [0.5], "learning_rate": [1e-4], "grad_norm": [2.0], "accuracy": [1.0], "rejected_reward": [-1.0]}


def test_log_columns_drop_time_and_text_and_check_the_steps():
    log = [{"step": 1, "score": 0.5, "learning_rate": 1e-5, "seconds": 3.1, "example_response": "hi"},
           {"step": 2, "score": 0.75, "learning_rate": 2e-5, "seconds": 6.4, "example_response": "ho"}]
    assert log_columns(log) == {"score": [0.5, 0.75], "learning_rate": [1e-5, 2e-5]}
    assert curve_csv(log_columns(log)) == "step,score,learning_rate\n1,0.5,1e-05\n2,0.75,2e-05\n"
    with pytest.raises(ValueError, match="record 1 of the log has step 3, expected 2"):
        log_columns([log[0], {**log[1], "step": 3}])


def test_write_curve_is_atomic(tmp_path):
    path = tmp_path / "curves" / "sft.csv"
    write_curve(path, {"loss": [1.0]})
    assert path.read_text() == "step,loss\n1,1.0\n"
    with pytest.raises(RuntimeError), outputs_together():  # a stage that fails after writing its curve
        write_curve(path, {"loss": [2.0, 3.0]})
        raise RuntimeError("stage failed")
    assert path.read_text() == "step,loss\n1,1.0\n" and [p.name for p in path.parent.iterdir()] == ["sft.csv"]


# ---------------------------------------------------------------- the stage table


@pytest.fixture(scope="module")
def stages() -> dict:
    """The stages of the generated dvc.yaml."""
    return yaml.safe_load(dag.dvc_yaml())["stages"]


def test_every_training_stage_declares_its_curve_as_a_plot(stages):
    training = [s for s in dag.STAGES if s.module in TRAINING]
    assert {s.module for s in training} == TRAINING and len(training) == 3 + 7 * len(dag.PREFERENCE_SETS)
    for stage in training:
        path = f"results/curves/{stage.name}.csv"
        assert stage.plots["log"] == path, stage.name
        assert f"--log {path}" in stage.command()
        declared = {k: v for entry in stages[stage.name]["plots"] for k, v in entry.items()}
        y = "score" if stage.module in ("ppo", "quark") else "loss"
        assert declared[path] == {"template": "linear", "x": "step", "y": y, "title": f"{stage.name}: {y} per step", "cache": False}
    for name in ("ppo_sim", "quark_human"):  # the RL loops' PNGs are plots too (images: no properties)
        declared = {k: v for entry in stages[name]["plots"] for k, v in entry.items()}
        assert declared[f"results/curves/{name}.png"] == {"cache": False}
    assert not [s.name for s in dag.STAGES if s.module not in TRAINING and any(p.startswith("results/curves/") for p in s.plots.values())]


# ---------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    """The sft stage on 6 examples, 2 a step, 1 epoch: 3 optimizer steps."""
    from afarm.models.lm import ModelConfig, build_model, save_model
    from afarm.models.prompts import format_prompt
    from afarm.models.tokenizer import train_tokenizer
    from afarm.stages.sft import arguments, main

    tmp = tmp_path_factory.mktemp("sft_curve")
    for name, n in {"sft": 6, "validation": 2}.items():
        rows = [{"instruction": f"Say {name} {i}.", "input": "", "output": f"{name} {i}."} for i in range(n)]
        (tmp / f"{name}.json").write_text(json.dumps(rows))
    tok = train_tokenizer([format_prompt("Say sft validation 0 1 2 3 4 5.")] * 5, vocab_size=300)
    save_model(build_model(ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), tok), tok, tmp / "base")
    params = {"scale": "tiny", "_path": "params.yaml", "generate": {"max_new_tokens": 8, "do_sample": False}, "sft": {"train": {
        "num_epochs": 1, "batch_size": 2, "micro_batch_size": 1, "max_length": 256, "learning_rate": 1e-3,
        "warmup_ratio": 0.0, "lr_scheduler": "linear", "num_threads": 1, "show_progress": False}}}
    stage = next(s for s in dag.STAGES if s.name == "sft")
    argv = ["--base_model", str(tmp / "base"), "--sft", str(tmp / "sft.json"), "--validation", str(tmp / "validation.json"),
            "--out", str(tmp / "model"), "--metrics", str(tmp / "metrics.json"), "--log", str(tmp / stage.plots["log"])]
    main(arguments().parse_args(argv), params)
    return tmp, stage


def test_sft_run_writes_one_row_per_optimizer_step(sft_run):
    tmp, stage = sft_run
    metrics = json.loads((tmp / "metrics.json").read_text())
    with open(tmp / stage.plots["log"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert metrics["num_steps"] == 3 and [int(r["step"]) for r in rows] == [1, 2, 3]
    assert list(rows[0]) == ["step", "loss", "learning_rate", "grad_norm"]
    assert float(rows[-1]["loss"]) == metrics["final_train_loss"]  # the same number, every digit
    # linear decay from 1e-3 over 3 steps, no warmup: the rate each step used is 1e-3 x (3 - k) / 3
    assert [float(r["learning_rate"]) for r in rows] == pytest.approx([1e-3, 2e-3 / 3, 1e-3 / 3], rel=1e-12)
    assert all(float(r["grad_norm"]) > 0 and float(r["loss"]) > 0 for r in rows)


def test_dvc_plots_show_reads_the_declared_curve(sft_run, stages, tmp_path):
    """The declaration dvc.yaml gets for the sft stage, in a throwaway repo with the run's CSV."""
    tmp, stage = sft_run
    plots = stages["sft"]["plots"]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"sft": {"cmd": "true", "plots": plots}}}))
    target = tmp_path / stage.plots["log"]
    target.parent.mkdir(parents=True)
    target.write_bytes((tmp / stage.plots["log"]).read_bytes())
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=tmp_path, check=True)
    out = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--json"], cwd=tmp_path, check=True, capture_output=True, text=True)
    shown = json.loads(out.stdout)["data"][stage.plots["log"]]
    assert len(shown) == 1 and shown[0]["type"] == "vega"
    content = shown[0]["content"]
    assert [float(v["loss"]) for v in content["data"]["values"]] == [float(r["loss"]) for r in csv.DictReader(target.open())]
    assert content["encoding"]["x"]["field"] == "step" and content["title"]["text"] == "sft: loss per step"
