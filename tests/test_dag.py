"""The stage table is the single source of truth: dvc.yaml, commands and the Snakefile agree."""

from __future__ import annotations

from pathlib import Path

import importlib
import shlex

import yaml

from afarm import dag


def test_committed_dvc_yaml_is_current(repo):
    committed = (repo / "dvc.yaml").read_text(encoding="utf-8")
    assert committed == dag.dvc_yaml(), "dvc.yaml is stale: run `python -m afarm.dag --write`"


def test_check_command_detects_staleness(tmp_path):
    path = tmp_path / "dvc.yaml"
    assert dag.main(["--write", "--path", str(path)]) == 0
    assert dag.main(["--check", "--path", str(path)]) == 0
    path.write_text(path.read_text() + "# edited by hand\n")
    assert dag.main(["--check", "--path", str(path)]) == 1


def test_every_command_parses_with_its_stage_module():
    for stage in dag.STAGES:
        argv = shlex.split(stage.command(shared_data="/bundle"))
        assert argv[:4] == ["python", "-m", "afarm.stages", stage.module]  # the launcher, then the module
        module = importlib.import_module(f"afarm.stages.{stage.module}")
        args = module.arguments().parse_args(argv[4:])
        for flag, value in {**stage.deps, **stage.outs, **stage.metrics, **stage.plots}.items():
            got = getattr(args, flag)
            want = [p.format(shared_data="/bundle") for p in dag.as_list(value)]
            assert (got if isinstance(got, list) else [got]) == want, (stage.name, flag)


def test_snakemake_arguments_are_the_dvc_command_after_the_launcher():
    for stage in dag.STAGES:
        assert stage.command("/bundle") == f"{dag.LAUNCHER} {stage.arguments('/bundle')}"
        assert stage.arguments("/bundle", ".snakemake/afarm/params-x.yaml") == f"{stage.arguments('/bundle')} --params .snakemake/afarm/params-x.yaml"


def test_every_dependency_is_a_source_or_produced_upstream():
    produced: set[str] = set()
    for stage in dag.STAGES:  # the table is in topological order
        for path in stage.dep_paths(shared_data="/bundle"):
            assert path in produced or path.startswith(("/bundle/", "data/raw/", "data/paper/", "src/afarm/")), (stage.name, path)
        produced.update(stage.outs.values())
        produced.update(stage.metrics.values())
        produced.update(stage.plots.values())


def test_names_unique_and_outputs_disjoint():
    names = [s.name for s in dag.STAGES]
    assert len(names) == len(set(names))
    outs = [p for s in dag.STAGES for p in [*s.outs.values(), *s.metrics.values(), *s.plots.values()]]
    assert len(outs) == len(set(outs))


def test_dvc_yaml_uses_params_templating_for_the_bundle():
    stages = yaml.safe_load(dag.dvc_yaml())["stages"]
    assert "${paths.shared_data}/alpaca_eval/" in stages["data"]["cmd"]
    assert all("metrics" not in s or all(list(m.values())[0] == {"cache": False} for m in s["metrics"]) for s in stages.values())


def test_paper_scale_asks_for_gpus_where_models_are_trained():
    by_name = {s.name: s for s in dag.STAGES}
    assert by_name["sft"].resources("paper").gpus >= 1
    assert by_name["sft"].resources("tiny").gpus == 0


def test_code_dependencies_are_the_source_files_a_stage_imports():
    annotate = dag.code_deps("annotate")
    assert "src/afarm/stages/annotate.py" in annotate and "src/afarm/annotators/registry.py" in annotate
    assert "src/afarm/annotators/configs" in annotate  # judges are config folders: a changed config reruns
    assert "src/afarm/annotators/offline.py" in annotate  # imported lazily by the registry, still a dependency
    assert not any("/methods/" in p for p in annotate)  # a method's code change does not re-annotate
    sft = dag.code_deps("sft")
    assert "src/afarm/models/train.py" in sft and not any("/annotators/" in p for p in sft)
    assert all(not p.endswith("dag.py") for s in dag.STAGES for p in dag.code_deps(s.module))  # adding a stage reruns nothing
    assert all(Path(p).exists() for s in dag.STAGES for p in dag.code_deps(s.module))
    by_name = {s.name: s for s in dag.STAGES}
    assert by_name["ppo_sim"].dep_paths()[-len(dag.code_deps("ppo")):] == list(dag.code_deps("ppo"))
