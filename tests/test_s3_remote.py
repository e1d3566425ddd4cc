"""A DVC remote on an S3-compatible object store (``dvc[s3]``), against a real local S3 server.

moto's server mode serves the S3 HTTP API on 127.0.0.1 (a random port) from this process.
One clone of the reduced run pushes to it; a fresh ``git clone`` pulls and has nothing to
recompute (neither ``dvc status`` nor ``snakemake -n``). A second test shows the team setup
of docs/cluster.md: two clones sharing one cache folder (``dvc cache dir``), the second one
checks out without downloading anything.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline_helpers import built_workspace, clone_workspace, run, sh

pytestmark = pytest.mark.slow

BUCKET = "afarm-team"
# moto accepts any credentials; they are passed through the environment, never stored in .dvc/config
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint():
    moto_server = pytest.importorskip("moto.server", reason="pip install 'moto[server]' (test extras)")
    pytest.importorskip("dvc_s3", reason="pip install dvc-s3 (test extras)")
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=url, **_boto_creds()).create_bucket(Bucket=BUCKET)
    yield url
    server.stop()


def _boto_creds() -> dict:
    return {"aws_access_key_id": AWS["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": AWS["AWS_SECRET_ACCESS_KEY"], "region_name": AWS["AWS_DEFAULT_REGION"]}


def _bucket_keys(url: str) -> list[str]:
    import boto3

    pages = boto3.client("s3", endpoint_url=url, **_boto_creds()).get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def _cache_files(work: Path) -> list[str]:
    root = work / ".dvc" / "cache" / "files" / "md5"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_push_to_s3_and_pull_into_a_fresh_clone(repo, shared, tmp_path, tmp_path_factory, s3_endpoint):
    work = clone_workspace(built_workspace(repo, shared, tmp_path_factory), tmp_path / "work")
    sh(f"dvc remote add -d s3 s3://{BUCKET}/afarm && dvc remote modify s3 endpointurl {s3_endpoint}", work)
    sh("git add .dvc/config && git commit -qm 's3 remote'", work)
    assert "AWS" not in (work / ".dvc" / "config").read_text() and "testing" not in (work / ".dvc" / "config").read_text()

    sh("dvc push -q", work, **AWS)
    pushed = {k.removeprefix("afarm/files/md5/") for k in _bucket_keys(s3_endpoint)}
    assert len(pushed) > 10 and pushed <= set(_cache_files(work))  # real objects, under the remote's prefix
    assert "in sync" in sh("dvc status -c", work, **AWS)

    clone = tmp_path / "clone"
    sh(f"git clone -q {work} {clone}", tmp_path)
    sh("dvc pull -q", clone, **AWS)
    assert "up to date" in sh("dvc status", clone)
    sh("snakemake --cores 2 --touch --quiet", clone)
    assert "Nothing to be done" in sh("snakemake --cores 2 -n", clone)
    for name in ("results/leaderboard_sim.csv", "results/leaderboard_human.png", "results/REPORT.md", "models/sft/model.safetensors"):
        assert (clone / name).read_bytes() == (work / name).read_bytes(), name


def test_team_shared_cache_dir_needs_no_download(repo, shared, tmp_path, tmp_path_factory):
    """Two clones on one machine (or one NFS) share a cache: the second checks out, no pull."""
    work = clone_workspace(built_workspace(repo, shared, tmp_path_factory), tmp_path / "work")
    team_cache = tmp_path / "team-cache"
    sh(f"dvc cache dir {team_cache} && dvc config cache.shared group && dvc config cache.type symlink,hardlink,copy", work)
    assert run("dvc remote list", work).stdout.strip() == ""  # no remote at all: nothing below can be downloaded
    # move this clone's objects into the shared cache (what `dvc cache migrate`-style setups do once)
    sh("dvc commit -f -q && dvc checkout -q --relink", work)
    assert len(_cache_files_in(team_cache)) >= len(_cache_files(work)) > 10
    sh("git add .dvc/config && git commit -qm 'team cache'", work)

    other = tmp_path / "other"
    sh(f"git clone -q {work} {other}", tmp_path)
    assert f"{team_cache}" in sh("dvc cache dir", other)
    assert run("dvc remote list", other).stdout.strip() == ""
    sh("dvc checkout -q", other)  # from the shared cache: no remote is configured
    assert "up to date" in sh("dvc status", other)
    target = other / "models" / "sft" / "model.safetensors"
    assert target.read_bytes() == (work / "models" / "sft" / "model.safetensors").read_bytes()
    assert target.is_symlink() and str(team_cache) in os.path.realpath(target)  # linked, not copied


def _cache_files_in(cache: Path) -> list[Path]:
    root = cache / "files" / "md5"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []
