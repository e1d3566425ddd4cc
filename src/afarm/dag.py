"""The stage table: the single place where a stage of the DAG is declared.

``dvc.yaml`` is generated from it (``python -m afarm.dag --write``; a test fails
when the committed file is stale) and the ``Snakefile`` builds one rule per
entry. Every stage runs ``python -m afarm.stages <module>`` (the launcher,
``afarm.stages._launch``: pinned environment, one process per device where the
module is in ``DISTRIBUTED``) with one ``--<name> <path>`` flag per input and
output, so the command, the DVC stage and the Snakemake rule can never disagree
about paths, and every engine starts a stage the same way.

Paths may contain ``{shared_data}``: the data bundle root from
``params.yaml:paths.shared_data`` (``${paths.shared_data}`` in dvc.yaml).

The DAG's *structure* (which models get generated and evaluated) lives here, in
code; hyperparameters live in params.yaml.
"""

from __future__ import annotations

import argparse
import ast
import sys
from functools import cache
from dataclasses import dataclass, field
from pathlib import Path

import yaml

PACKAGE = "afarm"
LAUNCHER = f"python -m {PACKAGE}.stages"  # the stage launcher, afarm.stages._launch
BUNDLE = "{shared_data}/alpaca_eval"
EVAL_SOURCE = BUNDLE + "/results/text_davinci_003/model_outputs.json"
AE2_LEADERBOARD = BUNDLE + "/src/alpaca_eval/leaderboards/data_AlpacaEval_2/weighted_alpaca_eval_gpt4_turbo_leaderboard.csv"
AE2_LC_WEIGHTS = BUNDLE + "/src/alpaca_eval/metrics/weights/weighted_alpaca_eval_gpt4_turbo/length_controlled_v1/baseline_gpt4_1106_preview.csv"
REFERENCE = "text_davinci_003"  # the reference model of AlpacaFarm evaluation (paper, Sec. 3)
SPLITS = ("sft", "preference", "unlabeled", "validation")


@dataclass(frozen=True)
class Resources:
    cpus: int = 2
    mem_mb: int = 4000
    gpus: int = 0
    runtime: int = 60  # minutes


# Stage modules that run one process per device at paper scale (``launch.processes`` in params.yaml):
# data-parallel generation and FSDP-sharded training. Every other stage runs in one process.
DISTRIBUTED: frozenset[str] = frozenset({
    # FSDP2-sharded training (afarm.distributed): not base_model, which trains only the tiny scale's model
    "sft", "reward_model", "dpo", "feedme", "reward_conditioning", "expert_iteration",
    "ppo", "quark",  # sharded policy, value, reference and reward model; rollouts from the sharded policy
    # data-parallel generation (afarm.models.generate) and scoring: one full model copy per process
    "generate", "sft_samples", "best_of_n",
})

CPU = Resources(cpus=1)  # tiny stages use one thread each (params num_threads), so two run at once
# Paper-scale training and generation of a 7B model: AlpacaFarm trained on 8 x A100 80GB.
GPU_TRAIN = Resources(cpus=16, mem_mb=256_000, gpus=8, runtime=24 * 60)
GPU_INFER = Resources(cpus=8, mem_mb=64_000, gpus=1, runtime=6 * 60)
# Data-parallel generation at paper scale: one process and one full bf16 copy of the model per GPU of
# the node, each generating its share of the batches (the 40k preference samples, 805 x 15 eval outputs).
GPU_GEN = Resources(cpus=16, mem_mb=128_000, gpus=8, runtime=6 * 60)
# The small scale: every stage that trains, generates or runs a local judge gets ONE GPU (a 0.5B model
# and its PPO companions fit one 24 GB device by the memory plan: no sharding, one process per stage).
SMALL_GPU = Resources(cpus=8, mem_mb=64_000, gpus=1, runtime=12 * 60)
# Stage modules that load a judge model when the small scale runs its open judge (`judges: local`):
# they get a GPU at that scale whatever `judges` says (a SLURM reservation cannot read params values).
JUDGE_MODULES = frozenset({"preference_data", "annotate", "analyze_annotators"})


