"""What every stage module shares: argument parsing, params loading, error reporting.

A stage is ``python -m afarm.stages.<name> --<input> PATH ... --<output> PATH``; the
flags are exactly the keys of its entry in ``afarm.dag`` (a test checks that every
command of the stage table parses). Bad input (a data file or params.yaml: unknown
sections and keys, wrong types) ends the stage with one line naming the file, row and
field, and exit code 2 (so does an input a library cannot open, e.g. a broken model folder);
an output that cannot be written (unwritable folder, full disk)
or a judge that fails for good ends it with one line and exit code 1. Outputs are
written atomically and committed together (``afarm.io.outputs_together``): nothing
half-written is left behind, and a stage that fails leaves every earlier output as it was.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Iterator

from afarm.config import PathsConfig, check_sections, load_params, stage_config
from afarm.io import InputError, OutputError, outputs_together
from afarm import launch

DVC_ROOT = "DVC_ROOT"  # set by DVC for every stage command: the repository root (of the original repository in experiments)


def known_sections() -> set[str]:
    """Top-level keys params.yaml may have: the scale, the judges, paths, and every stage's sections."""
    from afarm.dag import STAGES

    return {"scale", "judges", "paths", launch.SECTION, *(name for stage in STAGES for name in stage.params)}


def check_params(params: dict) -> None:
    """Validate what every stage shares: top-level sections and the ``paths`` section."""
    check_sections(params, known_sections())
    if "paths" in params:
        stage_config(params, "paths", PathsConfig)
    if launch.SECTION in params:
        launch.launch_config(params)


def repo_paths(params: dict) -> dict[str, str]:
    """The ``paths`` section with relative paths resolved against the repository root: ``$DVC_ROOT``
    when set (DVC sets it for every stage; in a queued or ``--temp`` experiment, which runs in a copy
    under ``.dvc/tmp/exps/``, it names the original repository, so every experiment shares one
    annotation cache), else the working directory (Snakemake runs from the repository root)."""
    root = Path(os.environ.get(DVC_ROOT) or ".")
    paths = dataclasses.asdict(stage_config(params, "paths", PathsConfig) if "paths" in params else PathsConfig())  # keys left out: defaults
    return {key: value if Path(value).is_absolute() else str(root / value) for key, value in paths.items()}


def check_training(params: dict, key: str, cfg) -> None:
    """Stop at start, naming the params key, when training config ``cfg`` (params ``key``) has an
    unknown ``precision`` or a global ``batch_size`` that ``micro_batch_size`` x processes does not divide."""
    from afarm import distributed

    where = params.get("_path", "params.yaml")
    if cfg.precision not in distributed.PRECISIONS:
        raise InputError(where, f"expected one of {list(distributed.PRECISIONS)}, got {cfg.precision!r}", field=f"{key}.precision")
    try:
        distributed.micro_batches(cfg.batch_size, cfg.micro_batch_size, key=f"{key}.batch_size")
    except distributed.DistributedError as err:
        raise InputError(where, str(err), field=f"{key}.batch_size") from None


def model_card(params: dict, method: str, base_model: str | None, data, /, *, models: dict[str, str] | None = None,
               prompt_prefix: str = "", generates: bool = True, **sections):
    """The ``ModelCard`` of a model folder a stage writes (``afarm.models.lm.save_model``; the first four
    arguments are positional-only, so a params section may be called ``base_model``): ``data`` the
    data files it trained on, ``sections`` its resolved params configs by section name, and, if the
    folder ``generates``, the evaluation decoding of params section ``generate`` (its
    ``generation_config.json``; the stage must list ``generate`` among its params in ``afarm.dag``)."""
    from afarm.models.card import ModelCard
    from afarm.models.generate import GenerationConfig

    generation = stage_config(params, "generate", GenerationConfig) if generates else None
    if generation is not None:
        sections = {**sections, "generate": generation}
    return ModelCard(method=method, base_model=base_model, data=[str(p) for p in data], models=dict(models or {}),
                     params=sections, prompt_prefix=prompt_prefix, generation=generation)


def checkpoints(params: dict, module: str, args: argparse.Namespace, cfg, inputs: list, every: int):
    """The ``afarm.checkpoint.Checkpoints`` of this run of stage ``module``: under ``paths.checkpoints``
    (outside the stage's outputs), in a folder keyed by the stage's flags, its resolved config ``cfg``
    and the sizes and times of its ``inputs`` (files or folders): the same command with the same
    inputs finds its checkpoints again, anything else starts afresh."""
    from afarm.checkpoint import Checkpoints, file_stamps, run_key

    key = run_key(module, {k: v for k, v in vars(args).items() if k != "params"}, dataclasses.asdict(cfg), file_stamps(inputs))
    return Checkpoints(Path(repo_paths(params)["checkpoints"]) / module / key, every)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return p


def run(main: Callable[[argparse.Namespace, dict], None], p: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    """Parse the flags, load params, call ``main(args, params)``; bad input exits 2 with one line."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = p.parse_args(argv)
    try:
        params = load_params(args.params)
        check_params(params)
        with _processes(_stage_module(main), params), outputs_together():
            main(args, params)
    except InputError as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        sys.exit(2)
    except OutputError as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        sys.exit(1)
    except OSError as err:  # an input that a library cannot read (e.g. a model folder without its files)
        print(f"error: cannot read input: {_one_line(err)}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:
        if type(err).__name__ == "DistributedError":  # started alone when promised N processes, or the like
            print(f"error: {_one_line(err)}", file=sys.stderr)
            sys.exit(1)
        if type(err).__name__ != "AnnotatorError":  # a judge that failed for good (message already names it)
            raise
        print(f"error: {_one_line(err)}", file=sys.stderr)
        sys.exit(1)


def _stage_module(main: Callable) -> str | None:
    """``sft`` for a ``main`` defined in ``afarm.stages.sft`` run as a script (``python -m``)."""
    spec = getattr(sys.modules.get(main.__module__), "__spec__", None)
    name = getattr(spec, "name", "") or ""
    return name.rsplit(".", 1)[1] if name.startswith("afarm.stages.") else None


@contextlib.contextmanager
def _processes(module: str | None, params: dict) -> Iterator[None]:
    """Join the stage's process group when it runs in several processes (see ``afarm.launch``); a stage
    promised N processes that finds itself alone, or one process of a stage that is not
    distributed, stops with one line."""
    expected = launch.processes(module, params) if module else 1
    if expected == 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        yield
        return
    from afarm import distributed

    cfg = launch.launch_config(params)
    distributed.init_process_group(expected, cfg.backend, cfg.timeout_s)
    try:
        yield
    finally:
        distributed.destroy_process_group()


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split("\n"))
