"""Preflight (``afarm check``): will every judge the params name answer, before any GPU-hour is spent?

The judges of a run are the annotator configs that params names for preference data
(``preference_data.annotators`` of the sets labelled by an annotator), the held-out labels of
``method_health`` (``hub_labellers`` of hub sets, ``clean_annotators``), evaluation
(``annotate.annotators``) and ``analyze_annotators.annotators``, walked recursively through pools;
plus the API models ``published_outputs.api_models`` generates with. For each:

* an API model (backend ``openai``) at OpenAI's own endpoint that is in the retired table
  (``retired_models.csv`` beside this file: model, shutdown date, source) is refused with one line,
  without any network call;
* every other API model is asked of its server (the config's ``base_url``, else ``$OPENAI_BASE_URL``,
  else OpenAI) with ``GET /v1/models``; a server without that route (404) gets one one-token request
  per model instead (``PROBE_PROMPT``). Not listed, 404 ``model_not_found``, a timeout, a refused
  key: one line each. The key is read from the environment variable the config names, never logged;
* local judges are checked locally, with no network: prompt and weights files exist, a
  ``local_hf`` model is an existing folder or a hub id.

The library knows nothing of Snakemake or DVC: the Snakefile calls ``run_check`` in ``onstart``.
"""

from __future__ import annotations

import csv
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO
from urllib.parse import urlparse

import yaml

from afarm.io import InputError

RETIRED_FILE = Path(__file__).with_name("retired_models.csv")
RETIRED_COLUMNS = ("model", "shutdown", "source")
OPENAI_URL = "https://api.openai.com/v1"  # the openai client's default endpoint
OPENAI_HOST = "api.openai.com"  # the retired table is OpenAI's: it applies to OpenAI's own endpoint only
PROBE_PROMPT = "Reply with one word: ok"  # the one-token request to servers without GET /v1/models
DEFAULT_TIMEOUT = 20.0  # seconds per request of the check; our choice
SUBSTITUTE_POOLS = ("alpaca_farm_pool_2024", "alpaca_farm_pool_current", "alpaca_farm_pool_open")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")  # owner/name (afarm.models.hub splits off an @revision)


# ---------------------------------------------------------------- what params will call


@dataclass(frozen=True)
class Use:
    """Where a judge is used: the params key, the annotator config, the pool member path (if any)."""

    role: str  # e.g. "preference_data.annotators.sim"
    annotator: str  # the config named in params, e.g. "alpaca_farm_pool"
    member: str = ""  # e.g. "gpt4_1" (pool members joined by "/")


@dataclass(frozen=True)
class APIModel:
    """One model an API judge (or ``published_outputs``) will call."""

    model: str
    endpoint: str  # resolved base URL
    api_key_env: str | None
    api: str  # "chat" or "completions"


@dataclass
class Plan:
    api: dict[APIModel, list[Use]] = field(default_factory=dict)
    local: dict[str, list[Use]] = field(default_factory=dict)  # "what was checked" -> uses
    problems: dict[str, list[Use]] = field(default_factory=dict)  # one-line problem -> uses

    def add(self, table: dict, key: Any, use: Use) -> None:
        table.setdefault(key, [])
        if use not in table[key]:
            table[key].append(use)


def resolve_endpoint(base_url: str | None) -> str:
    """The server a request goes to, as the openai client picks it."""
    return (base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL).rstrip("/")


def is_openai(endpoint: str) -> bool:
    return urlparse(endpoint).hostname == OPENAI_HOST


