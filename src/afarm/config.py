"""params.yaml: loading, scale selection and validation.

Layout of params.yaml::

    scale: tiny            # tiny | small | paper: the one setting that switches scales
    judges: local          # local | api: who judges at the small scale (see below)
    paths: {...}           # where the data bundle and the annotation cache live
    <stage>:               # one section per stage (the section name = the stage family)
      key: value                          # same value at every scale
      key: {tiny: a, small: b, paper: c}  # a value per scale
      key: {tiny: a, paper: c}            # small takes the paper value (FALLBACK)
      key: {tiny: a, small: {local: b, api: c}, paper: d}   # small: b or c by ``judges``

Per-scale values. A mapping whose keys are all scale names (``SCALES``) is a per-scale value
and ``resolve`` picks the active scale's entry. A scale may be left out only where
``FALLBACK`` names a scale to take instead: ``small`` falls back to ``paper`` (the small scale
is the paper's recipe and code path on one GPU, so every value it does not name is the
paper's: precision, gradient checkpointing, seeds, sampling settings). Any other missing scale
(``tiny`` anywhere, or ``paper`` in a map that names only ``tiny`` and ``small``) is an error
naming the key. ``scale_sources`` lists, for one scale, the keys that took a fallback.

Per-judges values. A mapping whose keys are exactly ``local`` and ``api`` is chosen by the
top-level ``judges`` setting: the small scale runs with an OpenAI key (``api``: the paper's
annotator pool and evaluator) or without one (``local``: an open judge model on the GPU). The
choice is a params value, never the key's presence in the environment; a params file that needs
it and lacks it is an error naming ``judges``.

Sections are turned into the library's config dataclasses with ``to_dataclass``, which rejects
unknown keys (with a did-you-mean) and wrong types, naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from afarm.io import InputError

SCALES = ("tiny", "small", "paper")
# A per-scale map may leave out a scale named here; it then takes the value of the scale it maps to.
FALLBACK = {"small": "paper"}
JUDGES = ("local", "api")  # the top-level `judges` setting: who annotates at the small scale
T = TypeVar("T")


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise InputError(path, "params file not found (run from the repository root or pass --params)")
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise InputError(path, f"not valid UTF-8 (byte {err.start})") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise InputError(path, f"malformed YAML{where}: {problem}") from err
    if not isinstance(params, dict):
        raise InputError(path, "expected a mapping at the top level")
    scale = params.get("scale")
    if scale not in SCALES:
        raise InputError(path, f"scale must be one of {SCALES}, got {scale!r}", field="scale")
    if "judges" in params and params["judges"] not in JUDGES:
        raise InputError(path, f"judges must be one of {JUDGES}, got {params['judges']!r}", field="judges")
    params["_path"] = str(path)
    return params


def check_sections(params: dict[str, Any], known: "typing.Iterable[str]") -> None:
    """Every top-level key of params must be a section some stage reads: an unknown one (a typo
    such as ``leaderbord``, or a section of a stage that is not in the DAG) is an error, with a
    did-you-mean where one fits."""
    known = sorted(set(known))
    for key in params:
        if key.startswith("_") or key in known:
            continue
        hint = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else f"; known sections: {', '.join(known)}"
        raise InputError(params.get("_path", "params.yaml"), "unknown section" + suggestion, field=str(key))


def apply_overrides(params: dict[str, Any], overrides: dict[str, Any], where: str) -> dict[str, Any]:
    """``params`` with ``overrides`` merged in (a copy): a mapping merges key by key (``{tiny: x}``
    sets only the tiny side of a per-scale value), any other value replaces. Every key must exist
    in params (a typo stops here with a did-you-mean), except inside an empty mapping. Values given
    as text where params holds no text are read as YAML (``"0.01"`` -> 0.01): command-line values
    arrive as strings. ``where`` names the overrides' origin in errors."""
    merged = _merge({k: v for k, v in params.items() if not k.startswith("_")}, overrides, "", where)
    return {**merged, "_path": params.get("_path", "params.yaml")}


def _merge(base: Any, override: Any, prefix: str, where: str) -> Any:
    if not (isinstance(base, dict) and isinstance(override, dict)):
        return _typed(override, base)
    merged = dict(base)
    for key, value in override.items():
        if key not in base and base:
            hint = difflib.get_close_matches(str(key), [str(k) for k in base], n=1)
            raise InputError(where, "no such key in params.yaml" + (f" (did you mean {prefix + hint[0]!r}?)" if hint else ""), field=f"{prefix}{key}")
        merged[key] = _merge(base.get(key), value, f"{prefix}{key}.", where)
    return merged


def _typed(value: Any, base: Any) -> Any:
    texts = list(base.values()) if _is_scaled(base) else [base]
    if not isinstance(value, str) or all(isinstance(t, str) for t in texts):
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def write_params(params: dict[str, Any], folder: str | Path, header: str = "") -> Path:
    """Write ``params`` to ``folder/params-<hash of the text>.yaml`` (atomically; an existing file of the
    same name already holds the same text) and return its path."""
    from afarm.io import sha256_text, write_text

    text = header + yaml.safe_dump({k: v for k, v in params.items() if not k.startswith("_")}, sort_keys=False)
    path = Path(folder) / f"params-{sha256_text(text)[:12]}.yaml"
    if not path.exists():
        write_text(path, text)
    return path


