"""Sharing results: DVC remotes (local directory and S3), pushed experiments, a shared MLflow server.

Everything talks only to servers this module starts on 127.0.0.1: an S3-compatible
store (moto in server mode; its in-process mock would not intercept s3fs), a bare git
remote in a temp directory, and an ``mlflow server``.  One tiny pipeline (one size,
one kind, one amount, one seed) runs once in ``repo1``; the clones reuse its results.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN, env, make_repo, run

pytestmark = pytest.mark.slow

GRID = {"grid": {"sizes": ["S"], "kinds": ["broad"], "amounts": [300], "seeds": [0]}}
RUN = "S-broad-300-s0"
SFT = f"models/sft/{RUN}"
BUCKET = "imitation-gap"
# Fake credentials for the local moto server only; nothing here reaches a real AWS account.
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
          "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
          "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
TIMES: dict[str, float] = {}


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(key: str, cmd: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    t0 = time.perf_counter()
    r = run(cmd, cwd, **kw)
    TIMES[key] = time.perf_counter() - t0
    return r


def ran_stages(stdout: str) -> set[str]:
    return {line.split("'")[1] for line in stdout.splitlines() if line.startswith("Running stage")}


@pytest.fixture(scope="module")
def s3(monkeypatch_module):
    """A moto S3 server on 127.0.0.1 (free port) with one bucket; boto3 client for the test."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per S3 request otherwise

    for k, v in S3_ENV.items():
        monkeypatch_module.setenv(k, v)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=BUCKET)
    yield {"endpoint": endpoint, "client": client}
    server.stop()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def shared(tmp_path_factory, s3):
    """repo1 runs the tiny pipeline, pushes it (with the run cache) to S3 and main to a bare git remote,
    then runs and pushes the experiment `shared-exp`."""
    tmp = tmp_path_factory.mktemp("sharing")
    origin = tmp / "origin.git"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp)
    repo1 = make_repo(tmp / "repo1", GRID)
    # the README's S3 set-up, committed (no credentials: those come from the environment)
    run(["dvc", "remote", "add", "-d", "s3", f"s3://{BUCKET}/dvc"], repo1)
    run(["dvc", "remote", "modify", "s3", "endpointurl", s3["endpoint"]], repo1)
    run(["dvc", "remote", "modify", "s3", "verify", "true"], repo1)
    r = timed("repro", ["dvc", "repro"], repo1, extra_env=S3_ENV)
    assert "sft@S-broad-300-0" in ran_stages(r.stdout)
    run("git add -A && git commit -qm 'tiny study results'", repo1)
    timed("push", ["dvc", "push", "--run-cache"], repo1, extra_env=S3_ENV)
    run(["git", "remote", "add", "origin", str(origin)], repo1)
    run(["git", "push", "-q", "origin", "main"], repo1)
    baseline = {"model": md5(repo1 / SFT / "model.safetensors"),
                "metrics": json.loads((repo1 / "metrics" / "runs" / f"{RUN}.json").read_text())}
    r = timed("exp_run", ["dvc", "exp", "run", "-n", "shared-exp", "-S", "sft.lr=0.002"], repo1, extra_env=S3_ENV)
    assert {s for s in ran_stages(r.stdout) if s.startswith("sft@")} == {"sft@S-broad-300-0"}
    exp = {"model": md5(repo1 / SFT / "model.safetensors"),
           "metrics": json.loads((repo1 / "metrics" / "runs" / f"{RUN}.json").read_text())}
    run(["dvc", "exp", "push", "--run-cache", "origin", "shared-exp"], repo1, extra_env=S3_ENV)

    def clone(name: str) -> Path:
        dest = tmp / name
        run(["git", "clone", "-q", str(origin), str(dest)], tmp)
        run("git config user.email t@t && git config user.name t", dest)
        return dest

    return {"tmp": tmp, "repo1": repo1, "origin": origin, "clone": clone, "baseline": baseline, "exp": exp,
            "s3": s3}


def test_fresh_clone_pulls_everything_then_nothing_runs(shared):
    repo2 = shared["clone"]("repo2")
    # the botocore checksum settings the README gives for older S3-compatible servers work too
    timed("pull", ["dvc", "pull"], repo2, extra_env=S3_ENV | {"AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
                                                              "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required"})
    assert md5(repo2 / SFT / "model.safetensors") == shared["baseline"]["model"]
    assert (repo2 / "models" / "base" / "S-s0" / "model.safetensors").exists()
    r = run(["dvc", "repro"], repo2, extra_env=S3_ENV)
    assert "Running stage" not in r.stdout, r.stdout
    assert "Data and pipelines are up to date." in run(["dvc", "status"], repo2).stdout
    assert not (repo2 / "mlflow.db").exists(), "a stage ran (it logged to MLflow)"
    shared["repo2"] = repo2


