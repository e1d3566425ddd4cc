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
import logging
import sys
from typing import Callable

from afarm.config import PathsConfig, check_sections, load_params, stage_config
from afarm.io import InputError, OutputError, outputs_together


def known_sections() -> set[str]:
    """Top-level keys params.yaml may have: the scale, paths, and every stage's sections."""
    from afarm.dag import STAGES

    return {"scale", "paths", *(name for stage in STAGES for name in stage.params)}


def check_params(params: dict) -> None:
    """Validate what every stage shares: top-level sections and the ``paths`` section."""
    check_sections(params, known_sections())
    if "paths" in params:
        stage_config(params, "paths", PathsConfig)


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
        with outputs_together():
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
        if type(err).__name__ != "AnnotatorError":  # a judge that failed for good (message already names it)
            raise
        print(f"error: {_one_line(err)}", file=sys.stderr)
        sys.exit(1)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split("\n"))
