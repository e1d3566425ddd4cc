"""API keys come only from the environment and never end up on disk.

The reduced DAG's annotation stages of the simulated world are rerun through Snakemake with an OpenAI-backend
judge pointed at a loopback fake OpenAI server (tests/fake_openai_server.py), with a recognisable key in
``OPENAI_API_KEY``. Only they and what reads them rerun (``--forcerun`` them, modification times as the only
other trigger): the new annotation cache path would otherwise retrain both worlds (``paths`` is a params
section of the preference-data stages), minutes of work that never touch the key. The first attempt hits a 401
whose error message echoes the key (as OpenAI's does); the second succeeds; then ``dvc commit``, ``dvc push``
and a git commit. The key must have reached the server, and must appear in no output, log, lock file,
annotation cache, Snakemake metadata, DVC metadata or remote, git object, nor in anything the commands
printed.
"""

from __future__ import annotations

import secrets
import zlib
from pathlib import Path

import pytest
import yaml

from afarm.dag import STAGES
from fake_openai_server import FakeOpenAIServer, TemplateJudge, bundle_templates
from pipeline_helpers import built_workspace, clone_workspace, run, sh

pytestmark = pytest.mark.slow

# Made at run time: the repository (this file included) is copied into the workspace under test.
KEY = "sk-afarm-" + secrets.token_hex(16)
SIM_ANNOTATION = sorted(s.name for s in STAGES if s.module == "annotate" and s.args.get("preference_set") == "sim")
JUDGE = """backend: openai
settings:
  prompt_template: "{{shared_data}}/alpaca_eval/src/alpaca_eval/evaluators_configs/alpaca_farm_greedy_gpt4/chatml_b5_without_inputs.txt"
  model: gpt-4-0314
  base_url: {url}
  api_key_env: OPENAI_API_KEY
  batch_size: 5
  max_tokens: 250
  temperature: 0
  parser: regex
  parser_kwargs:
    outputs_to_match:
      1: '(?:^|\\n) ?Output \\(a\\)'
      2: '(?:^|\\n) ?Output \\(b\\)'
  max_retries: 1
  backoff_base: 0.01
  timeout: 30
"""


def _files_containing(root: Path, needle: bytes) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            variants = [data]
            if path.parent.parent.name == "objects" and len(path.parent.name) == 2:  # loose git objects are zlib
                try:
                    variants.append(zlib.decompress(data))
                except zlib.error:
                    pass
            if any(needle in v for v in variants):
                hits.append(str(path))
    return hits


def test_api_key_is_never_written_anywhere(repo, shared, tmp_path, tmp_path_factory):
    work = clone_workspace(built_workspace(repo, shared, tmp_path_factory), tmp_path / "work")
    judges = tmp_path / "judges" / "fake_gpt4"
    cache = tmp_path / "annotation-cache"
    remote = tmp_path / "remote"
    printed = []
    with FakeOpenAIServer(TemplateJudge(bundle_templates(shared))) as server:
        judges.mkdir(parents=True)
        (judges / "config.yaml").write_text(JUDGE.format(url=server.url))
        params = yaml.safe_load((work / "params.yaml").read_text())
        params["annotate"]["annotators"]["sim"] = {"tiny": "fake_gpt4", "paper": "alpaca_farm_greedy_gpt4"}
        params["annotate"]["config_dirs"] = [str(judges.parent)]
        params["paths"]["cache_dir"] = str(cache)
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

        rerun = "--rerun-triggers mtime --forcerun " + " ".join(SIM_ANNOTATION)
        server.faults.extend(["401"] * 3)  # every annotation job's first call: "Incorrect API key provided: <key>"
        failed = run(f"snakemake --cores 1 --keep-going {rerun}", work, check=False, OPENAI_API_KEY=KEY)
        printed += [failed.stdout, failed.stderr]
        assert failed.returncode != 0 and "HTTP 401" in failed.stdout + failed.stderr

        done = run("snakemake --cores 2 --rerun-triggers mtime", work, OPENAI_API_KEY=KEY)  # the failed jobs and what reads them
        printed += [done.stdout, done.stderr]
        assert server.ok_calls >= 5  # batches of 5 answered (some already in the first run, kept by the cache)
        assert all(h.get("authorization") == f"Bearer {KEY}" for h in server.headers)  # the key was used
        for step in ("dvc commit -f", f"dvc remote add -d backup {remote}", "dvc push", "git add -A", "git commit -qm judged"):
            result = run(step, work, OPENAI_API_KEY=KEY)
            printed += [result.stdout, result.stderr]

    annotations = yaml.safe_load((work / "results" / "annotations" / "sim" / "sft.json").read_text())
    assert {a["annotator"] for a in annotations} == {"fake_gpt4"} and len(annotations) == 24
    needle = KEY.encode()
    leaks = _files_containing(work, needle) + _files_containing(cache, needle) + _files_containing(remote, needle)
    assert leaks == []
    assert not any(KEY in text for text in printed)
    assert (cache / "annotations.sqlite").exists() and (work / "dvc.lock").exists()
    assert list((work / ".snakemake" / "log").iterdir())
