"""Numbers that README.md and docs/*.md state about the code are recomputed from the code, so they cannot drift
again (issue #33: the stage count, the 4 x 80 GB prose, the SLURM job count, the small scale's batches and time,
the tiny DAG's time, the annotator table, relative links). Cheap: no run, no model; one subprocess
(bench/bench_memory_plan.py, well under a second)."""

from __future__ import annotations

import ast
import fnmatch
import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest

from afarm import dag
from afarm.config import load_params, resolve

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def _text(path: Path) -> str:
    return " ".join(path.read_text(encoding="utf-8").split())  # line breaks inside a sentence do not matter


def _documents() -> dict[str, str]:
    """README.md and every docs/*.md, whitespace-normalised, by path relative to the repository."""
    paths = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
    return {str(p.relative_to(REPO)): _text(p) for p in paths}


# --- the stage count -------------------------------------------------------------------------------------------

def stage_counts(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"\b(\d+) stages\b", text)]


def test_every_stage_count_is_the_stage_tables():
    counts = {path: stage_counts(text) for path, text in _documents().items()}
    assert sum(len(c) for c in counts.values()) >= 3, counts  # the README twice, docs/small_scale.md
    wrong = {path: c for path, c in counts.items() if any(n != len(dag.STAGES) for n in c)}
    assert not wrong, f"afarm.dag.STAGES has {len(dag.STAGES)} stages; the docs say {wrong}"


# --- docs/memory_plan.md: the 4 x 80 GB prose is the table -----------------------------------------------------

FOUR_GPUS = re.compile(r"On 4 x 80 GB SFT \(([\d.]+) GB\), the reward model \(([\d.]+) GB\), DPO \(([\d.]+) GB\) "
                       r"and Quark \(([\d.]+) GB\) fit, PPO does not \(([\d.]+) GB\)")


def bench_totals(devices: str = "4 x 80 GB") -> dict[str, tuple[str, str]]:
    """stage -> (total GB, fits) from the table `python bench/bench_memory_plan.py` prints."""
    out = subprocess.run([sys.executable, str(REPO / "bench" / "bench_memory_plan.py")], capture_output=True,
                         text=True, check=True, cwd=REPO).stdout
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 3 and cells[1] == devices:
            rows[cells[0]] = (cells[-2], cells[-1])
    return rows


def four_gpu_prose_problems(text: str, totals: dict[str, tuple[str, str]]) -> list[str]:
    match = FOUR_GPUS.search(text)
    if match is None:
        return ["docs/memory_plan.md no longer states the 4 x 80 GB sentence this test reads"]
    stated = dict(zip(("sft", "reward_model", "dpo", "quark", "ppo"), match.groups()))
    problems = [f"{stage}: prose {gb} GB, table {totals[stage][0]}" for stage, gb in stated.items() if gb != totals[stage][0]]
    fits = {stage: totals[stage][1] for stage in stated}
    if fits != {"sft": "yes", "reward_model": "yes", "dpo": "yes", "quark": "yes", "ppo": "**no**"}:
        problems.append(f"the prose says SFT, the reward model, DPO and Quark fit and PPO does not; the table: {fits}")
    return problems


def test_memory_plan_four_gpu_prose_is_the_bench_table():
    totals = bench_totals()
    assert totals["ppo"][0] == "80.2"  # the parse found the table
    assert four_gpu_prose_problems(_text(DOCS / "memory_plan.md"), totals) == []


# --- docs/cluster.md: the SLURM test's job count ---------------------------------------------------------------

NUMBER_WORDS = {3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}