@dataclass(frozen=True)
class Stage:
    name: str
    module: str  # afarm.stages.<module>
    deps: dict[str, str | tuple[str, ...]]  # flag -> one path, or several
    outs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, str] = field(default_factory=dict)  # small JSON, `cache: false`
    plots: dict[str, str] = field(default_factory=dict)  # small CSV or PNG for `dvc plots show`, `cache: false`
    params: tuple[str, ...] = ()  # params.yaml sections read by the stage
    args: dict[str, str | tuple[str, ...]] = field(default_factory=dict)  # fixed non-path flags (a tuple: several values)
    tiny: Resources = CPU
    paper: Resources = CPU

    def command(self, shared_data: str = "${paths.shared_data}") -> str:
        return f"{LAUNCHER} {self.arguments(shared_data)}"

    def arguments(self, shared_data: str = "${paths.shared_data}", params_file: str | None = None) -> str:
        """The launcher's arguments: the module and its flags, then ``--params`` when a params file
        other than params.yaml is given (the Snakefile's merged ``--config`` overrides)."""
        parts = [self.module]
        for flag, value in {**self.deps, **self.outs, **self.metrics, **self.plots, **self.args}.items():
            parts += [f"--{flag}", *(p.format(shared_data=shared_data) for p in as_list(value))]
        if params_file is not None:
            parts += ["--params", params_file]
        return " ".join(parts)

    def dep_paths(self, shared_data: str = "${paths.shared_data}") -> list[str]:
        """Data dependencies, then the package's source files this stage's module imports."""
        data = [p.format(shared_data=shared_data) for v in self.deps.values() for p in as_list(v)]
        return data + list(code_deps(self.module))

    def resources(self, scale: str) -> Resources:
        if scale == "small":  # one GPU where the paper uses any (or a judge model may run), else as the paper
            return SMALL_GPU if self.paper.gpus or self.module in JUDGE_MODULES else self.paper
        return self.paper if scale == "paper" else self.tiny


# Preference sets ("worlds") every preference-learning method is trained on and evaluated in: the
# paper's simulated pool and human feedback (tiny scale: a stronger offline judge stands in for people).
PREFERENCE_SETS = ("sim", "human")
# Rows from the bundle's real outputs (paper Table: GPT-4, ChatGPT, Davinci001, upstream's PPO models).
PUBLISHED = ("gpt4", "gpt-3.5-turbo-0301", "text_davinci_001", "alpaca-farm-ppo-human", "alpaca-farm-ppo-sim-gpt4-20k")


SIM_VS_HUMAN_CSV = "results/sim_vs_human.csv"
# `dvc plots show` renders these CSVs (stage-level plot properties in dvc.yaml).
PLOT_PROPS = {
    SIM_VS_HUMAN_CSV: {"template": "scatter", "x": "sim_win_rate", "y": "human_win_rate", "title": "Win rate: simulated vs human world"},
}
# Every training stage writes its training curve (afarm.curves: a row per step) to CURVES/<stage>.csv,
# declared as a plot of CURVE_Y against `step`, so `dvc plots diff` compares two runs' curves (any other
# column: `dvc plots show CURVES/<stage>.csv -y <column>`). PPO and Quark also draw a PNG there.
CURVES = "results/curves"
CURVE_Y = {"ppo": "score", "quark": "score"}  # the RL loops: mean reward-model score of the rollouts; else "loss"


def curve_path(stage: str, suffix: str = ".csv") -> str:
    return f"{CURVES}/{stage}{suffix}"


def curve(stage: str) -> dict[str, str]:
    """The ``plots`` entry of a training stage: its curve CSV (flag ``--log``)."""
    return {"log": curve_path(stage)}


def plot_props(stage: Stage, path: str) -> dict:
    """The plot properties of ``path``, a plot of ``stage`` (none for an image)."""
    if path in PLOT_PROPS:
        return PLOT_PROPS[path]
    if path == curve_path(stage.name):
        y = CURVE_Y.get(stage.module, "loss")
        return {"template": "linear", "x": "step", "y": y, "title": f"{stage.name}: {y} per step"}
    return {}


def stage_name(name: str) -> str:
    """DVC stage names may not contain dots."""
    return name.replace(".", "_")


def model_dir(name: str) -> str:
    return f"models/{name}"


def outputs_path(generator: str) -> str:
    return f"results/outputs/{generator}.json"


def samples_path(prompts: str) -> str:
    """The SFT model's samples on a prompt file (``afarm.methods.sft_samples``), shared by both worlds."""
    return f"data/sft_samples/{prompts}.json"


