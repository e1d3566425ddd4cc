"""``afarm check`` (afarm.annotators.preflight) and the substitute pools of issue #35.

Against the loopback OpenAI-compatible server (``fake_openai_server``), through the real ``openai``
client: a model the server does not serve, a 404 ``model_not_found``, a timeout, the all-good case;
a retired model refused with one line and no network call; the tiny scale's params pass offline; the
Snakefile's ``onstart`` stops a run before its first stage; the substitute pools build and judge.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import yaml

from afarm.annotators import preflight
from afarm.annotators.base import Pair, annotate_pairs
from afarm.annotators.registry import BUILTIN_CONFIGS, load_annotator
from afarm.cli import main as cli_main
from afarm.config import load_params
from afarm.io import InputError
from fake_openai_server import FakeOpenAIServer, TemplateJudge, bundle_templates

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
KEY = "sk-test-PREFLIGHT-9b2e"
PAPER_MODELS = {"gpt-4-0314", "gpt-3.5-turbo-0301", "text-davinci-003", "gpt-4", "gpt-4-1106-preview"}

needs_bundle = pytest.mark.skipif(not (SHARED / "alpaca_eval").exists(), reason="data bundle not found")


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    return KEY


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt of the check to build an API client fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("afarm check tried the network")

    monkeypatch.setattr(preflight, "_client", refuse)


def judge_params(tmp_path: Path, url: str, model: str = "judge-a") -> dict:
    """The tiny params with the sim evaluator replaced by an API judge at ``url`` (config folder in tmp)."""
    folder = tmp_path / "judges" / "api_judge"
    folder.mkdir(parents=True)
    template = SHARED / "alpaca_eval/src/alpaca_eval/evaluators_configs/alpaca_farm_greedy_gpt4/chatml_b5_without_inputs.txt"
    (folder / "config.yaml").write_text(yaml.safe_dump({"backend": "openai", "settings": {
        "prompt_template": str(template), "model": model, "base_url": url, "batch_size": 5, "parser": "regex",
        "parser_kwargs": {"outputs_to_match": {1: r"(?:^|\n) ?Output \(a\)", 2: r"(?:^|\n) ?Output \(b\)"}}}}))
    params = load_params(REPO / "params.yaml")
    params["scale"] = "tiny"
    params["paths"]["shared_data"] = str(SHARED)
    params["annotate"]["annotators"]["sim"] = {"tiny": "api_judge", "paper": "alpaca_farm_greedy_gpt4"}
    params["annotate"]["config_dirs"] = [str(folder.parent)]
    return params


def check(params, capsys, **kwargs) -> tuple[int, str, str]:
    code = preflight.run_check(params, **kwargs)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error: ")]


def only_error(code: int, err: str) -> str:
    """The one error line of a failed check."""
    assert code == 1, err
    (line,) = error_lines(err)
    return line


# ------------------------------------------------------------------ offline


def test_tiny_params_pass_offline_without_network(no_network, capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # relative paths of params resolve against the repository root
    params = load_params(REPO / "params.yaml")
    params["scale"] = "tiny"
    code, out, err = check(params, capsys)
    assert code == 0, err
    assert "offline_judge/weights.json | ok" in out and "offline_features/weights.json | ok" in out
    assert "all 3 checks passed" in out
    # what the tiny scale uses, walked through its pools; the paper judges named for tiny but unused are not
    plan = preflight.plan_params(params)
    assert plan.api == {} and plan.problems == {}
    annotators = {use.annotator for uses in plan.local.values() for use in uses}
    assert {"features_pool", "features_pool_noisy", "offline_judge"} <= annotators
    assert "alpaca_farm_greedy_gpt4" not in annotators  # method_health.hub_labellers: tiny's human set is not a hub set


def test_a_missing_weights_file_is_one_line(no_network, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    folder = tmp_path / "judges" / "offline_judge"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("backend: offline\nsettings:\n  weights: '{config_dir}/weights.json'\n")
    params = load_params(REPO / "params.yaml")
    params["scale"] = "tiny"
    params["annotate"]["config_dirs"] = [str(folder.parent)]  # shadows the built-in offline_judge
    code, _, err = check(params, capsys)
    line = only_error(code, err)
    assert f"{folder / 'config.yaml'}: offline judge weights {folder / 'weights.json'} not found" in line
    assert "offline_judge (annotate.annotators.human)" in line


@needs_bundle
def test_small_scale_open_judge_is_checked_locally(no_network, capsys, tmp_path):
    """judges: local: the local_hf judge's hub id is named (downloaded by its stage), no network; a model_path that
    is neither an existing folder nor a hub id is one line naming the config and field."""
    params = load_params(REPO / "params.yaml")
    params["scale"], params["judges"] = "small", "local"
    params["paths"]["shared_data"] = str(SHARED)
    code, out, _ = check(params, capsys)
    assert code == 0 and "| hub model Qwen/Qwen2.5-7B-Instruct@" in out
    folder = tmp_path / "judges" / "local_judge"
    folder.mkdir(parents=True)
    spec = yaml.safe_load((BUILTIN_CONFIGS / "local_judge/config.yaml").read_text())
    spec["settings"]["model_path"] = str(tmp_path / "no-such-model")
    (folder / "config.yaml").write_text(yaml.safe_dump(spec))
    params["annotate"]["config_dirs"] = [str(folder.parent)]
    code, _, err = check(params, capsys)
    line = only_error(code, err)
    assert f"field 'settings.model_path': {tmp_path / 'no-such-model'} is neither a folder nor a hub id" in line
    (tmp_path / "no-such-model").mkdir()
    assert check(params, capsys)[0] == 0  # a local folder


def test_retired_models_are_refused_one_line_each_without_network(key, no_network, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    params = load_params(REPO / "params.yaml")
    params["scale"] = "paper"
    code, out, err = check(params, capsys)
    assert code == 1 and out == ""
    lines = error_lines(err)
    refused = {re.match(r"error: model '([^']+)' at https://api\.openai\.com/v1: retired", line).group(1) for line in lines}
    assert refused == PAPER_MODELS and len(lines) == len(PAPER_MODELS)  # one line per model, nothing else fails
    (davinci,) = [line for line in lines if "'text-davinci-003'" in line]
    assert "shut it down on 2024-01-04" in davinci
    assert "alpaca_farm_pool (preference_data.annotators.sim" in davinci and "davinci003_4" in davinci
    assert "alpaca_farm_pool_2024" in davinci  # what to do: the substitutes
    (gpt4,) = [line for line in lines if "'gpt-4-0314'" in line]
    assert "alpaca_farm_greedy_gpt4 (method_health.hub_labellers.human, annotate.annotators.sim" in gpt4
    assert "published_outputs.api_models" in gpt4


def test_a_retired_name_at_another_server_is_asked_not_refused(key, capsys, tmp_path):
    with FakeOpenAIServer(TemplateJudge([]), models={"gpt-4-0314"}) as server:
        code, out, err = check(judge_params(tmp_path, server.url, model="gpt-4-0314"), capsys, timeout=5)
    assert code == 0, err
    assert f"model 'gpt-4-0314' at {server.url} | listed by GET /v1/models" in out


def test_retired_table_rejects_bad_rows(tmp_path):
    table = tmp_path / "retired.csv"
    table.write_text("model,shutdown,source\ngpt-x,2024-13,somewhere\n")
    with pytest.raises(InputError, match=r"retired\.csv, row 1, field 'shutdown': expected a date"):
        preflight.retired_models(table)
    table.write_text("model,shutdown,source\ngpt-x,2024-01-01,\n")
    with pytest.raises(InputError, match=r"row 1, field 'source': empty value"):
        preflight.retired_models(table)


def test_missing_key_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeOpenAIServer(TemplateJudge([]), models={"judge-a"}) as server:
        code, _, err = check(judge_params(tmp_path, server.url), capsys, timeout=5)
        assert server.probes == [] and server.calls == 0
    line = only_error(code, err)
    assert "environment variable OPENAI_API_KEY is empty or unset" in line and "api_judge (annotate.annotators.sim)" in line


# ------------------------------------------------------------------ against the loopback server


@needs_bundle
def test_all_good_prints_the_table_and_exits_0(key, capsys, tmp_path):
    with FakeOpenAIServer(TemplateJudge([]), models={"judge-a", "other"}) as server:
        code, out, err = check(judge_params(tmp_path, server.url), capsys, timeout=5)
        assert server.calls == 0 and server.probes == []  # listed: no completion request at all
    assert code == 0 and err == ""
    assert f"| model 'judge-a' at {server.url} | listed by GET /v1/models | api_judge (annotate.annotators.sim) |" in out
    assert re.search(r"all \d+ checks passed", out)


@needs_bundle
def test_a_model_the_server_does_not_list(key, capsys, tmp_path):
    with FakeOpenAIServer(TemplateJudge([]), models={"other-1", "other-2"}) as server:
        code, out, err = check(judge_params(tmp_path, server.url), capsys, timeout=5)
    assert out == ""
    line = only_error(code, err)
    assert line.startswith(f"error: model 'judge-a' at {server.url}: not served here: GET /v1/models lists 2 models (other-1, other-2)")
    assert "api_judge (annotate.annotators.sim)" in line and "what to do:" in line


@needs_bundle
@pytest.mark.parametrize("route", [True, False])
def test_a_refused_key_is_one_line_without_the_key(route, key, capsys, tmp_path):
    with FakeOpenAIServer(TemplateJudge([]), models={"judge-a"}, models_route=route) as server:
        server.required_key = "sk-the-right-one"
        code, out, err = check(judge_params(tmp_path, server.url), capsys, timeout=5)
    assert KEY not in out + err
    line = only_error(code, err)
    assert "HTTP 401" in line and "Incorrect API key provided: ***" in line


@needs_bundle
@pytest.mark.parametrize("served, code_expected, expected", [
    ({"other"}, 1, "error: model 'judge-a' at {url}: HTTP 404 model_not_found on a one-token chat request"),
    ({"judge-a"}, 0, "| model 'judge-a' at {url} | answered a one-token request |"),
])
def test_without_the_models_route_one_token_request(served, code_expected, expected, key, capsys, tmp_path):
    with FakeOpenAIServer(TemplateJudge([]), models=served, models_route=False) as server:
        code, out, err = check(judge_params(tmp_path, server.url), capsys, timeout=5)
        assert server.probes == ["judge-a"] and server.calls == 0  # one one-token request, no judging
    assert code == code_expected and len(error_lines(err)) == code_expected
    assert expected.format(url=server.url) in out + err


@needs_bundle
def test_paper_params_at_a_server_without_the_models_route(key, capsys, monkeypatch):
    """What tests/test_paper_path.py's Snakemake run meets in `onstart`: the paper's judges at the loopback server
    ($OPENAI_BASE_URL, no GET /v1/models): one one-token request per model and endpoint, all answered; the
    server's fault script and call counters are untouched by them."""
    with FakeOpenAIServer(TemplateJudge(bundle_templates(SHARED))) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        server.faults.extend(["401", "429"])
        params = load_params(REPO / "params.yaml")
        params["scale"] = "paper"
        params["paths"]["shared_data"] = str(SHARED)
        code, out, err = check(params, capsys, timeout=5)
        assert code == 0, err
        assert sorted(server.probes) == sorted(PAPER_MODELS)
        assert list(server.faults) == ["401", "429"] and server.calls == 0
    assert out.count("answered a one-token request") == len(PAPER_MODELS)


