"""Fetch the AlpacaEval data bundle the pipeline reads: files of tatsu-lab/alpaca_eval at the pinned commit.

    python scripts/get_alpaca_eval.py ../shared/data          # DEST: then DEST/alpaca_eval/... exists

DEST is what ``params.yaml`` ``paths.shared_data`` (and ``afarm --shared_data``) points at: the
folder that holds ``alpaca_eval/``. The script

1. clones https://github.com/tatsu-lab/alpaca_eval without file contents (``--filter=blob:none``)
   into ``--clone`` (default DEST/.alpaca_eval_clone), sparse-checks-out only the files listed in
   ``data/alpaca_eval_bundle/files.sha256`` and checks out the pinned commit (needs git >= 2.27
   and network; about 90 MB are downloaded);
2. copies them to DEST/alpaca_eval/ at the same relative paths, each ``annotations.json`` gzipped
   to ``annotations.json.gz`` as in the bundle (level 9, no name, time 0: the bundle's bytes, so
   ``dvc.lock`` recognises them); the three CSVs listed in
   ``data/alpaca_eval_bundle/csv_rows.json`` (two leaderboards, the LC weights) keep only the rows
   of the models in the bundle, as the bundle the committed results were computed on does
   (the stages that read every row, ``instruction_difficulty`` and ``alpacaeval2_reproduction``,
   would otherwise calibrate over more models and give other numbers);
3. checks the SHA-256 of every file (before gzip) against ``files.sha256`` and exits 1 naming
   each mismatch.

``--source DIR``: an existing checkout of alpaca_eval at the pinned commit (no git command runs).

``--if_missing`` (what ``scripts/run_tiny.sh`` and ``scripts/test.sh`` run): do nothing when every listed
file is already in DEST/alpaca_eval/ (an ``annotations.json`` also as ``.json.gz``), else fetch as
above. Without DEST, DEST is ``paths.shared_data`` of the repository's ``params.yaml`` (relative
to the repository). When the clone fails (no network) it stops with one line naming the manual
routes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

REPOSITORY = "https://github.com/tatsu-lab/alpaca_eval"
COMMIT = "cd543a149df89434d8a54582c0151c0b945c3d20"  # the bundle's pinned commit
ROOT = Path(__file__).resolve().parents[1]
LISTS = ROOT / "data" / "alpaca_eval_bundle"


def read_manifest() -> dict[str, str]:
    """relative path -> sha256, from the ``sha256sum``-style lines of ``files.sha256``."""
    manifest = {}
    for line in (LISTS / "files.sha256").read_text(encoding="utf-8").splitlines():
        digest, name = line.split("  ", 1)
        manifest[name] = digest
    return manifest


class FetchError(RuntimeError):
    """The clone or checkout failed (no network, no git, a moved repository)."""


def default_dest(params: Path | None = None) -> Path:
    """``paths.shared_data`` of ``params.yaml``, relative to the repository as the pipeline runs there."""
    import yaml  # installed with the package (pyyaml); only this default needs it

    params = params or ROOT / "params.yaml"
    shared = yaml.safe_load(params.read_text(encoding="utf-8"))["paths"]["shared_data"]
    return Path(shared) if Path(shared).is_absolute() else (params.parent / shared).resolve()


def missing(dest: Path) -> list[str]:
    """The listed files absent from ``dest``/alpaca_eval (an annotations.json may be stored gzipped)."""
    root = dest / "alpaca_eval"
    return [name for name in read_manifest()
            if not (root / name).is_file() and not (name.endswith("/annotations.json") and (root / (name + ".gz")).is_file())]


def clone(folder: Path, paths: list[str]) -> None:
    def git(*args: str, **kwargs) -> None:
        run(["git", "-C", str(folder), *args], **kwargs)

    def run(cmd: list[str], **kwargs) -> None:
        try:
            result = subprocess.run(cmd, stderr=subprocess.PIPE, text=True, **kwargs)
        except OSError as err:  # no git
            raise FetchError(f"{cmd[0]}: {err.strerror}") from None
        if result.returncode != 0:
            lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
            raise FetchError(f"`{' '.join(cmd[:2])} ...` failed: {lines[-1] if lines else f'exit {result.returncode}'}")

    if not (folder / ".git").is_dir():
        folder.parent.mkdir(parents=True, exist_ok=True)
        print(f"fetching {len(paths)} files of {REPOSITORY} at {COMMIT[:7]} (about 90 MB) into {folder}", file=sys.stderr)
        run(["git", "clone", "--filter=blob:none", "--no-checkout", REPOSITORY, str(folder)])
    patterns = "".join(f"/{p}\n" for p in paths)
    git("sparse-checkout", "set", "--no-cone", "--stdin", input=patterns)
    git("checkout", "--quiet", COMMIT)


def keep_rows(data: bytes, names: list[str]) -> bytes:
    """The header line and the lines whose first field is one of ``names``, bytes unchanged."""
    wanted = set(names)
    lines = data.splitlines(keepends=True)
    return b"".join(lines[:1] + [line for line in lines[1:] if line.split(b",", 1)[0].decode("utf-8") in wanted])


def gzip_bytes(data: bytes) -> bytes:
    """gzip as the bundle's files are: deflate level 9, no file name, mtime 0, XFL 2, OS 3 (Unix)."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = deflate.compress(data) + deflate.flush()
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03" + body + struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)