# The sft_samples stages: prompt file name -> (its path, the recipe, the params sections the recipe reads).
SFT_SAMPLES = {
    "preference": ("data/splits/preference.json", "preference_data", ("preference_data",)),
    "eval_set": ("data/eval_set.json", "best_of_n", ("best_of_n",)),
    "unlabeled": ("data/splits/unlabeled.json", "expert_iteration", ("expert_iteration",)),
    "validation": ("data/splits/validation.json", "method_health", ("preference_data", "method_health")),
}


def annotations_path(pset: str, generator: str) -> str:
    return f"results/annotations/{pset}/{generator}.json"


def preference_methods(pset: str) -> list[Stage]:
    """Preference data for set ``pset`` and every method that learns from it."""
    prefs = f"data/preferences/{pset}.json"
    rm = model_dir(f"reward_model_{pset}")
    sft, unlabeled, validation = model_dir("sft"), "data/splits/unlabeled.json", "data/splits/validation.json"

    def metrics(name: str) -> dict[str, str]:
        return {"metrics": f"results/metrics/{name}_{pset}.json"}

    return [
        Stage(
            f"preference_data_{pset}",
            "preference_data",
            deps={"samples": samples_path("preference")},
            outs={"out": prefs},
            metrics=metrics("preference_data"),
            params=("scale", "judges", "paths", "preference_data"),
            args={"preference_set": pset},
        ),
        Stage(
            f"reward_model_{pset}",
            "reward_model",
            deps={"sft": sft, "preferences": prefs},
            outs={"out": rm},
            metrics=metrics("reward_model"),
            plots=curve(f"reward_model_{pset}"),
            params=("scale", "reward_model"),
            paper=GPU_TRAIN,
        ),
        Stage(
            f"best_of_n_{pset}",
            "best_of_n",
            deps={"samples": samples_path("eval_set"), "reward_model": rm, "eval_set": "data/eval_set.json"},
            outs={"out": outputs_path(f"best_of_n_{pset}")},
            metrics=metrics("best_of_n"),
            params=("scale", "best_of_n"),
            args={"generator": f"best_of_n_{pset}"},
            paper=GPU_GEN,
        ),
        Stage(
            f"expert_iteration_{pset}",
            "expert_iteration",
            deps={"sft": sft, "reward_model": rm, "unlabeled": unlabeled, "samples": samples_path("unlabeled")},
            outs={"out": model_dir(f"expert_iteration_{pset}"), "data": f"data/expert_iteration/{pset}.json"},
            metrics=metrics("expert_iteration"),
            plots=curve(f"expert_iteration_{pset}"),
            params=("scale", "expert_iteration", "generate"),  # generate: the folder's generation_config.json
            paper=GPU_TRAIN,
        ),
        Stage(
            f"ppo_{pset}",
            "ppo",
            deps={"sft": sft, "reward_model": rm, "unlabeled": unlabeled},
            outs={"out": model_dir(f"ppo_{pset}")},
            metrics=metrics("ppo"),
            plots={"plot": curve_path(f"ppo_{pset}", ".png"), **curve(f"ppo_{pset}")},
            params=("scale", "ppo", "generate"),  # generate: the folder's generation_config.json
            args={"preference_set": pset},
            paper=GPU_TRAIN,
        ),
        Stage(
            f"quark_{pset}",
            "quark",
            deps={"sft": sft, "reward_model": rm, "unlabeled": unlabeled, "eval_set": "data/eval_set.json"},
            outs={"out": model_dir(f"quark_{pset}"), "outputs": outputs_path(f"quark_{pset}")},
            metrics=metrics("quark"),
            plots={"plot": curve_path(f"quark_{pset}", ".png"), **curve(f"quark_{pset}")},
            params=("scale", "quark", "generate"),
            args={"generator": f"quark_{pset}", "preference_set": pset},
            paper=GPU_TRAIN,
        ),
        Stage(
            f"dpo_{pset}",
            "dpo",
            deps={"sft": sft, "preferences": prefs},
            outs={"out": model_dir(f"dpo_{pset}")},
            metrics=metrics("dpo"),
            plots=curve(f"dpo_{pset}"),
            params=("scale", "dpo", "generate"),  # generate: the folder's generation_config.json
            paper=GPU_TRAIN,
        ),
        Stage(
            f"feedme_{pset}",
            "feedme",
            deps={"sft": sft, "preferences": prefs, "validation": validation},
            outs={"out": model_dir(f"feedme_{pset}")},
            metrics=metrics("feedme"),
            plots=curve(f"feedme_{pset}"),
            params=("scale", "feedme", "generate"),  # generate: the folder's generation_config.json
            paper=GPU_TRAIN,
        ),
        Stage(
            f"reward_conditioning_{pset}",
            "reward_conditioning",
            deps={"sft": sft, "preferences": prefs, "validation": validation},
            outs={"out": model_dir(f"reward_conditioning_{pset}")},
            metrics=metrics("reward_conditioning"),
            plots=curve(f"reward_conditioning_{pset}"),
            params=("scale", "reward_conditioning", "generate"),  # generate: the folder's generation_config.json
            paper=GPU_TRAIN,
        ),
    ]