def judges_in_params(params: dict) -> list[tuple[str, str, list[str]]]:
    """(params key, annotator config name, config folders) of every judge the active scale uses."""
    from afarm.config import section

    out: list[tuple[str, str, list[str]]] = []
    pdata = section(params, "preference_data") if "preference_data" in params else {}
    pdirs = list(pdata.get("config_dirs") or [])
    sources = pdata.get("source") or {}
    for pset, name in (pdata.get("annotators") or {}).items():
        if name and sources.get(pset, "annotator") == "annotator":
            out.append((f"preference_data.annotators.{pset}", name, pdirs))
    if "method_health" in params:
        health = section(params, "method_health")
        for pset, name in (health.get("hub_labellers") or {}).items():
            if name and sources.get(pset, "annotator") == "hub":
                out.append((f"method_health.hub_labellers.{pset}", name, pdirs))
        for pset, name in (health.get("clean_annotators") or {}).items():
            if name:
                out.append((f"method_health.clean_annotators.{pset}", name, pdirs))
    if "annotate" in params:
        annotate = section(params, "annotate")
        for pset, name in (annotate.get("annotators") or {}).items():
            if name:
                out.append((f"annotate.annotators.{pset}", name, list(annotate.get("config_dirs") or [])))
    if "analyze_annotators" in params:
        analyze = section(params, "analyze_annotators")
        for i, name in enumerate(analyze.get("annotators") or []):
            out.append((f"analyze_annotators.annotators[{i}]", name, list(analyze.get("config_dirs") or [])))
    return out


def plan_params(params: dict) -> Plan:
    """Everything the judges and API rows of ``params`` (loaded, any scale) will call or read."""
    from afarm.config import section

    plan = Plan()
    shared_data = section(params, "paths").get("shared_data", "") if "paths" in params else ""
    for role, name, dirs in judges_in_params(params):
        _walk_config(plan, Use(role, name), name, [Path(d) for d in dirs], str(shared_data))
    if "published_outputs" in params:
        published = section(params, "published_outputs")
        api = published.get("api") or {}
        for generator, model in (published.get("api_models") or {}).items():
            use = Use(f"published_outputs.api_models.{generator}", generator)
            key = APIModel(model, resolve_endpoint(api.get("base_url")), api.get("api_key_env", "OPENAI_API_KEY"), "chat")
            plan.add(plan.api, key, use)
    return plan


def _walk_config(plan: Plan, use: Use, name: str, dirs: list[Path], shared_data: str,
                 overrides: dict | None = None) -> None:
    """The config folder ``name`` (found as the registry finds it), walked as ``_walk_spec``."""
    from afarm.annotators.registry import find_config

    try:
        path = find_config(name, dirs)
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except KeyError as err:
        plan.add(plan.problems, str(err.args[0]), use)
        return
    except yaml.YAMLError as err:
        plan.add(plan.problems, f"{path}: malformed YAML: {' '.join(str(err).split())}", use)
        return
    _walk_spec(plan, use, spec, str(path), dirs, shared_data, overrides)


def _walk_spec(plan: Plan, use: Use, spec: Any, source: str, dirs: list[Path], shared_data: str,
               overrides: dict | None = None) -> None:
    from afarm.annotators.registry import _substitute

    if not isinstance(spec, dict):
        plan.add(plan.problems, f"{source}: expected a mapping with `backend` and `settings`", use)
        return
    backend = spec.get("backend")
    context = {"shared_data": shared_data, "config_dir": str(Path(source).parent)}
    try:
        settings = {**_substitute(spec.get("settings") or {}, context), **(overrides or {})}
    except (KeyError, ValueError, IndexError) as err:
        plan.add(plan.problems, f"{source}, field 'settings': bad placeholder {err}", use)
        return
    check = _BACKEND_CHECKS.get(backend)
    if check is None:
        plan.add(plan.problems, f"{source}, field 'backend': unknown backend {backend!r}", use)
        return
    try:
        check(plan, use, settings, source, dirs, shared_data)
    except (TypeError, ValueError) as err:
        plan.add(plan.problems, f"{source}, field 'settings': bad settings for backend {backend!r}: {err}", use)


def _file(plan: Plan, use: Use, path: str, what: str, source: str) -> None:
    if Path(path).is_file():
        plan.add(plan.local, f"{what} {path}", use)
    else:
        plan.add(plan.problems, f"{source}: {what} {path} not found", use)