def test_exp_run_pull_allow_missing_reuses_pushed_results(shared):
    repo3 = shared["clone"]("repo3")  # nothing pulled
    r = run(["dvc", "exp", "run", "--pull", "--allow-missing"], repo3, extra_env=S3_ENV)
    assert "Running stage" not in r.stdout, r.stdout
    for stage in ("base@S-0", "sft@S-broad-300-0", "eval-sft@S-broad-300-0", "report"):
        assert f"Stage '{stage}' didn't change, skipping" in r.stdout, r.stdout
    assert not (repo3 / "mlflow.db").exists(), "a stage ran (it logged to MLflow)"
    shared["repo3"] = repo3


def test_run_cache_restores_every_pushed_stage_instead_of_rerunning_it(shared):
    """`dvc push --run-cache` shares finished stages: the same params in another clone are restored, not rerun,
    the model and the eval and report stages too (their git-tracked metrics ride in their cached outputs)."""
    repo3 = shared.get("repo3") or shared["clone"]("repo3")
    r = timed("restore", ["dvc", "exp", "run", "--pull", "-n", "lr-again", "-S", "sft.lr=0.002"], repo3,
              extra_env=S3_ENV)
    TIMES["restore_ran"] = sorted(ran_stages(r.stdout))
    for stage in ("sft@S-broad-300-0", "eval-sft@S-broad-300-0"):
        assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in r.stdout, r.stdout
    # nothing but the report (seconds): its REPORT.md is git-tracked, and DVC keeps no run-cache entry for a stage
    # with such an output, so it runs again on the restored metrics and writes what the experiment wrote
    assert ran_stages(r.stdout) <= {"report"}, r.stdout
    TIMES["restore_hits"] = r.stdout.count("is cached - skipping run")
    assert md5(repo3 / SFT / "model.safetensors") == shared["exp"]["model"] != shared["baseline"]["model"]
    got = json.loads((repo3 / "metrics" / "runs" / f"{RUN}.json").read_text())
    assert got == shared["exp"]["metrics"]
    # how: the metrics file's bytes are also a file of the cached eval output, which `dvc push` sends
    assert md5(repo3 / "metrics" / "runs" / f"{RUN}.json") == md5(repo3 / "eval" / RUN / "metrics.json")
    assert md5(repo3 / "metrics" / "summary.json") == md5(repo3 / "plots" / "summary.json")
    assert (repo3 / "REPORT.md").exists()
    assert "Data and pipelines are up to date." in run(["dvc", "status"], repo3).stdout


def test_experiment_pushed_from_one_clone_is_listed_in_another(shared):
    repo2 = shared.get("repo2") or shared["clone"]("repo2")
    assert "shared-exp" not in run(["dvc", "exp", "list", "--all-commits"], repo2).stdout
    run(["dvc", "exp", "pull", "origin", "shared-exp"], repo2, extra_env=S3_ENV)
    rows = json.loads(run(["dvc", "exp", "show", "--json"], repo2).stdout)
    exps = {rev.get("name"): rev for row in rows for group in (row.get("experiments") or [])
            for rev in group.get("revs", [])}
    assert "shared-exp" in exps, json.dumps(rows)[:2000]
    data = exps["shared-exp"]["data"]
    assert data["params"]["params.yaml"]["data"]["sft"]["lr"] == 0.002
    metrics = data["metrics"][f"metrics/runs/{RUN}.json"]["data"]
    assert metrics["capability"] == shared["exp"]["metrics"]["capability"]
    # and its model came along to this clone's cache: applying it needs no training
    run(["dvc", "exp", "apply", "shared-exp"], repo2)
    assert md5(repo2 / SFT / "model.safetensors") == shared["exp"]["model"]


def test_corrupted_object_in_remote_is_detected(shared):
    client = shared["s3"]["client"]
    h = shared["baseline"]["model"]
    key = f"dvc/files/md5/{h[:2]}/{h[2:]}"
    original = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    client.put_object(Bucket=BUCKET, Key=key, Body=b"not a model" + original[11:])
    try:
        repo4 = shared["clone"]("repo4")
        r = run(["dvc", "pull", SFT], repo4, check=False, extra_env=S3_ENV)
        # `verify = true` on the remote: the download is hashed, the bad object is dropped, pull fails
        assert r.returncode != 0
        assert "Checkout failed" in r.stderr + r.stdout
        assert not (repo4 / SFT / "model.safetensors").exists(), "the corrupted model was checked out"
        assert "not in cache" in run(["dvc", "status", SFT], repo4).stdout
    finally:
        client.put_object(Bucket=BUCKET, Key=key, Body=original)