def method_health_path(pset: str, ext: str) -> str:
    return f"results/method_health_{pset}.{ext}"


def method_health(pset: str, evaluated: dict[str, str]) -> Stage:
    """Each method of world ``pset`` checked on held-out data (validation prompts, held-out labelled pairs,
    the evaluation set's reference answers), with the world's win-rate deltas from its annotations."""
    models = {"base_model": model_dir("base_model"), "sft": model_dir("sft"), "sft_52k": model_dir("sft_52k"),
              "reward_model": model_dir(f"reward_model_{pset}")}
    models |= {m: model_dir(f"{m}_{pset}") for m in ("dpo", "feedme", "reward_conditioning", "ppo", "quark", "expert_iteration")}
    return Stage(
        f"method_health_{pset}",
        "method_health",
        deps={**models, "validation": "data/splits/validation.json", "samples": samples_path("validation"), "eval_set": "data/eval_set.json",
              # the rows it compares: base model, SFT, SFT 52k and this world's methods
              "annotations": tuple(annotations_path(pset, g) for g in evaluated if g in ("base_model", "sft", "sft_52k") or g.endswith(f"_{pset}"))},
        outs={"csv": method_health_path(pset, "csv"), "markdown": method_health_path(pset, "md"), "pairs": f"data/health/{pset}.json"},
        metrics={"metrics": f"results/metrics/method_health_{pset}.json"},
        params=("scale", "judges", "paths", "preference_data", "reward_conditioning", "method_health"),
        args={"preference_set": pset},
        paper=GPU_INFER,
    )


