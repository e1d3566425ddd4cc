from __future__ import annotations

import gzip
import os

import pytest

from afarm.io import InputError, OutputError, atomic_dir, atomic_write, outputs_together, read_json, read_records, write_json


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_write(target) as handle:
            handle.write("half")
            raise RuntimeError("killed")
    assert read_json(target) == {"a": 1}  # the old finished file survives untouched
    assert os.listdir(tmp_path) == ["out.json"]  # and no temporary file is left


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "w.bin").write_bytes(b"1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "w.bin").write_bytes(b"2")
            raise RuntimeError("killed")
    assert (target / "w.bin").read_bytes() == b"1"
    assert sorted(os.listdir(tmp_path)) == ["model"]
    assert oct(os.stat(target).st_mode & 0o777) != "0o700"


def _previous_run(tmp_path):
    """Three outputs of a finished earlier run: two files and a model folder."""
    write_json(tmp_path / "a.json", {"run": 1})
    write_json(tmp_path / "b.json", {"run": 1})
    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "w.bin").write_bytes(b"1")
    return sorted(os.listdir(tmp_path))


def test_outputs_together_keeps_every_earlier_output_when_a_later_write_fails(tmp_path):
    before = _previous_run(tmp_path)
    with pytest.raises(RuntimeError):
        with outputs_together():
            write_json(tmp_path / "a.json", {"run": 2})
            with atomic_dir(tmp_path / "model") as tmp:
                (tmp / "w.bin").write_bytes(b"2")
            assert read_json(tmp_path / "a.json") == {"run": 1}  # finished, but not yet in place
            with atomic_write(tmp_path / "b.json") as handle:
                handle.write("half")
                raise RuntimeError("disk full")
    assert read_json(tmp_path / "a.json") == read_json(tmp_path / "b.json") == {"run": 1}
    assert (tmp_path / "model" / "w.bin").read_bytes() == b"1"
    assert sorted(os.listdir(tmp_path)) == before  # no temporary file or folder left


def test_outputs_together_commits_all_on_success(tmp_path):
    before = _previous_run(tmp_path)
    with outputs_together():
        with atomic_dir(tmp_path / "model") as tmp:
            (tmp / "w.bin").write_bytes(b"2")
        write_json(tmp_path / "model" / "generation.json", {"prefix": "x"})  # into the pending folder
        with outputs_together():  # nested: committed by the outer block
            write_json(tmp_path / "a.json", {"run": 2})
        assert read_json(tmp_path / "a.json") == {"run": 1}
        write_json(tmp_path / "b.json", {"run": 2})
    assert read_json(tmp_path / "a.json") == read_json(tmp_path / "b.json") == {"run": 2}
    assert sorted(os.listdir(tmp_path / "model")) == ["generation.json", "w.bin"]
    assert (tmp_path / "model" / "w.bin").read_bytes() == b"2"
    assert sorted(os.listdir(tmp_path)) == before


def test_outputs_together_names_the_output_that_cannot_be_committed(tmp_path, monkeypatch):
    before = _previous_run(tmp_path)
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith("b.json"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    with pytest.raises(OutputError, match=r"cannot write .*b\.json: No space left on device \(the disk is full\)"):
        with outputs_together():
            write_json(tmp_path / "a.json", {"run": 2})
            write_json(tmp_path / "b.json", {"run": 2})
            monkeypatch.setattr(os, "replace", replace)
    monkeypatch.undo()
    assert read_json(tmp_path / "b.json") == {"run": 1}
    assert sorted(os.listdir(tmp_path)) == before  # the temporaries not committed are removed


def test_readers_name_the_problem(tmp_path):
    path = tmp_path / "x.json"
    path.write_bytes(b'[{"a": "\xff"}]')
    with pytest.raises(InputError, match="not valid UTF-8"):
        read_json(path)
    gz = tmp_path / "x.json.gz"
    gz.write_bytes(gzip.compress(b'[{"a": 1}]')[:-6])
    with pytest.raises(InputError, match="x.json.gz: cannot read"):
        read_json(gz)
    with pytest.raises(InputError, match="file not found"):
        read_json(tmp_path / "missing.json")
    path.write_text('{"a": 1}')
    with pytest.raises(InputError, match="expected a JSON list of records, got dict"):
        read_records(path)
    path.write_text('[{"a": NaN}]')
    with pytest.raises(InputError, match="row 0, field 'a': value is NaN"):
        read_records(path, types={"a": float})
