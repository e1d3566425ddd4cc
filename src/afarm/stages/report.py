"""Stage `report`: results/REPORT.md, the findings of the run in one file.

Reads the tables and plots other stages wrote (both worlds' leaderboards, the simulated-vs-human
comparison and its metrics, the AlpacaEval 2 reproduction, the annotator analysis) and the
paper's published numbers (data/paper); params give the title and the facts of the scale
(``scale``, ``data``, ``base_model``) for the "what differs from the paper" statement.
"""

from __future__ import annotations

from dataclasses import fields

from afarm.config import section, stage_config
from afarm.data.instructions import SplitConfig
from afarm.io import InputError
from afarm.report.report import ReportConfig, ReportPaths, ScaleFacts, write_report
from afarm.stages._cli import parser, run

_MODEL_KEYS = {"pretrained": (str, type(None)), "vocab_size": (int, type(None)), "hidden_size": int, "num_layers": int,
               "intermediate_size": int, "tie_word_embeddings": bool}


def scale_facts(params: dict) -> ScaleFacts:
    """The facts of this scale from params: base model architecture and data sizes."""
    where = params.get("_path", "params.yaml")
    data = stage_config(params, "data", SplitConfig)
    model = section(params, "base_model").get("model") or {}
    if not isinstance(model, dict):
        raise InputError(where, "expected a mapping", field="base_model.model")
    values = {}
    for key, types in _MODEL_KEYS.items():
        if key not in model:
            continue
        value = model[key]
        if (isinstance(value, bool) and types is not bool) or not isinstance(value, types):
            raise InputError(where, f"wrong type {type(value).__name__}", field=f"base_model.model.{key}")
        values[key] = value
    return ScaleFacts(scale=params["scale"], data_source=data.source, split_sizes=dict(data.sizes), **values)


def main(args, params) -> None:
    cfg = stage_config(params, "report", ReportConfig)
    paths = ReportPaths(**{f.name: getattr(args, f.name) for f in fields(ReportPaths)})
    write_report(paths, cfg, scale_facts(params))


def arguments():
    p = parser(__doc__)
    p.add_argument("--sim_leaderboard", required=True, help="results/leaderboard_sim.csv")
    p.add_argument("--human_leaderboard", required=True, help="results/leaderboard_human.csv")
    p.add_argument("--sim_vs_human", required=True, help="results/sim_vs_human.csv")
    p.add_argument("--sim_vs_human_metrics", required=True, help="results/metrics/sim_vs_human.json")
    p.add_argument("--sim_vs_human_plot", required=True, help="results/sim_vs_human.png")
    p.add_argument("--lc_plot", required=True, help="LC-vs-raw figure, e.g. results/leaderboard_sim.png")
    p.add_argument("--alpacaeval2", required=True, help="results/alpacaeval2_reproduction.md")
    p.add_argument("--annotators", required=True, help="results/annotators/analysis.md")
    p.add_argument("--paper_results", required=True, help="data/paper/alpaca_farm_results.csv")
    p.add_argument("--method_health_sim", default="", help="results/method_health_sim.md (optional section)")
    p.add_argument("--method_health_human", default="", help="results/method_health_human.md (optional section)")
    p.add_argument("--out", required=True, help="results/REPORT.md to write")
    return p


if __name__ == "__main__":
    run(main, arguments())