def build_stages() -> list[Stage]:
    stages = [
        Stage(
            "data",
            "data",
            deps={"instructions": "data/raw/instructions.jsonl.gz", "eval_source": EVAL_SOURCE},
            outs={"eval_set": "data/eval_set.json", **{s: f"data/splits/{s}.json" for s in SPLITS}},
            params=("scale", "data"),
        ),
        Stage(
            "base_model",
            "base_model",
            deps={"unlabeled": "data/splits/unlabeled.json", "validation": "data/splits/validation.json"},
            outs={"out": model_dir("base_model")},
            metrics={"metrics": "results/metrics/base_model.json"},
            plots=curve("base_model"),
            params=("scale", "base_model", "generate"),  # generate: the folder's generation_config.json
            paper=GPU_INFER,
        ),
        Stage(
            "sft",
            "sft",
            deps={
                "base_model": model_dir("base_model"),
                "sft": "data/splits/sft.json",
                "validation": "data/splits/validation.json",
            },
            outs={"out": model_dir("sft")},
            metrics={"metrics": "results/metrics/sft.json"},
            plots=curve("sft"),
            params=("scale", "sft", "generate"),  # generate: the folder's generation_config.json
            paper=GPU_TRAIN,
        ),
    ]
    # The SFT model's samples that both worlds start from (preference pairs, best-of-n, expert iteration,
    # method health): drawn once, read by each world's stage (afarm.methods.sft_samples).
    for prompts, (source, recipe, sections) in SFT_SAMPLES.items():
        stages.append(
            Stage(
                f"sft_samples_{prompts}",
                "sft_samples",
                deps={"sft": model_dir("sft"), "prompts": source},
                outs={"out": samples_path(prompts)},
                params=("scale", *sections),
                args={"recipe": recipe},
                paper=GPU_GEN,
            )
        )
    # SFT on all four splits: the paper's "SFT 52k" row (tiny: 5200 vs 1000 instructions, same ratio).
    stages.append(
        Stage(
            "sft_52k",
            "sft",
            deps={
                "base_model": model_dir("base_model"),
                "sft": tuple(f"data/splits/{s}.json" for s in SPLITS),
                "validation": "data/splits/validation.json",
            },
            outs={"out": model_dir("sft_52k")},
            metrics={"metrics": "results/metrics/sft_52k.json"},
            plots=curve("sft_52k"),
            params=("scale", "sft_52k", "generate"),  # generate: the folder's generation_config.json
            args={"section": "sft_52k"},  # its own params section: the sft recipe, tiny 2 epochs
            paper=GPU_TRAIN,
        )
    )
    shared = ["base_model", "sft", "sft_52k"]  # models both worlds evaluate, generated by `generate`
    methods: dict[str, list[str]] = {}  # preference set -> its trained methods' generators
    generators = list(shared)  # models whose outputs the generic `generate` stage writes
    self_generated: dict[str, str] = {}  # methods whose stage writes its own eval outputs
    for pset in PREFERENCE_SETS:
        stages += preference_methods(pset)
        generated = [f"{m}_{pset}" for m in ("ppo", "expert_iteration", "dpo", "feedme", "reward_conditioning")]
        own = [f"{m}_{pset}" for m in ("best_of_n", "quark")]
        generators += generated
        self_generated |= {g: outputs_path(g) for g in own}
        methods[pset] = generated + own
    for generator in generators:
        stages.append(
            Stage(
                f"generate_{generator}",
                "generate",
                deps={"model": model_dir(generator), "eval_set": "data/eval_set.json"},
                outs={"out": outputs_path(generator)},
                params=("scale", "generate"),
                args={"generator": generator},
                paper=GPU_GEN,
            )
        )
    # Baseline rows: real outputs of API models and of upstream's released PPO models, from the bundle.
    for model in PUBLISHED:
        stages.append(
            Stage(
                f"published_{stage_name(model)}",
                "published_outputs",
                deps={"source": f"{BUNDLE}/results/{model}/model_outputs.json", "eval_set": "data/eval_set.json"},
                outs={"out": outputs_path(model)},
                metrics={"metrics": f"results/metrics/published_{stage_name(model)}.json"},
                params=("scale", "published_outputs"),
            )
        )
    # Each world judges the shared rows and its own methods with its own evaluator. The reference's
    # own outputs are the eval set: its row is 50% by construction.
    all_outputs = {g: outputs_path(g) for g in generators} | self_generated
    common = {g: outputs_path(g) for g in shared} | {m: outputs_path(m) for m in PUBLISHED} | {REFERENCE: "data/eval_set.json"}
    evaluated = {pset: common | {g: all_outputs[g] for g in methods[pset]} for pset in PREFERENCE_SETS}
    for pset in PREFERENCE_SETS:
        for generator, outputs in evaluated[pset].items():
            stages.append(
                Stage(
                    f"annotate_{pset}_{stage_name(generator)}",
                    "annotate",
                    deps={"outputs": outputs, "eval_set": "data/eval_set.json"},
                    outs={"out": annotations_path(pset, generator)},
                    metrics={"metrics": f"results/metrics/annotate/{pset}/{generator}.json"},
                    params=("scale", "judges", "paths", "annotate"),
                    args={"preference_set": pset},
                )
            )
        stages.append(
            Stage(
                f"leaderboard_{pset}",
                "leaderboard",
                deps={"annotations": tuple(annotations_path(pset, g) for g in evaluated[pset])},
                outs={
                    "csv": f"results/leaderboard_{pset}.csv",
                    "markdown": f"results/leaderboard_{pset}.md",
                    "plot": f"results/leaderboard_{pset}.png",
                },
                metrics={"metrics": f"results/metrics/leaderboard_{pset}.json"},
                params=("scale", "judges", "leaderboard"),
                args={"preference_set": pset},
            )
        )
    # Length-controlled AlpacaEval 2 reproduction from the bundle's official annotations.
    stages += [
        Stage(
            "instruction_difficulty",
            "instruction_difficulty",
            deps={"shared_data_results": BUNDLE + "/results", "leaderboard": AE2_LEADERBOARD, "weights": AE2_LC_WEIGHTS},
            outs={"out": "results/lc_inputs/instruction_difficulty.csv", "gamed": "results/lc_inputs/gamed.csv"},
            metrics={"metrics": "results/metrics/instruction_difficulty.json"},
        ),
        Stage(
            "alpacaeval2_reproduction",
            "alpacaeval2_reproduction",
            deps={
                "shared_data_results": BUNDLE + "/results",
                "leaderboard": AE2_LEADERBOARD,
                "instruction_difficulty": "results/lc_inputs/instruction_difficulty.csv",
                "gamed": "results/lc_inputs/gamed.csv",
            },
            outs={
                "csv": "results/alpacaeval2_reproduction.csv",
                "markdown": "results/alpacaeval2_reproduction.md",
                "plot": "results/alpacaeval2_reproduction.png",
            },
            metrics={"metrics": "results/metrics/alpacaeval2_reproduction.json"},
        ),
    ]
    # Does each method do its job? Every method's own check on held-out data, per world.
    stages += [method_health(pset, evaluated[pset]) for pset in PREFERENCE_SETS]
    # The paper's end-to-end check: do both worlds rank the models the same way? Then the report.
    stages += [
        Stage(
            "sim_vs_human",
            "sim_vs_human",
            deps={
                "sim_annotations": tuple(annotations_path("sim", g) for g in evaluated["sim"]),
                "human_annotations": tuple(annotations_path("human", g) for g in evaluated["human"]),
            },
            outs={"markdown": "results/sim_vs_human.md", "plot": "results/sim_vs_human.png"},
            metrics={"metrics": "results/metrics/sim_vs_human.json"},
            plots={"csv": SIM_VS_HUMAN_CSV},
            params=("scale", "judges", "leaderboard", "sim_vs_human"),
            # the shared rows our training stages produce; with the method rows, the "trained rows"
            args={"trained_shared": tuple(shared)},
        ),
        Stage(
            "analyze_annotators",
            "analyze_annotators",
            deps={"shared_data_results": BUNDLE + "/results"},
            outs={
                "csv": "results/annotators/analysis.csv",
                "markdown": "results/annotators/analysis.md",
                "plot": "results/annotators/analysis.png",
            },
            metrics={"metrics": "results/metrics/analyze_annotators.json"},
            params=("scale", "judges", "paths", "analyze_annotators"),
        ),
        Stage(
            "report",
            "report",
            deps={
                "sim_leaderboard": "results/leaderboard_sim.csv",
                "human_leaderboard": "results/leaderboard_human.csv",
                "sim_vs_human": SIM_VS_HUMAN_CSV,
                "sim_vs_human_metrics": "results/metrics/sim_vs_human.json",
                "sim_vs_human_plot": "results/sim_vs_human.png",
                "lc_plot": "results/leaderboard_sim.png",
                "alpacaeval2": "results/alpacaeval2_reproduction.md",
                "annotators": "results/annotators/analysis.md",
                "paper_results": "data/paper/alpaca_farm_results.csv",
                **{f"method_health_{pset}": method_health_path(pset, "md") for pset in PREFERENCE_SETS},
            },
            outs={"out": "results/REPORT.md"},
            params=("scale", "judges", "data", "base_model", "report"),
        ),
    ]
    return stages