def _check_openai(plan: Plan, use: Use, settings: dict, source: str, dirs: list[Path], shared_data: str) -> None:
    from afarm.annotators.openai_backend import OpenAIConfig

    cfg = OpenAIConfig(**settings)  # unknown or missing settings: TypeError
    _file(plan, use, cfg.prompt_template, "prompt file", source)
    chatml = Path(cfg.prompt_template).is_file() and Path(cfg.prompt_template).read_text(encoding="utf-8").lstrip().startswith("<|im_start|>")
    api = cfg.api if cfg.api != "auto" else ("chat" if chatml else "completions")
    plan.add(plan.api, APIModel(cfg.model, resolve_endpoint(cfg.base_url), cfg.api_key_env, api), use)


def _check_pool(plan: Plan, use: Use, settings: dict, source: str, dirs: list[Path], shared_data: str) -> None:
    from afarm.annotators.pool import PoolConfig

    cfg = PoolConfig(**settings)
    specs: dict = {}
    if cfg.members_file:
        _file(plan, use, cfg.members_file, "pool members file", source)
        if Path(cfg.members_file).is_file():
            specs = yaml.safe_load(Path(cfg.members_file).read_text(encoding="utf-8")) or {}
    member_dirs = [Path(d) for d in cfg.member_config_dirs]
    for member in cfg.members:
        sub = Use(use.role, use.annotator, f"{use.member}/{member}" if use.member else member)
        if member in specs:
            _walk_spec(plan, sub, specs[member], str(cfg.members_file), member_dirs, cfg.shared_data, cfg.member_overrides)
        else:
            _walk_config(plan, sub, member, member_dirs, cfg.shared_data, cfg.member_overrides)


def _check_offline(plan: Plan, use: Use, settings: dict, source: str, dirs: list[Path], shared_data: str) -> None:
    _file(plan, use, str(settings["weights"]), "offline judge weights", source)


def _check_heuristic(plan: Plan, use: Use, settings: dict, source: str, dirs: list[Path], shared_data: str) -> None:
    plan.add(plan.local, "heuristic rules (nothing to load)", use)


def _check_local_hf(plan: Plan, use: Use, settings: dict, source: str, dirs: list[Path], shared_data: str) -> None:
    from afarm.models.hub import split_revision

    model_path = str(settings["model_path"])
    _file(plan, use, str(settings["prompt_template"]), "prompt file", source)
    if Path(model_path).is_dir():
        plan.add(plan.local, f"model folder {model_path}", use)
    elif _HUB_ID.match(split_revision(model_path)[0]) and not model_path.startswith((".", "/")):
        plan.add(plan.local, f"hub model {model_path} (downloaded when its stage starts)", use)
    else:
        plan.add(plan.problems, f"{source}, field 'settings.model_path': {model_path} is neither a folder nor a hub id", use)


_BACKEND_CHECKS: dict[str, Callable] = {
    "openai": _check_openai,
    "pool": _check_pool,
    "offline": _check_offline,
    "heuristic": _check_heuristic,
    "local_hf": _check_local_hf,
}


# ---------------------------------------------------------------- the retired table


@dataclass(frozen=True)
class Retired:
    model: str
    shutdown: str  # ISO date
    source: str


def retired_models(path: str | Path = RETIRED_FILE) -> dict[str, Retired]:
    """The retired-model table: model -> (shutdown date, source). Bad rows name file, row and field."""
    path = Path(path)
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != RETIRED_COLUMNS:
            raise InputError(path, f"expected the columns {','.join(RETIRED_COLUMNS)}, got {reader.fieldnames}")
        table: dict[str, Retired] = {}
        for row, record in enumerate(reader, start=1):
            for column in RETIRED_COLUMNS:
                if not (record.get(column) or "").strip():
                    raise InputError(path, "empty value", row=row, field=column)
            if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", record["shutdown"]):
                raise InputError(path, f"expected a date YYYY-MM-DD, got {record['shutdown']!r}", row=row, field="shutdown")
            if record["model"] in table:
                raise InputError(path, f"model {record['model']!r} is listed twice", row=row, field="model")
            table[record["model"]] = Retired(record["model"], record["shutdown"], record["source"])
    return table