@needs_bundle
@pytest.mark.parametrize("hanging, expected", [
    ("model", "no answer to a one-token chat request within the 0.5 s timeout"),  # no GET /v1/models: the probe hangs
    ("listing", "no answer to GET /v1/models within the 0.5 s timeout"),
])
def test_a_hanging_server_times_out(hanging, expected, key, capsys, tmp_path):
    with FakeOpenAIServer(TemplateJudge([]), models={"judge-a"}, models_route=hanging == "listing") as server:
        server.hang_models = {"judge-a"} if hanging == "model" else set()
        server.hang_listing = hanging == "listing"
        server.hang = 3.0
        code, _, err = check(judge_params(tmp_path, server.url), capsys, timeout=0.5)
    line = only_error(code, err)
    assert expected in line and "api_judge (annotate.annotators.sim)" in line


@needs_bundle
def test_cli_check_exit_codes(key, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    params = tmp_path / "params.yaml"
    with FakeOpenAIServer(TemplateJudge([]), models={"judge-a"}) as server:
        resolved = judge_params(tmp_path, server.url)
        params.write_text(yaml.safe_dump({k: v for k, v in resolved.items() if not k.startswith("_")}, sort_keys=False))
        assert cli_main(["check", "--params", str(params), "--timeout", "5"]) == 0
        server.models = {"other"}
        assert cli_main(["check", "--params", str(params), "--timeout", "5"]) == 1
    assert cli_main(["check", "--params", str(params), "--scale", "huge"]) == 2
    assert "--scale: must be one of" in capsys.readouterr().err
    assert cli_main(["check", "--params", str(tmp_path / "nope.yaml")]) == 2


# ------------------------------------------------------------------ the Snakefile's onstart


@needs_bundle
@pytest.mark.slow
def test_snakemake_stops_before_the_first_stage_when_a_judge_is_retired(tmp_path):
    """`snakemake` at paper scale with the paper's judges: the preflight refuses the retired models and no
    stage starts (seconds: Snakemake builds the DAG, then `onstart` stops it)."""
    from pipeline_helpers import copy_repo, run

    work = tmp_path / "repo"
    copy_repo(REPO, work)
    config = f"--config scale=paper 'paths={{shared_data: {SHARED}, cache_dir: {tmp_path / 'cache'}}}'"
    result = run(f"snakemake --cores 1 data {config}", work, check=False, timeout=600, OPENAI_API_KEY=KEY,
                 OPENAI_BASE_URL="")
    log = result.stdout + result.stderr
    assert result.returncode != 0, log[-3000:]
    assert "afarm check failed: no stage was started" in log
    assert len(re.findall(r"error: model '[^']+' at https://api\.openai\.com/v1: retired", log)) == len(PAPER_MODELS)
    assert "rule data:" not in log and not (work / "data" / "eval_set.json").exists()
    assert KEY not in log


# ------------------------------------------------------------------ the substitute pools


def pairs(n: int) -> list[Pair]:
    """Pairs the fake judge decides by their <<q=..>> tags: even against odd, never a tie."""
    return [Pair(f"Question {i}?", f"first {i} <<q={2 * (i % 3)}>>", f"second {i} <<q={2 * ((i * 7) % 5) + 1}>>")
            for i in range(n)]


def test_current_pool_members_are_alpaca_farm_pools_but_the_model():
    paper = yaml.safe_load((BUILTIN_CONFIGS / "alpaca_farm_pool/members.yaml").read_text())
    current = yaml.safe_load((BUILTIN_CONFIGS / "alpaca_farm_pool_current/members.yaml").read_text())
    models = current.pop("models")
    assert set(current) == set(paper)
    price = ("price_per_1k_prompt_tokens", "price_per_1k_completion_tokens")
    retired = preflight.retired_models()
    for name, spec in paper.items():
        mine = current[name]
        assert mine["backend"] == spec["backend"]
        strip = lambda s: {k: v for k, v in s.items() if k not in ("model", *price)}  # noqa: E731
        assert strip(mine["settings"]) == strip(spec["settings"]), name
        family = {"gpt4": "strong", "chatgpt": "chat", "davinci003": "text"}[name.rsplit("_", 1)[0]]
        assert mine["settings"]["model"] == models[family] and models[family] not in retired
    for pool in ("alpaca_farm_pool_current", "alpaca_farm_pool_open"):
        assert yaml.safe_load((BUILTIN_CONFIGS / pool / "config.yaml").read_text())["settings"]["members"] == list(paper)


def test_substitutes_are_hashed_by_dvc_and_unused_at_tiny_scale():
    """The configs folder the judging stages depend on includes them (DVC sees an edit to a substitute, as
    to any judge; the committed run's dvc.lock was made with them), and no params value of tiny names them."""
    ignored = (REPO / ".dvcignore").read_text()
    params = load_params(REPO / "params.yaml")
    params["scale"] = "tiny"
    used = {use.annotator for uses in preflight.plan_params(params).local.values() for use in uses}
    for name in preflight.SUBSTITUTE_POOLS:
        assert (BUILTIN_CONFIGS / name / "config.yaml").is_file()
        assert name not in ignored
        assert name not in used


@needs_bundle
@pytest.mark.parametrize("name", preflight.SUBSTITUTE_POOLS)
def test_substitute_pool_builds_and_judges_over_http(name, key, tmp_path):
    with FakeOpenAIServer(TemplateJudge(bundle_templates(SHARED))) as server:
        spec = yaml.safe_load((BUILTIN_CONFIGS / name / "config.yaml").read_text())["settings"]
        members = {**spec.get("member_overrides", {}), "base_url": server.url, "backoff_base": 0.01}
        pool = load_annotator(name, SHARED, overrides={"member_overrides": members, "p_label_flip": 0.0})
        assert sorted(pool.members) == sorted(spec["members"])
        records, stats = annotate_pairs(pool, pairs(24), progress=False)
        assert stats.n_failed == 0 and server.ok_calls > 0
        asked = {body["model"] for body in server.requests}
    assert all(r["preference"] in (1.0, 2.0) for r in records)
    # the fake judge prefers the higher <<q=..>> tag: every judged pair agrees, whichever order it was shown in
    for pair, record in zip(pairs(24), records):
        q1, q2 = (int(x) for x in re.findall(r"<<q=(\d+)>>", pair.output_1 + pair.output_2))
        assert record["preference"] == (1.0 if q1 > q2 else 2.0)
    expected = {"alpaca_farm_pool_2024": {"gpt-4"}, "alpaca_farm_pool_open": {"Qwen/Qwen2.5-7B-Instruct"}}
    assert asked == expected.get(name, asked) and not asked & {"gpt-4-0314", "gpt-3.5-turbo-0301", "text-davinci-003"}
    if name == "alpaca_farm_pool_2024":
        assert yaml.safe_load((BUILTIN_CONFIGS / name / "config.yaml").read_text())["settings"]["p_label_flip"] == 0.25


@needs_bundle
def test_preflight_walks_a_substitute_pool(key, capsys, tmp_path):
    """alpaca_farm_pool_current named for the sim labels at paper scale, at a server that serves its models: the
    check passes for them (one GET /v1/models), each model once, both endpoints' members included."""
    params = load_params(REPO / "params.yaml")
    params["scale"] = "paper"
    params["paths"]["shared_data"] = str(SHARED)
    params["preference_data"]["annotators"]["sim"] = {"paper": "alpaca_farm_pool_current"}
    plan = preflight.plan_params(params)
    pool = {m for m, uses in plan.api.items() if any(u.annotator == "alpaca_farm_pool_current" for u in uses)}
    models = yaml.safe_load((BUILTIN_CONFIGS / "alpaca_farm_pool_current/members.yaml").read_text())["models"]
    assert {(m.model, m.api) for m in pool} == {(models["strong"], "chat"), (models["chat"], "chat"), (models["text"], "completions")}
    assert plan.problems == {}


def test_retired_table_in_the_docs_matches_the_data_file():
    """docs/paper_scale.md's table of retired models (in the README until issue #33) is retired_models.csv
    (model, shutdown date)."""
    doc = (REPO / "docs" / "paper_scale.md").read_text()
    section = doc.split("\n## Judges that still answer", 1)[1].split("\n## ", 1)[0]
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([^`]+)` \| (\d{4}-\d{2}-\d{2})", section, re.M)}
    with open(preflight.RETIRED_FILE, newline="") as handle:
        table = {r["model"]: r["shutdown"] for r in csv.DictReader(handle)}
    assert rows == table
    # "N members of `alpaca_farm_pool`" in its "called by" column: counted in the pool's members file
    members = yaml.safe_load((BUILTIN_CONFIGS / "alpaca_farm_pool/members.yaml").read_text())
    quoted = {m.group(1): int(m.group(2)) for m in re.finditer(
        r"^\| `([^`]+)` \|[^|]+\| (\d+) (?:of the \d+ )?members of `alpaca_farm_pool`", section, re.M)}
    counted = {model: sum(spec["settings"]["model"] == model for spec in members.values()) for model in quoted}
    assert quoted == counted and len(quoted) == 3
    assert f"{len(members)} members of `alpaca_farm_pool`" in section and len(members) == 13