STAGES = build_stages()


def stage_params(stage: Stage) -> tuple[str, ...]:
    """params.yaml sections a stage depends on: its own, and ``launch`` (threads, CPU kernels and
    processes decide its bytes)."""
    return ("launch", *stage.params)


def is_directory(path: str) -> bool:
    """Outputs without a file suffix (model folders) are directories."""
    return Path(path).suffix == ""


SRC = Path(__file__).resolve().parent.parent  # the folder holding the package (src/)
# Source files that are not code dependencies of a stage: the stage table itself (its effect on a stage
# is the command and paths in dvc.yaml; `_cli` reads it only to list params sections).
NOT_CODE_DEPS = {f"{PACKAGE}.dag"}


def _module_file(name: str) -> Path | None:
    path = SRC / name.replace(".", "/")
    if (path / "__init__.py").exists():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").exists() else None


@cache
def code_deps(module: str) -> tuple[str, ...]:
    """The package's source files that ``afarm.stages.<module>`` imports, transitively (``import`` and
    ``from ... import`` anywhere in a file, lazy ones too), plus the annotator config folders when the
    registry is used: editing a file reruns exactly the stages that run it (DVC by hash, Snakemake by
    modification time)."""
    seen: set[str] = set()
    todo = [f"{PACKAGE}.stages.{module}"]
    while todo:
        name = todo.pop()
        if name in seen or name in NOT_CODE_DEPS or (path := _module_file(name)) is None:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # importing a module runs its packages
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.split(".")[0] == PACKAGE]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == PACKAGE:
                todo += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
    files = [str(_module_file(n).relative_to(SRC.parent)) for n in seen]
    if f"{PACKAGE}.annotators.registry" in seen:
        files.append(f"src/{PACKAGE}/annotators/configs")
    return tuple(sorted(files))


