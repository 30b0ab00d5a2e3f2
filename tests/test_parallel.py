"""`python -m imitation_gap.runner.parallel` (what `make run` uses) on a small DVC pipeline of scripts.

The pipeline: root -> x1, x2, x3 (independent) -> join.  Each stage's script records when it
started and ended in its output, so the tests can see what ran side by side.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from conftest import run

STAMP = '''
import json, sys, time
from pathlib import Path
name, deps = sys.argv[1], sys.argv[2:]
params = __import__("yaml").safe_load(open("params.yaml"))
for d in deps:
    json.loads(Path(d).read_text())  # an upstream output must be complete
t0 = time.time()
Path(f"started-{name}").touch()  # not an output: tells a test that the command is running
if Path(f"fail-{name}").exists():  # not a dep: removing it does not change the stage
    sys.exit(f"{name}: failing on purpose (fail-{name} exists)")
time.sleep(params["sleep"].get(name, 1.5))
Path("out").mkdir(exist_ok=True)
Path(f"out/{name}").write_text(json.dumps({"start": t0, "end": time.time(), "value": params["value"].get(name, 0)}))
'''


def stage(name: str, deps: list[str]) -> dict:
    return {"cmd": f"python stamp.py {name} {' '.join(deps)}".strip(), "deps": ["stamp.py", *deps],
            "params": [f"value.{name}"], "outs": [f"out/{name}"]}


@pytest.fixture
def dag(tmp_path: Path) -> Path:
    repo = tmp_path / "dag"
    repo.mkdir()
    (repo / "stamp.py").write_text(STAMP)
    names = ["root", "x1", "x2", "x3", "join"]
    (repo / "params.yaml").write_text(yaml.safe_dump({"sleep": {"root": 0.2, "join": 0.2},
                                                      "value": {n: 0 for n in names}}))
    xs = [f"out/x{i}" for i in (1, 2, 3)]
    stages = {"root": stage("root", []), **{f"x{i}": stage(f"x{i}", ["out/root"]) for i in (1, 2, 3)},
              "join": stage("join", xs)}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    run("git init -q -b main && git config user.email t@t && git config user.name t && dvc init -q && "
        "git add -A && git commit -qm init", repo)
    return repo


def parallel(repo: Path, *args: str, check: bool = True):
    # script stages: no Python stage command to start warm (tests/test_warm.py and the pipeline tests do)
    return run([sys.executable, "-m", "imitation_gap.runner.parallel", "--no-warm", *args], repo, check=check)


def stamps(repo: Path) -> dict:
    return {p.name: json.loads(p.read_text()) for p in (repo / "out").iterdir() if not p.name.startswith(".")}


def ran(stderr: str) -> set[str]:
    return {line.split()[1] for line in stderr.splitlines() if line.strip().startswith("ran ")}


def test_independent_stages_run_side_by_side_and_dvc_agrees(dag):
    r = parallel(dag, "-j", "2")
    assert ran(r.stderr) == {"root", "x1", "x2", "x3", "join"}
    t = stamps(dag)
    xs = [t[f"x{i}"] for i in (1, 2, 3)]
    # order: root before every x, every x before join
    assert all(x["start"] >= t["root"]["end"] for x in xs)
    assert t["join"]["start"] >= max(x["end"] for x in xs)
    # two jobs: some pair of the x's overlapped in time, and never three at once
    overlaps = [(a, b) for i, a in enumerate(xs) for b in xs[i + 1:] if a["start"] < b["end"] and b["start"] < a["end"]]
    assert overlaps
    assert not all(x["start"] < min(y["end"] for y in xs) for x in xs)
    # DVC sees the same state as after `dvc repro`: nothing changed, nothing to run
    assert "up to date" in run(["dvc", "status"], dag).stdout
    assert "Running stage" not in run(["dvc", "repro"], dag).stdout
    lock = yaml.safe_load((dag / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"root", "x1", "x2", "x3", "join"}
    # per-stage wall and CPU seconds for make bench
    summary = json.loads((dag / ".dvc" / "tmp" / "repro-logs" / "summary.json").read_text())
    assert summary["jobs"] == 2 and set(summary["stages"]) == {"root", "x1", "x2", "x3", "join"}
    assert all(v["state"] == "ran" and v["cpu_s"] > 0 and v["wall_s"] >= 0.2 for v in summary["stages"].values())
    # a second run has nothing to do
    again = parallel(dag, "-j", "2")
    assert "nothing to run" in again.stderr and not ran(again.stderr)


def test_a_changed_param_reruns_that_stage_and_downstream_only(dag):
    parallel(dag, "-j", "2")
    params = yaml.safe_load((dag / "params.yaml").read_text())
    params["value"]["x2"] = 7
    (dag / "params.yaml").write_text(yaml.safe_dump(params))
    r = parallel(dag, "-j", "2")
    assert ran(r.stderr) == {"x2", "join"}
    assert stamps(dag)["x2"]["value"] == 7
    assert "s left" in r.stderr  # the progress bar's estimate, from the first run's stage times
    # targets: only what `dvc repro x1` would consider (x1 and root are up to date)
    assert "nothing to run" in parallel(dag, "x1").stderr


def test_a_failure_stops_its_downstream_keeps_the_rest_and_says_where_to_look(dag):
    params = yaml.safe_load((dag / "params.yaml").read_text())
    (dag / "fail-x3").touch()
    params["sleep"]["x1"] = params["sleep"]["x2"] = 0.2
    (dag / "params.yaml").write_text(yaml.safe_dump(params))
    r = parallel(dag, "-j", "1", "--keep-going", check=False)
    assert r.returncode == 1
    assert "FAILED  x3" in r.stderr and "failing on purpose" in r.stderr  # the log's tail is shown
    assert "repro-logs" in r.stderr and "run the same command again" in r.stderr
    assert ran(r.stderr) == {"root", "x1", "x2"}  # --keep-going: the x's that do not depend on x3 ran
    assert not (dag / "out" / "join").exists()
    lock = yaml.safe_load((dag / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"root", "x1", "x2"}
    # fixed, the same command resumes: only x3 and join run
    (dag / "fail-x3").unlink()
    assert ran(parallel(dag, "-j", "2").stderr) == {"x3", "join"}


def test_bad_jobs_is_a_clear_error(dag):
    r = parallel(dag, "-j", "0", check=False)
    assert r.returncode == 2 and "--jobs must be at least 1" in r.stderr


def test_sigterm_stops_the_running_stages_and_the_next_run_resumes(dag):
    import signal
    import subprocess
    import time

    from conftest import env

    params = yaml.safe_load((dag / "params.yaml").read_text())
    params["sleep"].update({"x1": 300, "x2": 300, "x3": 0.2})
    (dag / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.Popen([sys.executable, "-m", "imitation_gap.runner.parallel", "--no-warm", "-j", "2"], cwd=dag,
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not all((dag / f"started-{x}").exists() for x in ("x1", "x2")):
        time.sleep(0.2)
    time.sleep(0.5)  # x1 and x2 are sleeping now
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)  # the stages sleep 300 s: this returns only if they were stopped
    assert proc.returncode == 130, err
    assert "interrupted" in err and "resume" in err
    assert not (dag / "out" / "x1").exists() and not (dag / "out" / "join").exists()
    params["sleep"].update({"x1": 0.2, "x2": 0.2})
    (dag / "params.yaml").write_text(yaml.safe_dump(params))
    assert ran(parallel(dag, "-j", "2").stderr) >= {"x1", "x2", "join"}


def test_lock_entries_of_stages_no_longer_defined_are_dropped_and_the_rest_kept(dag):
    """DVC keeps dvc.lock entries of stages that left dvc.yaml (treeverse/dvc#5293); the runner drops them."""
    parallel(dag, "-j", "2")
    written_by_dvc = (dag / "dvc.lock").read_text()
    lock = yaml.safe_load(written_by_dvc)
    kept = lock["stages"]
    lock["stages"] = {**kept, "x4": kept["x3"] | {"cmd": "python stamp.py x4 out/root"}, "old@800": kept["root"]}
    (dag / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    r = parallel(dag, "-j", "2")
    assert "nothing to run" in r.stderr and "dropped 2 entries" in r.stderr and "x4" in r.stderr
    # what is left is byte for byte what `dvc repro` wrote, and DVC sees nothing changed
    assert (dag / "dvc.lock").read_text() == written_by_dvc
    assert "up to date" in run(["dvc", "status"], dag).stdout
    # nothing stale: the file is not touched
    before = (dag / "dvc.lock").stat().st_mtime_ns
    assert "dropped" not in parallel(dag, "-j", "2").stderr
    assert (dag / "dvc.lock").stat().st_mtime_ns == before


def test_time_left_comes_from_stage_costs_not_from_stages_per_second():
    from imitation_gap.runner.parallel import Eta, _fmt_left

    # the committed run took 200 s per pretraining stage and 5 s per eval stage
    ref = {"base@L-0": 200.0, "base@L-1": 200.0, "eval@L-0": 5.0, "eval@L-1": 5.0}
    eta = Eta(reference=ref)
    left, sure = eta.left_s(list(ref), {}, jobs=2)
    assert sure and left == pytest.approx(205.0)
    # this machine turns out twice as slow: the rest is scaled by it; a running stage counts what is left of it
    eta.done("base@L-0", 400.0)
    left, sure = eta.left_s(["eval@L-0", "eval@L-1"], {"base@L-1": 100.0}, jobs=2)
    assert sure and left == pytest.approx((10 + 10 + 300) / 2)
    assert _fmt_left((left, sure)) == "~3 min left"
    # no reference and no history: a family's finished chains stand for its others, a kind for its families;
    # a stage of a kind never seen makes the estimate a lower bound, and it says so
    eta = Eta()
    eta.done("sft@S-broad-800-0", 6.0)
    assert eta.cost("sft@S-broad-800-1") == 6.0 and eta.cost("sft@L-local-16000-2") == 6.0
    left, sure = eta.left_s(["sft@S-broad-800-1", "report"] + [f"sft@M-x-{i}" for i in range(20)], {}, jobs=1)
    assert not sure and left == pytest.approx(126.0) and _fmt_left((left, sure)) == ">= 2 min left"
    # the last run here wins over the reference
    assert Eta(history={"a": 3.0}, reference={"a": 100.0}).cost("a") == 3.0
    assert Eta.load("/nonexistent/summary.json") == {}
