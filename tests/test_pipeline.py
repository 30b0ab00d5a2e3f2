"""End to end: `make run`'s runner, `dvc repro` and `dvc exp run` on tiny params in a temp git repo."""

from __future__ import annotations

import json
import sqlite3
import sys
import time

import pytest
import yaml

from conftest import make_repo, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repro(tmp_path_factory):
    """The whole tiny pipeline through `make run`'s runner (one job: the suite's other worker has the other core;
    tests/test_parallel.py runs it with two)."""
    repo = make_repo(tmp_path_factory.mktemp("e2e") / "repo")
    r = run([sys.executable, "-m", "imitation_gap.runner.parallel", "--jobs", "1"], repo)
    return repo, r.stderr


def test_repro_writes_every_run_summary_and_report(repro):
    repo, _ = repro
    runs = sorted(p.stem for p in (repo / "metrics" / "runs").glob("*.json"))
    assert runs == sorted(["teacher", "S-base-s0", "M-base-s0", "S-broad-300-s0", "S-local-300-s0",
                           "M-broad-300-s0", "M-local-300-s0"])
    m = json.loads((repo / "metrics" / "runs" / "M-broad-300-s0.json").read_text())
    for t in ("qa", "mc", "skill"):
        assert 0.0 <= m["capability"][t] <= 1.0
    for r in ("nonexpert", "expert"):
        pref = m["preference"][r]
        assert pref["win"] + pref["tie"] + pref["loss"] + pref["unjudged"] == m["n"]["pref"]
    teacher = json.loads((repo / "metrics" / "runs" / "teacher.json").read_text())
    # the teacher knows every fact: its QA and MC through lm-eval's API backend are near perfect
    assert teacher["capability"]["qa"] >= 0.9 and teacher["capability"]["mc"] >= 0.9
    assert teacher["capability"]["skill"] >= 0.9
    summary = json.loads((repo / "metrics" / "summary.json").read_text())
    assert set(summary["findings"]) >= {"F1", "F2", "F3", "F4", "F5"}
    report = (repo / "REPORT.md").read_text()
    assert "## Findings" in report and "M+local@300" in report
    assert (repo / "plots" / "capability_vs_amount.png").stat().st_size > 1000
    # what raters reward: the rates per kind of answer, in the report and as a figure
    assert "Win-or-tie rate against the teacher by kind of answer" in report
    assert (repo / "plots" / "rater_rewards.png").stat().st_size > 1000


def test_models_are_safetensors_and_imitation_data_is_clean(repro):
    repo, _ = repro
    sft = repo / "models" / "sft" / "S-broad-300-s0"
    assert (sft / "model.safetensors").exists() and not list(sft.glob("*.bin"))
    manifest = json.loads((repo / "data" / "imitation" / "manifest.json").read_text())
    world = json.loads((repo / "data" / "raw" / "world.json").read_text())
    b_names = {p["name"] for p in world["people"] if p["group"] == "B"}
    for kind in ("broad", "local"):
        assert manifest["kinds"][kind]["amounts"]["300"]["tokens"] >= 300
        text = (repo / "data" / "imitation" / kind / "300.jsonl").read_text()
        assert not any(n in text for n in b_names), "a held-out person leaked into imitation data"
    assert manifest["calls"]["failures"] == 0


def test_second_repro_does_nothing_and_status_is_clean(repro):
    """What the runner leaves is what `dvc repro` would: nothing to run, and the same models."""
    repo, _ = repro
    r = run(["dvc", "repro"], repo)
    assert "Running stage" not in r.stdout
    st = run(["dvc", "status"], repo)
    assert "changed" not in st.stdout and "modified" not in st.stdout


def test_mlflow_has_one_run_per_stage_execution(repro):
    repo, stderr = repro
    executed = sum(line.strip().startswith("ran ") for line in stderr.splitlines())
    assert executed == 16  # fetch, imitate-dataset, 2 base, 4 sft, 7 evals, report
    con = sqlite3.connect(repo / "mlflow.db")
    n = con.execute("select count(*) from runs").fetchone()[0]
    tags = dict(con.execute("select key, value from tags where key in ('git_commit', 'stage') limit 2").fetchall())
    con.close()
    assert n == executed
    assert len(tags.get("git_commit", "")) == 40


def test_a_cell_run_alone_and_serially_gives_the_same_model_and_metrics(repro):
    """Stages that ran in the runner, forked from its warm server, computed what a cold `dvc repro` of that
    stage alone computes."""
    repo, _ = repro
    model = repo / "models" / "sft" / "S-local-300-s0" / "model.safetensors"
    metrics = repo / "metrics" / "runs" / "S-local-300-s0.json"

    def outs() -> dict:  # the hashes DVC recorded for the stages' outputs (directories included)
        lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
        return {s: [o["md5"] for o in lock[s]["outs"]] for s in ("fetch", "sft@S-local-300-0")}

    before = (model.read_bytes(), metrics.read_text(), outs())
    run(["dvc", "repro", "--force", "--single-item", "fetch", "sft@S-local-300-0", "eval-sft@S-local-300-0"], repo,
        extra_env={"IMITATION_GAP_WARM": ""})  # cold: each command imports its libraries itself
    assert (model.read_bytes(), metrics.read_text(), outs()) == before
    # no timing in an output: re-running fetch or a cell leaves everything downstream up to date
    assert "up to date" in run(["dvc", "status"], repo).stdout