# ---------------------------------------------------------------- asking the servers


@dataclass
class Outcome:
    """The answer for one thing the run needs: ``problem`` None when it answers / exists."""

    what: str  # "model 'gpt-4-0314' at https://..." or a local thing
    uses: list[Use]
    status: str  # short status for the table
    problem: str | None = None
    advice: str = ""


def _client(endpoint: str, key_env: str | None, timeout: float):
    import openai

    key = os.environ.get(key_env, "") if key_env else "no-key"
    return openai.OpenAI(api_key=key, base_url=endpoint, timeout=timeout, max_retries=0)


def _scrub(text: str, key_env: str | None) -> str:
    key = os.environ.get(key_env, "") if key_env else ""
    text = " ".join(str(text).split())
    return (text.replace(key, "***") if key else text)[:300]


def _listed_models(client, key_env: str | None, timeout: float) -> tuple[set[str] | None, str | None]:
    """(models the server lists, None) / (None, None) without the route / (None, problem)."""
    import openai

    try:
        return {m.id for m in client.models.list()}, None
    except openai.NotFoundError:
        return None, None
    except openai.APITimeoutError:
        return None, f"no answer to GET /v1/models within the {timeout:g} s timeout"
    except openai.APIConnectionError as err:
        return None, f"cannot connect ({_scrub(err, key_env)})"
    except openai.APIStatusError as err:
        return None, f"GET /v1/models: HTTP {err.status_code}: {_scrub(err.message, key_env)}"


def _probe(client, model: APIModel, timeout: float) -> str | None:
    """One one-token request; None when the model answers, else the problem."""
    import openai

    try:
        if model.api == "chat":
            client.chat.completions.create(model=model.model, max_tokens=1,
                                           messages=[{"role": "user", "content": PROBE_PROMPT}])
        else:
            client.completions.create(model=model.model, prompt=PROBE_PROMPT, max_tokens=1)
        return None
    except openai.NotFoundError as err:
        code = err.code or (err.body.get("code") if isinstance(err.body, dict) else None)
        return f"HTTP 404 {code or 'not found'} on a one-token {model.api} request: {_scrub(err.message, model.api_key_env)}"
    except openai.APITimeoutError:
        return f"no answer to a one-token {model.api} request within the {timeout:g} s timeout"
    except openai.APIConnectionError as err:
        return f"cannot connect ({_scrub(err, model.api_key_env)})"
    except openai.APIStatusError as err:
        return f"HTTP {err.status_code} on a one-token {model.api} request: {_scrub(err.message, model.api_key_env)}"


def _advice(uses: list[Use]) -> str:
    tips = []
    for use in uses:
        if use.role.startswith("published_outputs"):
            tip = "set published_outputs.api_models to models that answer, or to {} to copy the bundle's outputs"
        elif use.member:
            tip = (f"name a substitute pool in params instead of {use.annotator} ({', '.join(SUBSTITUTE_POOLS)}; "
                   "README 'Judges that still answer')")
        else:
            tip = (f"copy the {use.annotator} config folder with a model that answers (or a base_url that serves it) "
                   "into a folder listed in the section's config_dirs, or name another annotator")
        if tip not in tips:
            tips.append(tip)
    return "; ".join(tips)


