"""The hub loader of upstream's real human preferences, on a local folder in the hub layout (never the hub)."""

from __future__ import annotations

import json

import pytest

from afarm.data.preferences import FIELDS, HubPreferenceConfig, load_hub, read_preferences, write
from afarm.io import InputError


def _row(i, **over):
    row = {
        "instruction": f"Task {i}",
        "input": "ctx" if i == 0 else "",
        "output_1": f"first {i}",
        "output_2": f"second {i}",
        "preference": 1 + i % 2,
        "raw_preference": 1 + i % 2,
    }
    row.update(over)
    return row


def _hub_folder(tmp_path, rows, config="alpaca_human_preference", split="preference"):
    """A local copy of the hub layout: a data file per config and split, declared in README.md."""
    folder = tmp_path / "alpaca_farm"
    (folder / config).mkdir(parents=True)
    (folder / config / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    card = ["---", "configs:", f"- config_name: {config}", "  data_files:", f"  - split: {split}", f"    path: {config}/{split}.jsonl", "---", ""]
    (folder / "README.md").write_text("\n".join(card))
    return folder


def test_defaults_name_the_upstream_dataset():
    cfg = HubPreferenceConfig()
    assert (cfg.hub_id, cfg.config_name, cfg.split, cfg.revision) == ("tatsu-lab/alpaca_farm", "alpaca_human_preference", "preference", None)


def test_loads_records_in_our_format_with_upstream_fields_kept(tmp_path):
    folder = _hub_folder(tmp_path, [_row(i) for i in range(5)])
    records = load_hub(HubPreferenceConfig(cache_dir=str(tmp_path / "cache"), hub_id=str(folder)))
    assert len(records) == 5
    assert records[0] == {
        "instruction": "Task 0",
        "input": "ctx",
        "output_1": "first 0",
        "output_2": "second 0",
        "preference": 1,
        "annotator": "human",
        "raw_preference": 1,
    }
    assert [r["preference"] for r in records] == [1, 2, 1, 2, 1]
    assert all(set(FIELDS) <= set(r) and r["annotator"] == "human" for r in records)
    # the records pass our own reader after a round trip
    write(tmp_path / "human.json", records)
    assert read_preferences(tmp_path / "human.json") == records


def test_limit_keeps_the_first_pairs(tmp_path):
    folder = _hub_folder(tmp_path, [_row(i) for i in range(6)])
    records = load_hub(HubPreferenceConfig(cache_dir=str(tmp_path / "cache"), hub_id=str(folder), limit=2))
    assert [r["instruction"] for r in records] == ["Task 0", "Task 1"]


def test_missing_input_column_becomes_empty(tmp_path):
    rows = [{k: v for k, v in _row(i).items() if k != "input"} for i in range(3)]
    records = load_hub(HubPreferenceConfig(cache_dir=str(tmp_path / "cache"), hub_id=str(_hub_folder(tmp_path, rows))))
    assert [r["input"] for r in records] == ["", "", ""]


@pytest.mark.parametrize(
    ("bad_row", "field"),
    [
        (_row(2, preference=3), "preference"),
        (_row(2, preference=0), "preference"),
        (_row(2, instruction="   "), "instruction"),
        (_row(2, output_2=None), "output_2"),
    ],
)
def test_bad_row_names_source_row_and_field(tmp_path, bad_row, field):
    rows = [_row(0), _row(1), bad_row, _row(3)]
    folder = _hub_folder(tmp_path, rows)
    with pytest.raises(InputError) as err:
        load_hub(HubPreferenceConfig(cache_dir=str(tmp_path / "cache"), hub_id=str(folder)))
    assert (err.value.row, err.value.field) == (2, field)
    assert str(folder) in str(err.value) and "alpaca_human_preference" in str(err.value)


def test_missing_column_is_named(tmp_path):
    rows = [{k: v for k, v in _row(i).items() if k != "output_2"} for i in range(3)]
    with pytest.raises(InputError) as err:
        load_hub(HubPreferenceConfig(cache_dir=str(tmp_path / "cache"), hub_id=str(_hub_folder(tmp_path, rows))))
    assert (err.value.row, err.value.field) == (0, "output_2")


def test_unknown_split_names_the_source(tmp_path):
    folder = _hub_folder(tmp_path, [_row(0)])
    with pytest.raises(InputError, match="split validation"):
        load_hub(HubPreferenceConfig(cache_dir=str(tmp_path / "cache"), hub_id=str(folder), split="validation"))


def test_preference_data_stage_takes_the_human_set_from_the_hub_when_params_say_so(tmp_path):
    """The paper-scale path of the `preference_data` stage: source `hub` for `human`, no sampling."""
    from afarm.stages import preference_data as stage

    folder = _hub_folder(tmp_path, [_row(i) for i in range(6)])
    params = {
        "scale": "tiny", "_path": "params.yaml",
        "paths": {"shared_data": str(tmp_path), "cache_dir": str(tmp_path / "cache")},
        "preference_data": {
            "annotators": {"sim": "heuristic", "human": None},
            "source": {"sim": "annotator", "human": "hub"},
            "hub": {"hub_id": str(folder), "cache_dir": str(tmp_path / "hf-cache"), "limit": 4},
        },
    }
    argv = ["--samples", str(tmp_path / "unused.json"),
            "--out", str(tmp_path / "out" / "human.json"), "--metrics", str(tmp_path / "out" / "m.json"), "--preference_set", "human"]
    stage.main(stage.arguments().parse_args(argv), params)
    records = read_preferences(tmp_path / "out" / "human.json")
    assert [r["instruction"] for r in records] == [f"Task {i}" for i in range(4)]
    metrics = json.loads((tmp_path / "out" / "m.json").read_text())
    assert metrics["n_pairs"] == 4 and metrics["annotator"] == "human" and metrics["fraction_output_2_preferred"] == 0.5
    # a source that is neither an annotator nor the hub is refused, naming the params field
    params["preference_data"]["source"]["human"] = "crowd"
    with pytest.raises(InputError, match="preference_data.source.human"):
        stage.main(stage.arguments().parse_args(argv), params)