def test_exp_run_new_amount_runs_only_new_cells(repro):
    repo, _ = repro
    run("git add -A && git commit -qm 'baseline results'", repo)
    # (one size: the new amount is two imitation models, broad and local, and their evals)
    r = run(["dvc", "exp", "run", "-n", "more-data", "-S", "grid.amounts=[300,600]", "-S", "grid.sizes=[S]"], repo)
    ran = {line.split("'")[1] for line in r.stdout.splitlines() if line.startswith("Running stage")}
    # the new amount's cells, plus the stages that read the whole grid
    assert {s for s in ran if s.startswith("sft@")} == {f"sft@S-{k}-600-0" for k in ("broad", "local")}
    assert not any(s.startswith(("base@", "eval-base@", "eval-teacher", "fetch")) for s in ran)
    flat = run(["dvc", "exp", "show", "--json"], repo).stdout
    assert "more-data" in flat and "S-local-600-s0" in flat


@pytest.fixture()
def warm_server():
    """A warm server (imitation_gap.runner.warm), as docs/runner.md starts one for `dvc exp run`; yields (env, its log)."""
    from conftest import env
    from imitation_gap.runner import warm

    with warm.started(env=env()) as srv:
        assert srv.socket, srv.log.read_text()
        yield srv.env(), srv.log, srv.proc


def test_queue_then_metrics_and_plots_diff(repro, warm_server):
    """The README's queue workflow: queue an experiment, start a worker, compare it (stage commands warm)."""
    repo, _ = repro
    warm_env, warm_log, warm_proc = warm_server
    # (one size, one amount: the new chain is one base model and two imitation models; an earlier
    # test left `grid.amounts=[300,600]` in the workspace)
    run(["dvc", "exp", "run", "--queue", "-n", "two-seeds", "-S", "grid.seeds=[0,1]", "-S", "grid.sizes=[S]",
         "-S", "grid.amounts=[300]"], repo)
    run(["dvc", "queue", "start", "-j", "1"], repo, extra_env=warm_env)
    deadline = time.time() + 900
    status = ""
    while time.time() < deadline:
        status = run(["dvc", "queue", "status"], repo).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    logs = run(["dvc", "queue", "logs", "two-seeds"], repo, check=False).stdout
    assert "Success" in status, status + logs
    # a new seed is a new replicated chain: its base models, imitation models and evals, and the report; nothing else
    ran = {line.split("'")[1] for line in logs.splitlines() if line.startswith("Running stage")}
    assert ran == {"base@S-1", "eval-base@S-1", "sft@S-broad-300-1", "sft@S-local-300-1", "eval-sft@S-broad-300-1",
                   "eval-sft@S-local-300-1", "report"}, logs
    # the queued copy's stage commands (2 sft, 2 eval-sft, report) ran in children of the warm server
    warm_proc.terminate()
    warm_proc.wait(timeout=60)
    served = int(warm_log.read_text().split("served ")[1].split()[0])
    assert served >= 5, warm_log.read_text()
    shown = run(["dvc", "exp", "show", "--json"], repo).stdout
    assert "two-seeds" in shown and "S-broad-300-s1" in shown
    # the queued copy logged to the parent repo's MLflow store, tagged with its experiment name
    con = sqlite3.connect(repo / "mlflow.db")
    tagged = con.execute("select count(*) from tags where key = 'dvc_exp_name' and value = 'two-seeds'").fetchone()[0]
    con.close()
    assert tagged > 0
    # compare it with the baseline
    diff = json.loads(run(["dvc", "exp", "diff", "HEAD", "two-seeds", "--json"], repo).stdout)
    assert "metrics/summary.json" in json.dumps(diff)
    mdiff = run(["dvc", "metrics", "diff", "HEAD", "two-seeds", "--json"], repo)
    assert "metrics/runs/S-broad-300-s1.json" in mdiff.stdout
    out = repo / "diff-plots"
    run(["dvc", "plots", "diff", "HEAD", "two-seeds", "-o", str(out)], repo)
    assert (out / "index.html").exists()


def test_mlflow_ui_serves_the_store(repro):
    """The README's `mlflow ui` command on the pipeline's store lists the stage runs."""
    import socket
    import subprocess
    import urllib.request

    from conftest import BIN, env

    repo, _ = repro
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(BIN / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{repo / 'mlflow.db'}",
                             "--host", "127.0.0.1", "--port", str(port)], cwd=repo, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        body = None
        deadline = time.time() + 90
        while time.time() < deadline and body is None:
            try:
                base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
                exp = json.loads(urllib.request.urlopen(
                    f"{base}/experiments/get-by-name?experiment_name=imitation-gap", timeout=5).read())
                req = urllib.request.Request(
                    f"{base}/runs/search", method="POST",
                    data=json.dumps({"experiment_ids": [exp["experiment"]["experiment_id"]],
                                     "max_results": 1000}).encode(),
                    headers={"Content-Type": "application/json"})
                body = json.loads(urllib.request.urlopen(req, timeout=5).read())
            except OSError:
                time.sleep(1)
        assert body is not None, "mlflow ui did not answer"
        names = {r["info"]["run_name"] for r in body.get("runs", [])}
        assert {"fetch", "imitate-dataset", "report", "eval@teacher"} <= names
    finally:
        proc.terminate()
        proc.wait(timeout=30)
