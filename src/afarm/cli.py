"""``afarm``: win-rate leaderboards from the command line, in the spirit of ``alpaca_eval``.

  afarm leaderboard --annotations_dir DIR --out_dir OUT
      rebuild a leaderboard from existing annotations (no judge call)
  afarm evaluate --model_outputs PATH --shared_data DIR --out_dir OUT
      judge model outputs (a file or a folder of them) against a reference, then the same
      leaderboard; default judge and reference: AlpacaEval 2's
  afarm check --params params.yaml
      preflight: does every judge the params name answer (retired models refused, API models
      asked of their server, local judges' files checked)? Exit 0 with a table, else 1 with one
      line per failure

Both write OUT/leaderboard.csv (upstream alpaca_eval's columns: the model as the unnamed first
column, win_rate, ..., length_controlled_winrate, lc_standard_error), OUT/leaderboard.md and
OUT/leaderboard.png (LC vs raw win rate, one point per model, the diagonal drawn). Bad input
prints one line naming the file, row and field, and exits with code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from afarm.io import InputError, write_json, write_text

AE2_REFERENCE = "gpt4_1106_preview"  # AlpacaEval 2 reference (upstream default for weighted_alpaca_eval_gpt4_turbo)
AE2_JUDGE = "weighted_alpaca_eval_gpt4_turbo"  # upstream constants.DEFAULT_ANNOTATOR_CONFIG (AlpacaEval 2)
# Our choice: the user's cache folder, so that every `afarm evaluate` shares one cache wherever it
# runs. The DAG's cache is params.yaml paths.cache_dir (.cache/afarm); pass it to share that one.
DEFAULT_CACHE_DIR = "~/.cache/afarm"
CACHE_FILE = "annotations.sqlite"  # the file name the annotate stage uses in paths.cache_dir
MAX_INSTANCES_SEED = 123  # upstream main.evaluate shuffles with random_state=123 before taking max_instances

EPILOG = """\
length control (LC): with --annotator weighted_alpaca_eval_gpt4_turbo and --shared_data, the
instruction difficulty and "gamed" rows of upstream's length_controlled_v1 GLM are rebuilt
offline from the bundle (about 15 s; or pass the files written by the instruction_difficulty
stage with --instruction_difficulty/--gamed). Otherwise the fallback: difficulty estimated
jointly over the evaluated models (2 or more), else a length term + bias only. See
docs/length_controlled.md.
"""


# ---------------------------------------------------------------- shared pieces


def _lc_inputs(args, annotator: str | None, reference: str):
    """Rebuilt upstream LC inputs if available, else None (-> documented fallback)."""
    from afarm.metrics import bundle

    if args.instruction_difficulty:
        return bundle.read_lc_inputs(args.instruction_difficulty, args.gamed), "from files"
    if args.shared_data and annotator == bundle.AE2_ANNOTATOR and reference == AE2_REFERENCE:
        root = Path(args.shared_data) / "alpaca_eval"
        official = bundle.load_all_annotations(root, bundle.AE2_ANNOTATOR)
        return bundle.offline_lc_inputs(root, official, "weights"), "rebuilt from the bundle"
    return None, "fallback"


def _write_board(args, frames: dict, annotator: str | None, subsets: str = "") -> list[dict]:
    from afarm.metrics.board import leaderboard_rows
    from afarm.report.leaderboard import markdown_table, plot_lc_vs_raw, write_upstream_csv

    reference = str(next(iter(frames.values()))["generator_1"].iloc[0])
    inputs, source = _lc_inputs(args, annotator, reference)
    rows = leaderboard_rows(frames, inputs, args.difficulty_lookup)
    out = Path(args.out_dir)
    method = rows[0]["lc_method"] if rows else ""
    note = (f"Judge: `{annotator or 'unknown'}`. Reference: `{reference}`. Win rates in %, ± one standard error. "
            f"LC: `{method}` GLM predicted at zero length difference; difficulty / gamed rows: {source}.{subsets}")
    write_upstream_csv(rows, out / "leaderboard.csv")
    write_text(out / "leaderboard.md", markdown_table(rows, args.title, note))
    plot_lc_vs_raw(rows, out / "leaderboard.png", title=f"{args.title} (judge: {annotator or 'unknown'})")
    for rank, r in enumerate(rows, start=1):
        print(f"{rank:3d}  {r['generator']:<40} LC {r['lc_win_rate']:6.2f}  raw {r['win_rate']:6.2f}  n={r['n_total']}")
    print(f"wrote {out / 'leaderboard.csv'}, leaderboard.md, leaderboard.png")
    return rows


# ---------------------------------------------------------------- subcommands


def cmd_leaderboard(args) -> None:
    from afarm.metrics import bundle

    files, annotator = bundle.find_annotation_files(args.annotations_dir, args.annotator)
    frames = bundle.load_annotation_files(files)
    if annotator is None:  # flat folder: the annotator is recorded in the records (if at all)
        annotator = args.annotator
    _write_board(args, frames, annotator)


def _model_output_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix == ".json")
        nested = sorted(path.glob("*/model_outputs.json"))  # the bundle's results/<model>/ layout
        files = files or nested
        if not files:
            raise InputError(path, "no *.json or */model_outputs.json files")
        return files
    if not path.exists():
        raise InputError(path, "file not found")
    return [path]


@dataclass
class _Model:
    """One model_outputs file that passed validation: its answers to the chosen instructions."""

    path: Path
    generator: str
    outputs: list[dict]  # in reference order, only the answered instructions
    n_asked: int  # instructions it was asked (all, or --max_instances of them)


def _instances(reference: list[dict], max_instances: int | None) -> list[dict]:
    """The reference rows to evaluate: all, or ``max_instances`` of them picked as upstream picks
    them (a shuffle with seed 123, then the first ``max_instances``), kept in reference order."""
    if max_instances is None or max_instances >= len(reference):
        return reference
    if max_instances < 1:
        raise InputError("--max_instances", f"must be at least 1, got {max_instances}")
    import pandas as pd

    picked = pd.Series(range(len(reference))).sample(frac=1, random_state=MAX_INSTANCES_SEED).iloc[:max_instances]
    return [reference[i] for i in sorted(picked)]


def _check_model(path: Path, reference: list[dict], asked: list[dict], args) -> tuple[_Model, str | None]:
    """Validate one model_outputs file against the reference; raise InputError if it cannot be
    evaluated. Returns the model and a warning (answered subset) or None."""
    from afarm.data.eval_set import read_model_outputs

    records = read_model_outputs(path)  # fields, types, one generator, no duplicate instruction
    if not records:
        raise InputError(path, "no outputs (empty list)")
    by_instruction = {r["instruction"]: r for r in records}
    known = {r["instruction"] for r in reference}
    extra = [i for i, r in enumerate(records) if r["instruction"] not in known]
    missing = [i for i, r in enumerate(asked) if r["instruction"] not in by_instruction]
    if len(missing) == len(asked):
        raise InputError(path, f"none of its {len(records)} outputs answers one of the {len(asked)} evaluation "
                         "instructions (outputs for another evaluation set?)", field="instruction")
    what = f"{len(missing)} of {len(asked)} evaluation instructions have no output"
    if missing:
        first = f"(first: eval row {missing[0]}: {asked[missing[0]]['instruction'][:60]!r})"
        if args.strict:
            raise InputError(path, f"{what} {first}", field="instruction")
    if extra and args.strict:
        raise InputError(path, "instruction is not in the evaluation set", row=extra[0], field="instruction")
    outputs = [by_instruction[r["instruction"]] for r in asked if r["instruction"] in by_instruction]
    generator = args.name or records[0]["generator"]
    notes = []
    if missing:
        notes.append(f"{what} {first}: evaluating the {len(outputs)} answered")
    if extra:
        notes.append(f"{len(extra)} outputs answer instructions not in the reference (first: row {extra[0]}): ignored")
    warning = f"{path}: {'; '.join(notes)} (as upstream alpaca_eval; --strict refuses such files)" if notes else None
    return _Model(path, generator, outputs, len(asked)), warning


def _validate(paths: list[Path], reference: list[dict], asked: list[dict], args) -> tuple[list[_Model], dict[Path, str]]:
    """Check every file before any judge call: the models to evaluate and, per bad file, its error line."""
    models: dict[str, _Model] = {}
    bad: dict[Path, str] = {}
    for path in paths:
        try:
            model, warning = _check_model(path, reference, asked, args)
            if model.generator in models:
                raise InputError(path, f"generator {model.generator!r} is also the generator of {models[model.generator].path}",
                                 field="generator")
        except InputError as err:
            bad[path] = _one_line(err)
            continue
        except OSError as err:  # unreadable file
            bad[path] = f"cannot read input: {_one_line(err)}"
            continue
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        models[model.generator] = model
    return list(models.values()), bad


def _annotator_name_and_dirs(value: str, config_dirs: list[str]) -> tuple[str, list[Path]]:
    """``--annotator`` is a config name, or (as upstream's ``--annotators_config``) a config folder's path."""
    folder = Path(value)
    if (folder / "config.yaml").is_file():
        return folder.resolve().name, [folder.resolve().parent, *map(Path, config_dirs)]
    return value, [Path(d) for d in config_dirs]


def _load_judge(args):
    from afarm.annotators.registry import find_config, load_annotator

    name, dirs = _annotator_name_and_dirs(args.annotator, args.config_dir)
    try:
        config = find_config(name, dirs)
    except KeyError as err:
        raise InputError("--annotator", str(err.args[0])) from err
    if not args.shared_data and "{shared_data}" in config.read_text(encoding="utf-8"):
        raise InputError("--shared_data", f"annotator {name!r} reads its prompt files from the data bundle ({config}); "
                         "give --shared_data DIR (the folder holding alpaca_eval/)")
    return load_annotator(name, args.shared_data or "", dirs)


def cmd_evaluate(args) -> int:
    from afarm.annotators.base import Pair, annotate_pairs
    from afarm.annotators.cache import AnnotationCache
    from afarm.data.eval_set import read_model_outputs
    from afarm.metrics.bundle import records_to_frame
    from afarm.metrics.winrate import check_annotations

    reference_path = args.reference
    if reference_path is None:
        if not args.shared_data:
            raise InputError("--reference", "give --reference PATH (or --shared_data for the AlpacaEval 2 reference)")
        reference_path = Path(args.shared_data) / "alpaca_eval" / "results" / AE2_REFERENCE / "model_outputs.json"
    reference = read_model_outputs(reference_path)
    asked = _instances(reference, args.max_instances)
    annotator = _load_judge(args)
    paths = _model_output_files(Path(args.model_outputs))
    if args.name and len(paths) > 1:
        raise InputError("--name", f"names one model, but {args.model_outputs} holds {len(paths)} model_outputs files")

    # every file is checked before the first judge call
    models, bad = _validate(paths, reference, asked, args)
    if len(paths) == 1 and bad:  # one file: its one-line error
        print(f"error: {bad[paths[0]]}", file=sys.stderr)
        return 2
    for line in bad.values():
        print(f"error: {line}", file=sys.stderr)
    if not models:
        print(f"error: all {len(paths)} model_outputs files are bad (listed above); nothing evaluated", file=sys.stderr)
        return 2
    if args.difficulty_lookup == "position" and any(len(m.outputs) != len(reference) for m in models):
        raise InputError("--difficulty_lookup", "'position' needs every model to answer every reference instruction "
                         "in order; use 'text' with --max_instances or missing outputs")
    if bad:
        print(f"error: skipping {len(bad)} of {len(paths)} model_outputs files (listed above); evaluating the other "
              f"{len(models)}", file=sys.stderr)

    cache = None if args.no_cache else AnnotationCache(Path(args.cache_dir).expanduser() / CACHE_FILE)
    frames, stats_out = {}, {}
    out = Path(args.out_dir)
    ref_by_instruction = {r["instruction"]: r for r in reference}
    try:
        for model in models:
            refs = [ref_by_instruction[o["instruction"]] for o in model.outputs]
            pairs = [Pair(ref["instruction"], ref["output"], o["output"]) for ref, o in zip(refs, model.outputs)]
            records, stats = annotate_pairs(annotator, pairs, cache, seed=args.seed, progress=not args.quiet)
            for rec in records:
                rec["generator_1"], rec["generator_2"] = reference[0]["generator"], model.generator
            annotations_file = out / "annotations" / f"{model.generator}.json"
            write_json(annotations_file, records)
            df = records_to_frame(records, annotations_file)
            check_annotations(df)
            frames[model.generator] = df
            stats_out[model.generator] = {k: getattr(stats, k) for k in ("n_pairs", "n_judged", "n_cached", "n_ties_identical", "n_failed", "price")}
            stats_out[model.generator]["n_missing_outputs"] = model.n_asked - len(model.outputs)
            print(f"{model.generator}: {stats.n_judged} judged, {stats.n_cached} from the cache, "
                  f"{stats.n_ties_identical} identical-output ties, {stats.n_failed} unparsable")
    finally:
        if cache is not None:
            cache.close()
    write_json(out / "annotation_stats.json", stats_out)
    partial = [f"{m.generator} ({len(m.outputs)} of {m.n_asked})" for m in models if len(m.outputs) < m.n_asked]
    subsets = f" Answered subsets (missing outputs not judged): {', '.join(partial)}." if partial else ""
    if len(asked) < len(reference):
        subsets += f" --max_instances {len(asked)} of {len(reference)} instructions."
    _write_board(args, frames, annotator.name, subsets)
    if bad:
        print(f"error: {len(bad)} of {len(paths)} model_outputs files were skipped (bad input, see above): "
              f"{', '.join(map(str, bad))}", file=sys.stderr)
        return 2
    return 0


def cmd_check(args) -> int:
    from afarm.annotators.preflight import run_check
    from afarm.config import JUDGES, SCALES, load_params

    params = load_params(args.params)
    for key, value, allowed in (("scale", args.scale, SCALES), ("judges", args.judges, JUDGES)):
        if value is not None:
            if value not in allowed:
                raise InputError(f"--{key}", f"must be one of {allowed}, got {value!r}")
            params[key] = value
    if args.timeout <= 0:
        raise InputError("--timeout", f"must be positive, got {args.timeout}")
    return run_check(params, timeout=args.timeout, offline=args.offline)


# ---------------------------------------------------------------- parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out_dir", "--output_path", dest="out_dir", required=True, help="folder for leaderboard.csv / .md / .png")
    p.add_argument("--shared_data", default=None,
                   help="data bundle root (holds alpaca_eval/); enables upstream LC inputs for the AlpacaEval 2 judge")
    p.add_argument("--instruction_difficulty", default=None,
                   help="instruction_difficulty.csv written by the instruction_difficulty stage (skips the rebuild)")
    p.add_argument("--gamed", default=None, help="gamed.csv written by the instruction_difficulty stage (with --instruction_difficulty)")
    p.add_argument("--difficulty_lookup", choices=("text", "position"), default="text",
                   help="match instruction difficulty by instruction text (default) or by row position as upstream does")
    p.add_argument("--title", default="Leaderboard", help="title of the Markdown table and the plot")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="afarm", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="{leaderboard,evaluate,check}")

    lb = sub.add_parser("leaderboard", help="leaderboard from existing annotations (no judge call)", epilog=EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Rebuild a leaderboard from a folder of annotations: the bundle layout "
                                    "[results/]<model>/<annotator>/annotations.json[.gz] or a flat folder of <model>.json "
                                    "files (upstream annotation records: instruction, output_1 = reference, output_2 = "
                                    "model, generator_1, generator_2, preference in [1, 2]).")
    lb.add_argument("--annotations_dir", required=True, help="folder of annotations (see above)")
    lb.add_argument("--annotator", default=None,
                    help="annotator folder to read in the bundle layout (required if several); names the judge otherwise")
    _common(lb)
    lb.set_defaults(func=cmd_leaderboard)

    ev = sub.add_parser("evaluate", help="judge model outputs against a reference, then the leaderboard", epilog=EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Annotate model_outputs.json files (fields instruction, output, generator; one "
                                    "generator per file) against the reference outputs with an annotator config, cache "
                                    "every judgement, write the annotations to OUT/annotations/<generator>.json and the "
                                    "leaderboard. Every file is checked before the first judge call: bad files are listed "
                                    "and skipped, the others evaluated and ranked, and the exit code is 2 if any was "
                                    "skipped. A model that leaves some reference instructions unanswered is evaluated on "
                                    "the answered ones with a warning (n_total shows it), as upstream alpaca_eval does; "
                                    "--strict refuses it instead. Upstream's flag names are accepted as aliases.")
    ev.add_argument("--model_outputs", required=True,
                    help="a model_outputs.json, or a folder of them (*.json or */model_outputs.json)")
    ev.add_argument("--reference", "--reference_outputs", dest="reference", default=None,
                    help="reference model_outputs.json (default with --shared_data: the AlpacaEval 2 reference "
                         f"{AE2_REFERENCE})")
    ev.add_argument("--annotator", "--annotators_config", dest="annotator", default=AE2_JUDGE,
                    help="annotator config name or config folder (built-in: heuristic, offline_judge, "
                         f"alpaca_eval_gpt4, ...; default: the AlpacaEval 2 judge {AE2_JUDGE}, which needs "
                         "--shared_data for its prompt and OPENAI_API_KEY, optionally OPENAI_BASE_URL)")
    ev.add_argument("--config_dir", action="append", default=[], help="extra folder of annotator configs (repeatable)")
    ev.add_argument("--name", default=None,
                    help="the model's name on the board and in the annotations (default: the file's generator field; "
                         "one file only)")
    ev.add_argument("--max_instances", type=int, default=None,
                    help="judge only this many instructions, picked as upstream picks them (shuffle with seed "
                         f"{MAX_INSTANCES_SEED}, take the first N), the same ones for every model")
    ev.add_argument("--strict", action="store_true",
                    help="a file that leaves a reference instruction unanswered, or answers one not in the "
                         "reference, is bad input (skipped) instead of evaluated on the answered subset")
    ev.add_argument("--cache_dir", default=DEFAULT_CACHE_DIR,
                    help=f"folder of the annotation cache ({CACHE_FILE}; default {DEFAULT_CACHE_DIR}); reruns make no "
                         "judge call. The DAG's cache is .cache/afarm (params.yaml paths.cache_dir)")
    ev.add_argument("--no_cache", action="store_true", help="neither read nor write the annotation cache")
    ev.add_argument("--seed", type=int, default=0, help="seed of the order-swapping coin (default 0)")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    _common(ev)
    ev.set_defaults(func=cmd_evaluate)

    ck = sub.add_parser("check", help="preflight: does every judge the params name answer? (before any stage starts)",
                        description="List every model the annotator configs named in params will call (preference data, "
                                    "method_health labels, annotate, analyze_annotators; pool members recursively) and "
                                    "the API rows of published_outputs. A model in the retired table at OpenAI's endpoint "
                                    "is refused without a network call; every other API model is asked of its server "
                                    "(GET /v1/models, else a one-token request); local judges' files are checked on disk. "
                                    "Exit 0 with a summary table when everything answers, 1 with one line per failure, "
                                    "2 on bad input. Keys are read from the environment only.")
    from afarm.annotators.preflight import DEFAULT_TIMEOUT

    ck.add_argument("--params", default="params.yaml", help="params file (default params.yaml; relative paths in it "
                                                            "resolve against the working directory, the repository root)")
    ck.add_argument("--scale", default=None, help="check this scale instead of the file's `scale` (tiny, small, paper)")
    ck.add_argument("--judges", default=None, help="check this `judges` value instead of the file's (local, api)")
    ck.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                    help=f"seconds per request to a server (default {DEFAULT_TIMEOUT:g})")
    ck.add_argument("--offline", action="store_true",
                    help="no network: retired models, keys and local files only; API models are not asked")
    ck.set_defaults(func=cmd_check)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if getattr(args, "gamed", None) and not args.instruction_difficulty:
        print("error: --gamed needs --instruction_difficulty", file=sys.stderr)
        return 2
    try:
        code = args.func(args)
    except InputError as err:  # bad input: names the file, row and field
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # an output that cannot be written (exit 1) or an input that cannot be read (2)
        output = type(err).__name__ == "OutputError"
        print(f"error: {'' if output else 'cannot read input: '}{_one_line(err)}", file=sys.stderr)
        return 1 if output else 2
    except Exception as err:
        if type(err).__name__ != "AnnotatorError":  # a judge that failed for good
            raise
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 1
    return code or 0


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


if __name__ == "__main__":
    sys.exit(main())
