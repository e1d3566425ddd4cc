"""scripts/get_alpaca_eval.py: the listed files at the pinned commit, CSVs cut to the bundle's rows, SHA-256 checked.

No network here: the sparse clone runs against a local repository, and the copy + check on a few
files of the bundle made to look like an upstream checkout (plain annotations.json, CSVs with
more rows than the bundle's).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO.parent / "shared" / "data" / "alpaca_eval"
AE2_BOARD = "src/alpaca_eval/leaderboards/data_AlpacaEval_2/weighted_alpaca_eval_gpt4_turbo_leaderboard.csv"
ANNOTATIONS = "results/alpaca-7b/weighted_alpaca_eval_gpt4_turbo/annotations.json"
OUTPUTS = "results/text_davinci_003/model_outputs.json"


def load_script():
    spec = importlib.util.spec_from_file_location("get_alpaca_eval", REPO / "scripts" / "get_alpaca_eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_manifest_lists_the_files_the_pipeline_reads():
    script = load_script()
    manifest = script.read_manifest()
    assert len(manifest) == 136 and all(len(d) == 64 for d in manifest.values())
    for path in (OUTPUTS, ANNOTATIONS, AE2_BOARD,
                 "src/alpaca_eval/metrics/weights/weighted_alpaca_eval_gpt4_turbo/length_controlled_v1/baseline_gpt4_1106_preview.csv",
                 "results/gpt4_1106_preview_concise/model_outputs.json",
                 "src/alpaca_eval/evaluators_configs/alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt"):
        assert path in manifest, path
    rows = json.loads((script.LISTS / "csv_rows.json").read_text())
    assert set(rows) <= set(manifest) and len(rows[AE2_BOARD]) == 199
    if BUNDLE.is_dir():  # the commit the bundle was copied from
        assert script.COMMIT in (BUNDLE.parent / "MANIFEST.md").read_text()


def test_keep_rows_keeps_bytes():
    script = load_script()
    data = b",a,b\nm1,1.0,2\nzz,3,4\r\nm2,5,6\n"
    assert script.keep_rows(data, ["m1", "m2"]) == b",a,b\nm1,1.0,2\nm2,5,6\n"


@pytest.mark.skipif(not BUNDLE.is_dir(), reason="AlpacaEval bundle absent")
def test_install_from_a_checkout_cuts_csvs_and_checks_hashes(tmp_path, monkeypatch, capsys):
    script = load_script()
    full = script.read_manifest()
    lists = tmp_path / "lists"
    lists.mkdir()
    names = [OUTPUTS, ANNOTATIONS, AE2_BOARD]
    (lists / "files.sha256").write_text("".join(f"{full[n]}  {n}\n" for n in names))
    rows = json.loads((script.LISTS / "csv_rows.json").read_text())
    (lists / "csv_rows.json").write_text(json.dumps({AE2_BOARD: rows[AE2_BOARD]}))
    monkeypatch.setattr(script, "LISTS", lists)
    # an upstream-like checkout: plain JSON, and the leaderboard with two models the bundle dropped
    source = tmp_path / "checkout"
    (source / ANNOTATIONS).parent.mkdir(parents=True)
    (source / ANNOTATIONS).write_bytes(gzip.decompress((BUNDLE / (ANNOTATIONS + ".gz")).read_bytes()))
    (source / OUTPUTS).parent.mkdir(parents=True)
    shutil.copy(BUNDLE / OUTPUTS, source / OUTPUTS)
    board = (BUNDLE / AE2_BOARD).read_bytes().splitlines(keepends=True)
    (source / AE2_BOARD).parent.mkdir(parents=True)
    (source / AE2_BOARD).write_bytes(b"".join(board[:5] + [b"dropped-model,1,2,3\n"] + board[5:] + [b"another,4,5\n"]))

    assert script.main([str(tmp_path / "dest"), "--source", str(source)]) == 0
    out = tmp_path / "dest" / "alpaca_eval"
    for name in (OUTPUTS, AE2_BOARD, ANNOTATIONS + ".gz"):  # the bundle's bytes, annotations gzipped as there
        assert (out / name).read_bytes() == (BUNDLE / name).read_bytes(), name
    assert hashlib.sha256(gzip.decompress((out / (ANNOTATIONS + ".gz")).read_bytes())).hexdigest() == full[ANNOTATIONS]

    (source / OUTPUTS).write_bytes((source / OUTPUTS).read_bytes() + b"\n")  # one byte more
    (source / ANNOTATIONS).unlink()
    assert script.main([str(tmp_path / "dest2"), "--source", str(source)]) == 1
    err = capsys.readouterr().err
    assert f"{OUTPUTS}: SHA-256 differs" in err and "annotations.json: missing from the checkout" in err


def test_sparse_clone_fetches_only_the_listed_files(tmp_path, monkeypatch):
    script = load_script()
    remote = tmp_path / "remote"
    for name, text in [("results/a/model_outputs.json", "[]"), ("results/b/model_outputs.json", "[1]"), ("README.md", "x")]:
        (remote / name).parent.mkdir(parents=True, exist_ok=True)
        (remote / name).write_text(text)

    def git(*args):
        return subprocess.run(["git", "-C", str(remote), *args], check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    commit = git("rev-parse", "HEAD").strip()
    (remote / "results/a/model_outputs.json").write_text("[2]")  # a later commit must not be checked out
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "two")
    monkeypatch.setattr(script, "REPOSITORY", remote.as_uri())
    monkeypatch.setattr(script, "COMMIT", commit)
    clone = tmp_path / "clone"
    script.clone(clone, ["results/a/model_outputs.json"])
    files = sorted(str(p.relative_to(clone)) for p in clone.rglob("*") if p.is_file() and ".git" not in p.parts)
    assert files == ["results/a/model_outputs.json"]
    assert (clone / "results/a/model_outputs.json").read_text() == "[]"


def _fake_bundle(dest: Path, script) -> None:
    """Every listed file at its place under dest/alpaca_eval (annotations gzipped, as the bundle stores them)."""
    for name in script.read_manifest():
        path = dest / "alpaca_eval" / (name + ".gz" if name.endswith("/annotations.json") else name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")}


def test_if_missing_with_the_data_present_fetches_and_writes_nothing(tmp_path, monkeypatch, capsys):
    script = load_script()
    dest = tmp_path / "shared"
    _fake_bundle(dest, script)
    before = _snapshot(tmp_path)

    def no_clone(*args):
        raise AssertionError("clone called although the data is present")

    monkeypatch.setattr(script, "clone", no_clone)
    assert script.main([str(dest), "--if_missing"]) == 0
    assert _snapshot(tmp_path) == before
    assert "nothing fetched" in capsys.readouterr().out
    # the default DEST is params.yaml's paths.shared_data, relative to the repository
    params = tmp_path / "params.yaml"
    params.write_text("paths:\n  shared_data: shared\n")
    assert script.default_dest(params) == dest.resolve()
    assert script.default_dest(REPO / "params.yaml") == (REPO / yaml_shared_data()).resolve()


def yaml_shared_data() -> str:
    import yaml

    return yaml.safe_load((REPO / "params.yaml").read_text())["paths"]["shared_data"]


def test_if_missing_fetches_when_one_file_is_absent(tmp_path, monkeypatch):
    script = load_script()
    dest = tmp_path / "shared"
    _fake_bundle(dest, script)
    (dest / "alpaca_eval" / OUTPUTS).unlink()
    called = []

    def failing_clone(folder, paths):
        called.append(paths)
        raise script.FetchError("offline")

    monkeypatch.setattr(script, "clone", failing_clone)
    assert script.main([str(dest), "--if_missing"]) == 1
    assert called and OUTPUTS in called[0]


def test_no_network_stops_with_one_line_naming_the_manual_route(tmp_path, monkeypatch, capsys):
    """A real git clone of a repository that cannot be reached (a file URL to nothing: no traffic)."""
    script = load_script()
    monkeypatch.setattr(script, "REPOSITORY", (tmp_path / "unreachable").as_uri())
    dest = tmp_path / "shared"
    assert script.main([str(dest), "--if_missing"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1, err
    assert "could not fetch the AlpacaEval data" in err[0] and "--source" in err[0] and "The AlpacaEval data" in err[0]
    assert not (dest / "alpaca_eval").exists()


def test_the_quick_start_scripts_get_the_data_only_if_missing():
    for name, runner in (("run_tiny.sh", "snakemake --cores all"), ("test.sh", "python -m pytest")):
        lines = (REPO / "scripts" / name).read_text().splitlines()
        calls = [i for i, line in enumerate(lines) if line.strip() == "python scripts/get_alpaca_eval.py --if_missing"]
        install = lines.index("bash scripts/install.sh")
        start = next(i for i, line in enumerate(lines) if line.startswith(runner))
        assert len(calls) == 1 and install < calls[0] < start, name
