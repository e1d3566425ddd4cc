"""Small I/O helpers shared by every layer.

* Every file a stage produces is written to a temporary name in the same folder
  and renamed into place, so an interrupted stage never leaves a file that looks
  finished (``atomic_write``, ``atomic_dir``). Inside ``outputs_together`` (every stage
  runs in one) the renames wait until all outputs are written, so a stage that fails
  half-way leaves every earlier output as it was, not a mix of old and new files.
* Every record file we read is validated row by row; a problem raises
  ``InputError`` naming the file, the row and the field.
* An output that cannot be written (unwritable or missing folder, full disk) raises
  ``OutputError`` naming the path and the reason; the previous output stays intact.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


class InputError(ValueError):
    """Bad input: the message names the file, and where possible the row and field."""

    def __init__(self, path: str | os.PathLike, message: str, row: int | None = None, field: str | None = None):
        self.path, self.row, self.field = str(path), row, field
        where = self.path
        if row is not None:
            where += f", row {row}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")


class OutputError(OSError):
    """An output cannot be written: the message names the path and the system's reason."""

    def __init__(self, path: str | os.PathLike, err: OSError):
        self.path = str(path)
        reason = err.strerror or str(err)
        if err.errno == errno.ENOSPC:
            reason += " (the disk is full)"
        elif err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            reason += " (the folder is not writable)"
        elif err.errno in (errno.ENOTDIR, errno.EEXIST) and err.filename:
            reason += f" ({err.filename} is not a folder)" if err.errno == errno.ENOTDIR else f" ({err.filename} exists and is not a folder)"
        super().__init__(err.errno, f"cannot write {self.path}: {reason}")

    def __str__(self) -> str:
        return self.strerror or ""


def _as_output_error(path: Path, err: OSError) -> OSError:
    """Our own write failures become ``OutputError``; an unrelated OSError (another file) is kept."""
    if isinstance(err, OutputError):
        return err
    if err.filename is None or str(path.parent) in str(err.filename) or str(err.filename) in str(path):
        return OutputError(path, err)
    return err


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as err:  # a regular file where a folder should be
        blocker = next((p for p in [path.parent, *path.parent.parents] if p.exists() and not p.is_dir()), path.parent)
        raise OutputError(path, OSError(errno.ENOTDIR, "Not a directory", str(blocker))) from err
    except OSError as err:
        raise _as_output_error(path, err) from err


# ---------------------------------------------------------------- writing


# Open ``outputs_together`` blocks, innermost last: each holds (temporary, final path, is a folder)
# for the outputs written so far, to be renamed into place when the outermost block succeeds.
_PENDING: list[list[tuple[Path, Path, bool]]] = []


@contextlib.contextmanager
def outputs_together() -> Iterator[None]:
    """Commit every output written in the block together, or none.

    ``atomic_write`` / ``atomic_dir`` inside the block write and fsync their temporary as usual
    but keep it under its temporary name; when the block ends without an error they are all
    renamed into place (in the order written), otherwise all are removed and every earlier
    output is left as it was. A file written into a folder that is still pending goes into
    that folder's temporary copy. Outputs cannot be read back inside the block.
    """
    batch: list[tuple[Path, Path, bool]] = []
    _PENDING.append(batch)
    try:
        yield
    except BaseException:
        _discard(batch)
        raise
    finally:
        assert _PENDING[-1] is batch
        _PENDING.pop()
    if _PENDING:  # nested: the outer block commits
        _PENDING[-1].extend(batch)
        return
    for k, (tmp, path, is_dir) in enumerate(batch):
        try:
            _swap_dir(tmp, path) if is_dir else os.replace(tmp, path)
        except OSError as err:
            _discard(batch[k:])
            raise _as_output_error(path, err) from err


def _discard(batch: list[tuple[Path, Path, bool]]) -> None:
    for tmp, _, is_dir in batch:
        if is_dir:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _inside_pending_folder(path: Path) -> Path:
    """``path`` redirected into the temporary copy of a pending output folder that holds it, if any."""
    absolute = Path(os.path.abspath(path))
    for batch in _PENDING:
        for tmp, final, is_dir in batch:
            if is_dir and Path(os.path.abspath(final)) in absolute.parents:
                return tmp / absolute.relative_to(os.path.abspath(final))
    return path