def test_pull_vs_retrain_seconds(shared, capsys):
    """Not an assert on speed: the measured seconds, for the README and the closing note."""
    assert {"repro", "pull", "exp_run", "restore"} <= set(TIMES)
    with capsys.disabled():
        print(f"\n[sharing] dvc repro (tiny grid, 8 stages): {TIMES['repro']:.1f} s; "
              f"dvc push --run-cache: {TIMES['push']:.1f} s; dvc pull in a fresh clone: {TIMES['pull']:.1f} s")
        print(f"[sharing] dvc exp run -S sft.lr=0.002 (trains): {TIMES['exp_run']:.1f} s; "
              f"same params in another clone (dvc exp run --pull), sft restored from the pushed run cache: "
              f"{TIMES['restore']:.1f} s, restored from the run cache: {TIMES.get('restore_hits')} stage(s), "
              f"stages that still ran: {TIMES.get('restore_ran')}")


# -- the default local remote, without S3 -------------------------------------------------
def test_default_local_remote_fresh_clone_and_push(tmp_path):
    repo = make_repo(tmp_path / "repo", GRID)
    home = tmp_path / "home"
    home.mkdir()
    assert run(["dvc", "config", "core.remote"], repo).stdout.strip() == "local"
    url = run(["dvc", "config", "remote.local.url"], repo, extra_env={"HOME": str(home)}).stdout.strip()
    assert url == str(home / ".cache" / "imitation-gap" / "dvc-remote")  # outside the repo, per user
    assert run(["dvc", "config", "remote.local.verify"], repo).stdout.strip() == "true"
    # data.dvc comes from the bundled remote even though the default remote does not exist yet
    run(["rm", "-rf", "data/inputs", ".dvc/cache"], repo)
    r = run(["dvc", "pull", "data.dvc"], repo, extra_env={"HOME": str(home)})
    assert "No remote provided" not in r.stdout + r.stderr
    assert (repo / "data" / "inputs" / "world_spec.yaml").exists()
    assert not (home / ".cache").exists()
    # the README's way to move the default remote: --local, so the committed config is untouched
    store = tmp_path / "store"
    run(["dvc", "remote", "modify", "--local", "local", "url", str(store)], repo)
    (repo / "notes.txt").write_text("shared\n")
    run(["dvc", "add", "-q", "notes.txt"], repo)
    run(["dvc", "push"], repo, extra_env={"HOME": str(home)})
    h = md5(repo / "notes.txt")
    assert (store / "files" / "md5" / h[:2] / h[2:]).exists()
    assert run(["git", "status", "--porcelain", ".dvc/config"], repo).stdout == ""


# -- a shared MLflow server ---------------------------------------------------------------
def test_stage_logs_to_a_shared_mlflow_server(shared, tmp_path):
    """MLFLOW_TRACKING_URI=http://...: the report's run, figures and model cards arrive on the server."""
    from mlflow.tracking import MlflowClient

    import yaml

    repo = shared.get("repo2")  # pulled (and shared-exp applied) by the tests above
    if repo is None:
        repo = shared["clone"]("repo2")
        run(["dvc", "pull"], repo, extra_env=S3_ENV)
    lr = yaml.safe_load((repo / "params.yaml").read_text())["sft"]["lr"]
    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts")],
        cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, "mlflow server did not start"
                time.sleep(1)
        run(["dvc", "repro", "-s", "-f", "report"], repo, extra_env={"MLFLOW_TRACKING_URI": uri})
        assert not (repo / "mlflow.db").exists(), "the stage logged to the local store, not the server"
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name("imitation-gap")
        assert exp is not None
        runs = client.search_runs([exp.experiment_id], "attributes.run_name = 'report'")
        assert len(runs) == 1
        run_id = runs[0].info.run_id
        assert runs[0].data.tags["dvc_stage"] == "report"
        top = {a.path for a in client.list_artifacts(run_id)}
        assert {"REPORT.md", "plots", "model_cards"} <= top
        assert "plots/capability_vs_amount.png" in {a.path for a in client.list_artifacts(run_id, "plots")}
        cards = {a.path for a in client.list_artifacts(run_id, "model_cards")}
        assert {f"model_cards/{RUN}.json", f"model_cards/{RUN}.md", "model_cards/S-base-s0.json"} <= cards
        card = json.loads(Path(client.download_artifacts(run_id, f"model_cards/{RUN}.json", str(tmp_path)))
                          .read_text())
        assert card["params"]["sft"]["lr"] == lr and card["metrics"]["run"] == RUN
        assert card["data"]["manifest"]["tokens"] >= 300 and card["checkpoint"]["md5"].endswith(".dir")
        # the artifacts live where the server keeps them, not in the clone
        assert list((tmp_path / "artifacts").rglob(f"{RUN}.json"))
    finally:
        server.terminate()
        server.wait(timeout=30)