def install(source: Path, dest: Path) -> list[str]:
    """Copy the listed files from ``source`` into ``dest``/alpaca_eval; return the problems found."""
    manifest = read_manifest()
    rows = json.loads((LISTS / "csv_rows.json").read_text(encoding="utf-8"))
    problems = []
    for name, digest in manifest.items():
        src, target = source / name, dest / "alpaca_eval" / name
        if not src.is_file():
            problems.append(f"{src}: missing from the checkout")
            continue
        data = src.read_bytes()
        if name in rows:
            data = keep_rows(data, rows[name])
        if hashlib.sha256(data).hexdigest() != digest:
            problems.append(f"{name}: SHA-256 differs from data/alpaca_eval_bundle/files.sha256 (not commit {COMMIT[:7]}?)")
            continue
        if name.endswith("/annotations.json"):
            data, target = gzip_bytes(data), target.with_name("annotations.json.gz")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dest", nargs="?", default=None,
                   help="folder to hold alpaca_eval/ (default: paths.shared_data of params.yaml)")
    p.add_argument("--if_missing", action="store_true",
                   help="fetch only when a listed file is missing from DEST/alpaca_eval (else write nothing)")
    p.add_argument("--clone", default=None, help="where to clone (default DEST/.alpaca_eval_clone; reused if present)")
    p.add_argument("--source", default=None, help="an existing checkout at the pinned commit: copy from it, run no git")
    p.add_argument("--keep_clone", action="store_true", help="keep the clone after copying")
    args = p.parse_args(argv)
    dest = Path(args.dest) if args.dest else default_dest()
    if args.if_missing:
        absent = missing(dest)
        if not absent:
            print(f"AlpacaEval data present: {dest / 'alpaca_eval'} (nothing fetched)")
            return 0
        print(f"{len(absent)} of {len(read_manifest())} AlpacaEval files missing from {dest / 'alpaca_eval'} "
              f"(e.g. {absent[0]}): fetching them", file=sys.stderr)
    if args.source:
        source = Path(args.source)
    else:
        source = Path(args.clone) if args.clone else dest / ".alpaca_eval_clone"
        try:
            clone(source, sorted(read_manifest()))
        except FetchError as err:
            print(f"error: could not fetch the AlpacaEval data into {dest / 'alpaca_eval'} ({err}): with no network, "
                  f"run `python scripts/get_alpaca_eval.py {dest} --source CHECKOUT` on a checkout of "
                  f"tatsu-lab/alpaca_eval at {COMMIT}, or copy alpaca_eval/ there from a machine that has it "
                  f"(README, 'The AlpacaEval data')", file=sys.stderr)
            return 1
    problems = install(source, dest)
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    if problems:
        return 1
    if not args.source and not args.keep_clone:
        shutil.rmtree(source)
    print(f"{len(read_manifest())} files of alpaca_eval@{COMMIT[:7]} in {dest / 'alpaca_eval'}, SHA-256 checked; "
          f"set paths.shared_data: {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