@dataclasses.dataclass
class PathsConfig:
    """The ``paths`` section (our choices; see params.yaml)."""

    shared_data: str = "../shared/data"  # root of the AlpacaEval data bundle, read only
    cache_dir: str = ".cache/afarm"  # annotation cache (SQLite), never versioned
    checkpoints: str = ".checkpoints"  # training checkpoints to resume from (afarm.checkpoint), never versioned


def _is_scaled(value: Any) -> bool:
    """A per-scale value: a non-empty mapping whose keys are all scale names."""
    return isinstance(value, dict) and bool(value) and set(value) <= set(SCALES)


def _is_judged(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == set(JUDGES)


def _scale_entry(value: dict, scale: str, key: str, where: str) -> tuple[Any, str]:
    """(the entry for ``scale``, the scale it was taken from) of a per-scale map."""
    if scale in value:
        return value[scale], scale
    if FALLBACK.get(scale) in value:
        return value[FALLBACK[scale]], FALLBACK[scale]
    rule = f" (and no {FALLBACK[scale]!r} value to fall back to)" if scale in FALLBACK else ""
    raise InputError(where, f"no value for scale {scale!r}{rule}; this per-scale value names only {sorted(value)}", field=key or None)


def resolve(value: Any, scale: str, judges: str | None = None, key: str = "", where: str = "params.yaml",
            fallbacks: list[str] | None = None) -> Any:
    """Pick the active scale's value (and, in ``{local, api}`` maps, the ``judges`` value) everywhere
    inside ``value``. ``key`` names ``value`` in errors; keys that took a ``FALLBACK`` are appended to
    ``fallbacks`` when given."""
    if _is_scaled(value):
        entry, taken = _scale_entry(value, scale, key, where)
        if taken != scale and fallbacks is not None:
            fallbacks.append(key)
        return resolve(entry, scale, judges, key, where, fallbacks)
    if _is_judged(value):
        if judges is None:
            raise InputError(where, f"this value depends on the top-level `judges` setting ({' | '.join(JUDGES)}), which is not set", field=key or "judges")
        return resolve(value[judges], scale, judges, key, where, fallbacks)
    if isinstance(value, dict):
        return {k: resolve(v, scale, judges, f"{key}.{k}" if key else str(k), where, fallbacks) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, scale, judges, f"{key}[{i}]", where, fallbacks) for i, v in enumerate(value)]
    return value


def section(params: dict[str, Any], name: str) -> dict[str, Any]:
    """The resolved section ``name`` of params (an empty section is an empty dict)."""
    if name not in params:
        known = [k for k in params if not k.startswith("_")]
        hint = difflib.get_close_matches(name, known, n=1)
        raise InputError(params.get("_path", "params.yaml"), "missing section" + (f" (did you mean {hint[0]!r}?)" if hint else ""), field=name)
    return resolve(params[name] or {}, params["scale"], params.get("judges"), name, params.get("_path", "params.yaml"))


def scale_sources(params: dict[str, Any], scale: str | None = None) -> list[str]:
    """Keys (``section.key``) whose per-scale map has no entry for ``scale`` (default: the active one)
    and took its ``FALLBACK`` scale's value: what to read to see where ``small`` equals ``paper``."""
    scale = scale or params["scale"]
    taken: list[str] = []
    for name, value in params.items():
        if not name.startswith("_") and name not in ("scale", "judges"):
            resolve(value or {}, scale, params.get("judges"), name, params.get("_path", "params.yaml"), taken)
    return taken


def _type_ok(value: Any, annotation: Any) -> bool:
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def to_dataclass(cls: type[T], values: dict[str, Any], where: str = "params.yaml", prefix: str = "") -> T:
    """Build ``cls`` from ``values``; unknown keys and wrong types raise ``InputError``."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            hint = difflib.get_close_matches(key, list(fields), n=1)
            raise InputError(where, "unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else ""), field=prefix + key)
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation) and isinstance(value, dict):
            value = to_dataclass(annotation, value, where, prefix=f"{prefix}{key}.")
        elif not _type_ok(value, annotation):
            raise InputError(where, f"expected {annotation}, got {type(value).__name__} {value!r}", field=prefix + key)
        elif annotation is float and isinstance(value, int):
            value = float(value)
        kwargs[key] = value
    return cls(**kwargs)


def stage_config(params: dict[str, Any], name: str, cls: type[T], drop: tuple[str, ...] = ()) -> T:
    """Section ``name`` as a ``cls`` instance; keys in ``drop`` are read separately by the stage."""
    values = {k: v for k, v in section(params, name).items() if k not in drop}
    return to_dataclass(cls, values, params.get("_path", "params.yaml"), prefix=f"{name}.")


def main(argv: list[str] | None = None) -> int:
    """``python -m afarm.config --fallbacks small``: the keys where a scale takes its fallback's value."""
    import argparse

    parser = argparse.ArgumentParser(description="Inspect params.yaml's per-scale values.")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--fallbacks", metavar="SCALE", choices=sorted(FALLBACK), required=True,
                        help="list the keys whose value at SCALE is its fallback scale's")
    args = parser.parse_args(argv)
    try:
        keys = scale_sources(load_params(args.params), args.fallbacks)
    except InputError as err:
        print(f"error: {err}")
        return 2
    print(f"{len(keys)} keys take the {FALLBACK[args.fallbacks]!r} value at scale {args.fallbacks!r}:")
    print("\n".join(f"  {k}" for k in keys))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