def _swap_dir(tmp: Path, path: Path) -> None:
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[Any]:
    """Open a temporary file beside ``path``; rename it onto ``path`` only on success
    (inside ``outputs_together``: when the whole block succeeds)."""
    target = _inside_pending_folder(Path(path))
    defer = bool(_PENDING) and target == Path(path)  # a file inside a pending folder goes with the folder
    path = target
    _make_parent(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise _as_output_error(path, err) from err
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
    try:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if defer:
            _PENDING[-1].append((Path(tmp), path, False))
        else:
            os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise _as_output_error(path, err) from err
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; it replaces ``path`` only on success
    (inside ``outputs_together``: when the whole block succeeds)."""
    path = Path(path)
    _make_parent(path)
    try:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    except OSError as err:
        raise _as_output_error(path, err) from err
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        yield tmp
        if _PENDING:
            _PENDING[-1].append((tmp, path, True))
        else:
            _swap_dir(tmp, path)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError) and (err.filename is None or str(tmp) in str(err.filename) or str(path.parent) in str(err.filename)):
            raise _as_output_error(path, err) from err
        raise


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def dumps(obj: Any) -> str:
    """Deterministic JSON text (sorted keys are NOT forced: record order is meaningful)."""
    return json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_write(path) as handle:
        handle.write(dumps(obj))


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path) as handle:
        handle.write(text)


# ---------------------------------------------------------------- reading


def _not_found(path: Path) -> InputError:
    """'file not found', naming the first missing folder on the way (e.g. a missing ../shared)."""
    missing = [p for p in path.parents if str(p) not in ("", ".") and not p.exists()]
    if missing:
        return InputError(path, f"file not found (folder {missing[-1]} does not exist)")
    if path.is_dir():
        return InputError(path, "expected a file, found a folder")
    return InputError(path, "file not found")


def read_json(path: str | os.PathLike) -> Any:
    """Read JSON (``.json`` or ``.json.gz``); malformed content names the file, line and column."""
    path = Path(path)
    if not path.is_file():
        raise _not_found(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            return json.load(handle)
    except UnicodeDecodeError as err:
        raise InputError(path, f"not valid UTF-8 (byte {err.start})") from err
    except json.JSONDecodeError as err:
        raise InputError(path, f"malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}") from err
    except (OSError, EOFError) as err:  # e.g. truncated gzip
        raise InputError(path, f"cannot read: {err}") from err


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    path = Path(path)
    if not path.is_file():
        raise _not_found(path)
    rows = []
    opener = gzip.open if path.suffix == ".gz" else open
    lineno = 0
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise InputError(path, f"malformed JSON at line {lineno}: {err.msg}", row=lineno - 1) from err
    except UnicodeDecodeError as err:
        raise InputError(path, f"not valid UTF-8 (line {lineno + 1})") from err
    except (OSError, EOFError) as err:  # e.g. a truncated or non-gzip .gz
        raise InputError(path, f"cannot read after line {lineno}: {err}") from err
    return rows


def validate_records(
    records: Any,
    path: str | os.PathLike,
    required: Sequence[str] = (),
    nonempty: Sequence[str] = (),
    types: dict[str, type | tuple[type, ...]] | None = None,
) -> list[dict]:
    """Check a list of dict records; raise ``InputError`` naming file, row and field."""
    if not isinstance(records, list):
        raise InputError(path, f"expected a JSON list of records, got {type(records).__name__}")
    types = types or {}
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise InputError(path, f"expected an object, got {type(rec).__name__}", row=i)
        for key in required:
            if key not in rec:
                raise InputError(path, "missing field", row=i, field=key)
        for key, typ in types.items():
            if key in rec and not isinstance(rec[key], typ):
                raise InputError(path, f"wrong type {type(rec[key]).__name__}", row=i, field=key)
            if isinstance(rec.get(key), float) and math.isnan(rec[key]):
                raise InputError(path, "value is NaN", row=i, field=key)
        for key in nonempty:
            value = rec.get(key)
            if value is None or (isinstance(value, str) and not value.strip()):
                raise InputError(path, "empty value", row=i, field=key)
    return records


def read_records(
    path: str | os.PathLike,
    required: Sequence[str] = (),
    nonempty: Sequence[str] = (),
    types: dict[str, type | tuple[type, ...]] | None = None,
) -> list[dict]:
    """Read a JSON list (``.json``/``.json.gz``) or JSON-lines file (``.jsonl``) of records and validate it."""
    path = Path(path)
    records = read_jsonl(path) if ".jsonl" in path.suffixes else read_json(path)
    return validate_records(records, path, required=required, nonempty=nonempty, types=types)


def check_unique(records: Iterable[dict], key: str, path: str | os.PathLike) -> None:
    seen: dict[Any, int] = {}
    for i, rec in enumerate(records):
        value = rec[key]
        if value in seen:
            raise InputError(path, f"duplicate value {value!r} (first at row {seen[value]})", row=i, field=key)
        seen[value] = i


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_text(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()