def check_plan(plan: Plan, timeout: float = DEFAULT_TIMEOUT, offline: bool = False,
               retired: dict[str, Retired] | None = None) -> list[Outcome]:
    """Check everything in ``plan``: local things on disk, retired models from the table, then (unless
    ``offline``) every other API model at its server."""
    retired = retired_models() if retired is None else retired
    out = [Outcome(problem, uses, "bad config", problem, _advice(uses)) for problem, uses in plan.problems.items()]
    out += [Outcome(what, uses, "ok") for what, uses in plan.local.items()]
    asked: dict[tuple[str, str | None], list[APIModel]] = {}
    for model, uses in plan.api.items():
        what = f"model {model.model!r} at {model.endpoint}"
        gone = retired.get(model.model)
        if gone is not None and is_openai(model.endpoint):
            problem = f"retired: OpenAI shut it down on {gone.shutdown} ({gone.source})"
            out.append(Outcome(what, uses, f"retired {gone.shutdown}", problem, _advice(uses)))
        elif model.api_key_env and not os.environ.get(model.api_key_env):
            problem = f"environment variable {model.api_key_env} is empty or unset (keys are read only from the environment)"
            out.append(Outcome(what, uses, "no key", problem, f"export {model.api_key_env}=..."))
        elif offline:
            out.append(Outcome(what, uses, "not asked (--offline)"))
        else:
            asked.setdefault((model.endpoint, model.api_key_env), []).append(model)
    for (endpoint, key_env), models in asked.items():
        client = _client(endpoint, key_env, timeout)
        listed, problem = _listed_models(client, key_env, timeout)
        for model in models:
            uses = plan.api[model]
            what = f"model {model.model!r} at {endpoint}"
            if problem is not None:
                out.append(Outcome(what, uses, "server failed", problem, _advice(uses)))
            elif listed is not None:
                if model.model in listed:
                    out.append(Outcome(what, uses, "listed by GET /v1/models"))
                else:
                    shown = ", ".join(sorted(listed)[:8]) + (", ..." if len(listed) > 8 else "")
                    out.append(Outcome(what, uses, "not served", f"not served here: GET /v1/models lists "
                                       f"{len(listed)} models ({shown})", _advice(uses)))
            else:
                failed = _probe(client, model, timeout)
                out.append(Outcome(what, uses, "answered a one-token request" if failed is None else "no answer",
                                   failed, _advice(uses) if failed else ""))
        client.close()
    return out


# ---------------------------------------------------------------- report


def _uses_text(uses: list[Use]) -> str:
    by_annotator: dict[str, tuple[list[str], list[str]]] = {}
    for use in uses:
        roles, members = by_annotator.setdefault(use.annotator, ([], []))
        if use.role not in roles:
            roles.append(use.role)
        if use.member and use.member not in members:
            members.append(use.member)
    parts = []
    for annotator, (roles, members) in by_annotator.items():
        inner = ", ".join(roles) + (f"; members {', '.join(members)}" if members else "")
        parts.append(f"{annotator} ({inner})")
    return "; ".join(parts)


def error_lines(outcomes: list[Outcome]) -> list[str]:
    """One line per failing model, file or config: what, why, who uses it, what to do."""
    return [f"error: {o.what}: {o.problem}; used by {_uses_text(o.uses)}" + (f"; what to do: {o.advice}" if o.advice else "")
            for o in outcomes if o.problem is not None]


def summary_table(outcomes: list[Outcome]) -> str:
    rows = ["| checked | status | used by |", "|---|---|---|"]
    rows += [f"| {o.what} | {o.status} | {_uses_text(o.uses)} |" for o in outcomes]
    return "\n".join(rows)


def run_check(params: dict, timeout: float = DEFAULT_TIMEOUT, offline: bool = False,
              out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Check ``params`` (loaded); print the table (all good) or one line per failure. 0 = all answer, 1 = not."""
    out, err = out or sys.stdout, err or sys.stderr
    plan = plan_params(params)
    outcomes = check_plan(plan, timeout=timeout, offline=offline)
    where = f"scale {params.get('scale')}" + (f", judges {params['judges']}" if params.get("scale") == "small" else "")
    failed = error_lines(outcomes)
    if failed:
        for line in failed:
            print(line, file=err)
        print(f"afarm check ({where}, {params.get('_path', 'params.yaml')}): {len(failed)} of {len(outcomes)} "
              "checks failed (above)", file=err)
        return 1
    print(summary_table(outcomes), file=out)
    print(f"afarm check ({where}): all {len(outcomes)} checks passed"
          + (" (API models not asked: --offline)" if offline and plan.api else ""), file=out)
    return 0