def in_git(path: str) -> bool:
    """Outputs people read (REPORT.md, the tables and figures beside it) are small: like the metrics
    they go to git (`cache: false`), so they show on the repository's web page without `dvc pull`."""
    return Path(path).parent.as_posix() in ("results", "results/annotators") and Path(path).suffix in (".md", ".csv", ".png")


def as_list(value: str | tuple[str, ...]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def final_targets() -> list[str]:
    """What ``snakemake`` with no target builds: every output of every stage."""
    return [p for s in STAGES for p in [*s.outs.values(), *s.metrics.values(), *s.plots.values()]]


# `snakemake --report report.html`: outputs shown in the report, each with its caption (workflow/report/*.rst,
# relative to the Snakefile) and category. Presentation only: they change no command, path or dvc.yaml entry.
REPORT_CAPTIONS = "workflow/report"


def report_items() -> dict[str, dict[str, str]]:
    """Output path -> the keyword arguments of Snakemake's ``report()`` (caption, category, subcategory)."""
    items: dict[str, dict[str, str]] = {}

    def add(path: str, caption: str, category: str, subcategory: str) -> None:
        items[path] = {"caption": f"{REPORT_CAPTIONS}/{caption}.rst", "category": category, "subcategory": subcategory}

    for pset in PREFERENCE_SETS:
        world = f"{pset} world"
        add(f"results/leaderboard_{pset}.png", "leaderboard", "1. Leaderboards", world)
        add(f"results/leaderboard_{pset}.csv", "leaderboard", "1. Leaderboards", world)
        add(method_health_path(pset, "csv"), "method_health", "3. Method health", world)
    add("results/sim_vs_human.png", "sim_vs_human", "2. Simulated vs human", "rankings")
    add(SIM_VS_HUMAN_CSV, "sim_vs_human", "2. Simulated vs human", "rankings")
    for stage in STAGES:
        for path in stage.plots.values():
            if path.startswith(f"{CURVES}/"):
                add(path, "training_curve", "4. Training curves", stage.name)
    return items


def dvc_yaml() -> str:
    stages = {}
    for stage in STAGES:
        entry: dict = {"cmd": stage.command()}
        entry["deps"] = stage.dep_paths()
        entry["params"] = list(stage_params(stage))
        if stage.outs:
            entry["outs"] = [{path: {"cache": False}} if in_git(path) else path for path in stage.outs.values()]
        if stage.metrics:
            entry["metrics"] = [{path: {"cache": False}} for path in stage.metrics.values()]
        if stage.plots:
            entry["plots"] = [{path: {**plot_props(stage, path), "cache": False}} for path in stage.plots.values()]
        stages[stage.name] = entry
    header = "# GENERATED from src/afarm/dag.py by `python -m afarm.dag --write`. Do not edit by hand.\n"
    return header + yaml.safe_dump({"stages": stages}, sort_keys=False, width=1000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write or check dvc.yaml from the stage table.")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true", help="write dvc.yaml")
    group.add_argument("--check", action="store_true", help="exit 1 if dvc.yaml is stale")
    parser.add_argument("--path", default="dvc.yaml")
    args = parser.parse_args(argv)
    path = Path(args.path)
    text = dvc_yaml()
    if args.write:
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path} ({len(STAGES)} stages)")
        return 0
    current = path.read_text(encoding="utf-8") if path.exists() else ""
    if current != text:
        print(f"{path} is stale: run `python -m afarm.dag --write`", file=sys.stderr)
        return 1
    print(f"{path} is up to date ({len(STAGES)} stages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