def slurm_spine() -> set[str]:
    """The stages tests/test_slurm.py submits as SLURM jobs: its `spine = {...}` literal."""
    tree = ast.parse((REPO / "tests" / "test_slurm.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["spine"]:
            return set(ast.literal_eval(node.value))
    raise AssertionError("tests/test_slurm.py has no `spine = {...}`")


def test_cluster_doc_states_the_slurm_tests_job_count():
    spine = slurm_spine()
    assert spine <= {s.name for s in dag.STAGES}
    stated = [int(n) for n in re.findall(r"(\d+) jobs\)", _text(DOCS / "cluster.md"))]
    assert stated == [len(spine)], f"tests/test_slurm.py submits {len(spine)} jobs ({sorted(spine)}); docs/cluster.md says {stated}"
    assert f"{NUMBER_WORDS[len(spine)]} stages" in _text(REPO / "tests" / "test_slurm.py")  # its docstring


# --- docs/small_scale.md: batches and the time estimate ---------------------------------------------------------

# training sections (a global batch_size beside a per-device micro_batch_size) and their names in the prose;
# base_model trains only at tiny scale (small and paper load pretrained weights)
TRAINING = {"sft.train": "SFT", "sft_52k.train": "SFT 52k", "reward_model": "the reward model", "dpo.train": "DPO",
            "feedme.train": "FeedME", "reward_conditioning.train": "reward conditioning",
            "expert_iteration.train": "expert iteration"}


def _resolved(params: dict, scale: str) -> dict:
    return {k: resolve(v, scale, "local", k) for k, v in params.items() if not k.startswith("_") and k not in ("scale", "judges")}


def _training_sections(tree: dict, path: str = ""):
    if isinstance(tree, dict):
        if "batch_size" in tree and "micro_batch_size" in tree:
            yield path
        for key, value in tree.items():
            yield from _training_sections(value, f"{path}.{key}" if path else key)


def at(tree: dict, path: str):
    """``tree["a"]["b"]`` for the dotted ``path`` "a.b"."""
    return functools.reduce(lambda d, k: d[k], path.split("."), tree)


def test_small_scale_batches_are_stated_as_params_yaml_sets_them():
    params = load_params(REPO / "params.yaml")
    small, paper = _resolved(params, "small"), _resolved(params, "paper")
    assert set(_training_sections(small)) - {"base_model.train"} == set(TRAINING)
    text = _text(DOCS / "small_scale.md")
    sentence = text[text.index("micro-batches (one GPU: the global batches of"):]
    sentence = sentence[: sentence.index("through gradient accumulation")]
    for path, name in TRAINING.items():
        assert at(small, path)["batch_size"] == at(paper, path)["batch_size"], f"{path}: small's global batch is not the paper's"
        assert name in sentence, f"{path} ({name}) keeps the paper's global batch; docs/small_scale.md should say so"
    for section in ("ppo", "quark"):
        for key in ("rollout_batch_size", "step_batch_size"):
            assert 2 * small[section][key] == paper[section][key], f"{section}.{key}: docs/small_scale.md says halved"
    ppo_s, ppo_p = small["ppo"], paper["ppo"]
    assert (f"halved: {ppo_s['rollout_batch_size']} rollouts per step of the paper's {ppo_p['rollout_batch_size']}, "
            f"{ppo_s['step_batch_size']} per optimizer step of {ppo_p['step_batch_size']}, so still "
            f"{ppo_s['rollout_batch_size'] // ppo_s['step_batch_size']} optimizer steps per PPO step") in text
    assert ppo_p["rollout_batch_size"] // ppo_p["step_batch_size"] == ppo_s["rollout_batch_size"] // ppo_s["step_batch_size"]


def _hours(minutes: int) -> str:
    half_hours = round(minutes / 30)
    return f"{half_hours / 2:g}"


def small_time_totals(doc: str) -> tuple[tuple[int, int], tuple[str, str]]:
    """((sum of the 24 GB column, sum of the A100 column) in minutes, the stated totals in hours)."""
    section = doc[doc.index("## Time"):]
    section = section[: section.index("\n## ", 1)]
    sums, stated = [0, 0], None
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[2].endswith(" min") and cells[3].endswith(" min"):
            sums[0] += int(cells[2].split()[0])
            sums[1] += int(cells[3].split()[0])
        if cells[0] == "**total**":
            stated = tuple(re.search(r"about ([\d.]+) h", c).group(1) for c in cells[2:4])
    assert stated is not None, "the time table has no total row"
    return (sums[0], sums[1]), stated


def test_small_scale_time_total_is_its_rows_and_the_readme_quotes_it():
    (card, a100), stated = small_time_totals((DOCS / "small_scale.md").read_text(encoding="utf-8"))
    assert card > 0 and a100 > 0
    assert stated == (_hours(card), _hours(a100)), f"rows add up to {card} / {a100} min; the total says {stated} h"
    readme = _text(REPO / "README.md")
    assert f"about {stated[0]} h on a 24 GB card, {stated[1]} h on an A100-80GB" in readme
    quoted = re.findall(r"about ([\d.]+) h on a 24 GB card, ([\d.]+) h on an A100", " ".join(_documents().values()))
    assert set(quoted) == {stated}, f"every quote of the small scale's time is the table's total: {quoted}"


# --- the tiny DAG's time: one statement ------------------------------------------------------------------------

# where a document speaks of the whole tiny DAG's wall time; "reduced" (the tests' smaller DAG) is another DAG
TINY_ANCHORS = re.compile(r"tiny DAG|run_tiny\.sh|tiny scale's measured|`snakemake --cores all` \(\d+ stages")
COLD = re.compile(r"(\d+(?:\.\d+)?)(?: |-)?(?:min|minutes)(?: measured)? cold")
MINUTES = re.compile(r"(\d+(?:\.\d+)?)(?: |-)?(?:min|minutes)\b")


def canonical_tiny_minutes(readme: str) -> str:
    match = re.search(r"\| `tiny` \(default\) \|[^|]*\| a laptop, 2 CPU cores: ([\d.]+) min measured cold on 2 cores", readme)
    assert match, "README's scale table no longer has the tiny row this test reads"
    return match.group(1)


def tiny_time_problems(documents: dict[str, str], canonical: str) -> list[str]:
    problems = []
    for path, text in documents.items():
        for anchor in TINY_ANCHORS.finditer(text):
            if "reduced" in text[max(0, anchor.start() - 12): anchor.start()]:
                continue
            window = text[anchor.end(): anchor.end() + 150]
            first = MINUTES.search(window)
            if first and first.group(1) != canonical:
                problems.append(f"{path}: {text[anchor.start(): anchor.end() + first.end()]!r}")
        problems += [f"{path}: {m.group(0)!r}" for m in COLD.finditer(text) if m.group(1) != canonical]
    return problems


def test_the_tiny_dag_time_is_one_statement():
    docs = _documents()
    canonical = canonical_tiny_minutes(docs["README.md"])
    assert tiny_time_problems(docs, canonical) == []
    assert f"measured {canonical}" in docs["docs/small_scale.md"]  # the small-scale estimate cites the same run


# --- docs/annotators.md: the config column names config folders ------------------------------------------------

CONFIGS = REPO / "src" / "afarm" / "annotators" / "configs"


def annotator_table_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        if line.startswith("| `"):
            names |= set(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return names


def test_annotator_table_lists_configs_not_backends():
    names = annotator_table_names((DOCS / "annotators.md").read_text(encoding="utf-8"))
    folders = {p.name for p in CONFIGS.iterdir() if (p / "config.yaml").exists()}
    assert names - folders == set(), f"not annotator configs (a backend?): {sorted(names - folders)}"
    assert folders - names == set(), f"configs missing from docs/annotators.md's table: {sorted(folders - names)}"


# --- docs/README.md: the paper-to-DAG map names real stages and files ------------------------------------------

def test_paper_map_names_stages_and_files_that_exist():
    text = (DOCS / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## From the paper to the DAG"):]
    stages = {s.name for s in dag.STAGES}
    outputs = {path for s in dag.STAGES for group in (s.outs, getattr(s, "metrics", {}), getattr(s, "plots", {}))
               for path in (group.values() if isinstance(group, dict) else [])}
    named_stages, named_files = set(), set()
    for line in section.splitlines():
        cells = line.strip().strip("|").split("|")
        if len(cells) == 3 and not set(cells[0]) <= {"-"} and cells[1].strip() != "stages":
            named_stages |= set(re.findall(r"`([^`]+)`", cells[1]))
            named_files |= set(re.findall(r"`([^`]+)`", cells[2]))
    named_stages -= {"published_outputs.api_models"}  # a params key named in a stage cell
    unknown = {s for s in named_stages if not fnmatch.filter(stages, s)}  # `annotate_sim_*`: every annotate_sim_ stage
    assert len(named_stages) > 30 and unknown == set(), sorted(unknown)
    missing = {f for f in named_files if f not in outputs and not (REPO / f).exists()}
    assert len(named_files) > 20 and missing == set(), sorted(missing)


# --- relative links --------------------------------------------------------------------------------------------

def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):  # http(s), mailto
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md":
            slugs = {_slug(h) for h in re.findall(r"^#+ (.+)$", dest.read_text(encoding="utf-8"), re.M)}
            if anchor not in slugs:
                broken.append(target)
    return broken


@pytest.mark.parametrize("doc", ["README.md", *sorted(f"docs/{p.name}" for p in DOCS.glob("*.md"))])
def test_relative_links_resolve(doc):
    assert broken_links(REPO / doc) == []


def test_docs_index_lists_every_doc():
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\(([\w.-]+\.md)\)", index))
    assert {p.name for p in DOCS.glob("*.md")} - {"README.md"} <= linked
