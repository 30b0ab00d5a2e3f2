"""The runner's Ray backend on a real Ray cluster: a head and two worker nodes on 127.0.0.1, no shared filesystem.

Every packet stays on loopback: the cluster, the driver, the S3 server (moto, the DVC remote) and the
git server (``git daemon``) all run inside one network namespace that holds only ``lo``
(``unshare -n``; tests and CI run as root), which this module enters with ``nsenter``.  (Ray registers
nodes under the machine's non-loopback address otherwise, even with ``--node-ip-address 127.0.0.1``.)
Each node is its own ``ray start --block`` process with its own temp and work directories; the
workers see the repository only through the git server and the DVC remote (``--workspace clone``).

One run of the tiny grid (one size, kind, amount and seed: 8 stages) goes through the Ray backend,
and the worker node that runs the sft stage is killed while it runs: Ray runs the stage again on
the other node.  The tests then check the result against the local runner on the same commit, a
second run, and a fresh clone that restores every stage from what the workers pushed.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from conftest import BIN, env, make_repo, run

pytestmark = pytest.mark.slow

GRID = {"grid": {"sizes": ["S"], "kinds": ["broad"], "amounts": [300], "seeds": [0]}}
KILL_STAGE = "sft@S-broad-300-0"
BUCKET = "imitation-gap"
# Fake credentials for the moto server inside the namespace; nothing here reaches a real AWS account.
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent",
          "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
# quick detection of a dead node (Ray's defaults take ~15 s)
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_health_check_period_ms": "1000",
           "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}
S3_PORT, GIT_PORT, RAY_PORT = 9000, 9418, 6380
TIMES: dict[str, float] = {}


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _can_unshare() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nsenter") or not shutil.which("ip"):
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def netns():
    """A network namespace with only `lo` (up), held by a sleeping process; `ns(cmd)` runs a command in it."""
    if not _can_unshare():
        pytest.skip("needs root with unshare/nsenter/ip (the tests and CI run as root)")
    holder = subprocess.Popen(["unshare", "-n", "sh", "-c", "ip link set lo up && echo up && exec sleep 100000"],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert holder.stdout.readline().strip() == "up"
    yield ["nsenter", "-t", str(holder.pid), "-n"]
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()


def _wait_port(ns: list[str], port: int, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1).close()"
    deadline = time.time() + timeout
    while subprocess.run([*ns, sys.executable, "-c", probe], capture_output=True).returncode:
        assert proc.poll() is None, f"{what} exited ({proc.returncode})"
        assert time.time() < deadline, f"{what} did not listen on 127.0.0.1:{port}"
        time.sleep(0.5)


def _start(ns: list[str], cmd: list[str], log: Path, extra_env: dict | None = None) -> subprocess.Popen:
    """A long-running process in the namespace, in its own process group (stopped by group, by its id)."""
    return subprocess.Popen([*ns, *cmd], env=env() | (extra_env or {}), stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group we started, then SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=20)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def cluster(netns, tmp_path_factory):
    """moto (S3), git daemon and a Ray head + two worker nodes, all inside the namespace."""
    tmp = tmp_path_factory.mktemp("ray")
    # Ray's temp dirs hold Unix sockets (paths <= 107 bytes): short ones, not under pytest's long tmp path
    short = Path(tempfile.mkdtemp(prefix="igray-", dir="/tmp"))
    ns = netns
    procs: list[subprocess.Popen] = []
    try:
        moto = _start(ns, [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(S3_PORT)], tmp / "moto.log")
        procs.append(moto)
        git_root = tmp / "git"
        git_root.mkdir()
        run(["git", "init", "-q", "--bare", "-b", "main", str(git_root / "origin.git")], tmp)
        gitd = _start(ns, ["git", "daemon", "--reuseaddr", f"--base-path={git_root}", "--export-all",
                           "--enable=receive-pack", "--listen=127.0.0.1", f"--port={GIT_PORT}", str(git_root)],
                      tmp / "git-daemon.log")
        procs.append(gitd)
        _wait_port(ns, S3_PORT, moto, "moto")
        _wait_port(ns, GIT_PORT, gitd, "git daemon")
        run([*ns, sys.executable, "-c", "import boto3; boto3.client('s3', endpoint_url='http://127.0.0.1:%d')"
             ".create_bucket(Bucket='%s')" % (S3_PORT, BUCKET)], tmp, extra_env=S3_ENV)
        ray = str(BIN / "ray")
        common = ["--block", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
        head = _start(ns, [ray, "start", "--head", "--port", str(RAY_PORT), "--num-cpus", "0",
                           "--include-dashboard=false", "--temp-dir", str(short / "h"), *common],
                      tmp / "head.log", RAY_ENV)
        procs.append(head)
        _wait_port(ns, RAY_PORT, head, "ray head")
        workers = {}
        for w in ("w1", "w2"):
            (tmp / f"{w}-work").mkdir()
            workers[w] = _start(ns, [ray, "start", "--address", f"127.0.0.1:{RAY_PORT}", "--num-cpus", "1",
                                     "--resources", json.dumps({w: 1}), "--temp-dir", str(short / w), *common],
                                tmp / f"{w}.log",
                                RAY_ENV | S3_ENV | {"IMITATION_GAP_RAY_WORKDIR": str(tmp / f"{w}-work")})
            procs.append(workers[w])
        probe = ("import json, ray, time; ray.init(address='127.0.0.1:%d', logging_level='ERROR')\n"
                 "for _ in range(120):\n"
                 "    nodes = [n for n in ray.nodes() if n['Alive']]\n"
                 "    if len(nodes) == 3: break\n"
                 "    time.sleep(0.5)\n"
                 "print(json.dumps([[n['NodeManagerAddress'], n['Resources']] for n in nodes]))") % RAY_PORT
        nodes = json.loads(run([*ns, sys.executable, "-c", probe], tmp).stdout.strip().splitlines()[-1])
        yield {"ns": ns, "tmp": tmp, "nodes": nodes, "workers": workers, "git": f"git://127.0.0.1:{GIT_PORT}/origin.git",
               "s3": f"http://127.0.0.1:{S3_PORT}"}
    finally:
        for p in reversed(procs):
            _stop(p)
        shutil.rmtree(short, ignore_errors=True)



def ran_stages(stdout: str) -> set[str]:
    return {line.split("'")[1] for line in stdout.splitlines() if line.startswith("Running stage")}


def test_every_node_is_on_loopback(cluster):
    nodes = cluster["nodes"]
    assert len(nodes) == 3
    assert {k for _, res in nodes for k in res if k in ("w1", "w2")} == {"w1", "w2"}
    for addr, _ in nodes:
        assert ipaddress.ip_address(addr) in ipaddress.ip_network("127.0.0.0/8"), nodes


@pytest.fixture(scope="module")
def ray_run(cluster):
    """The driver's repo (S3 remote, git remote in the namespace), its commit pushed; the tiny grid through the
    Ray backend with the node that runs the sft stage killed mid-stage."""
    ns, tmp = cluster["ns"], cluster["tmp"]
    repo = make_repo(tmp / "driver", GRID)
    run(["dvc", "remote", "add", "-d", "s3", f"s3://{BUCKET}/dvc"], repo)
    run(["dvc", "remote", "modify", "s3", "endpointurl", cluster["s3"]], repo)
    run("git add -A && git commit -qm 's3 remote'", repo)
    run(["git", "remote", "add", "origin", cluster["git"]], repo)
    run([*ns, "git", "push", "-q", "origin", "main"], repo)
    commit = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    # the local runner on the same commit, beside the Ray run (the cluster spends much of its time waiting);
    # IG_RAY_SERIAL=1 runs it after, to time each alone
    local = tmp / "local"
    run(["git", "clone", "-q", str(repo), str(local)], tmp)
    run(["dvc", "pull", "-q", "data.dvc"], local)
    serial = os.environ.get("IG_RAY_SERIAL") == "1"
    local_cmd = [sys.executable, "-m", "imitation_gap.runner.parallel", "-j", "2"]
    t_local = time.time()
    local_proc = None if serial else subprocess.Popen(local_cmd, cwd=local, env=env(), stdout=subprocess.PIPE,
                                                      stderr=subprocess.STDOUT, text=True)
    cmd = [*ns, sys.executable, "-m", "imitation_gap.runner.parallel", "--backend", "ray", "--address",
           f"127.0.0.1:{RAY_PORT}", "--workspace", "clone"]
    t0 = time.time()
    driver = subprocess.Popen(cmd, cwd=repo, env=env() | S3_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    killed = None
    kill = os.environ.get("IG_RAY_KILL", "1") != "0"  # IG_RAY_KILL=0: no kill (to time the backend alone)
    deadline = time.time() + 600
    while driver.poll() is None and time.time() < deadline:
        if killed is None and kill:
            for w in ("w1", "w2"):
                if (tmp / f"{w}-work" / "started" / KILL_STAGE).exists():
                    time.sleep(1.5)  # the stage is being checked out, pulled or trained on that node now
                    os.killpg(cluster["workers"][w].pid, signal.SIGKILL)  # the whole node: raylet, workers, stage
                    cluster["workers"][w].wait()
                    killed = w
                    break
        time.sleep(0.2)
    out, err = driver.communicate(timeout=max(1, deadline - time.time()))
    TIMES["ray_run"] = time.time() - t0
    if local_proc is None:
        t_local = time.time()
        local_proc = subprocess.Popen(local_cmd, cwd=local, env=env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
    local_out = local_proc.communicate(timeout=600)[0]
    assert local_proc.returncode == 0, local_out[-6000:]
    TIMES["local_run"] = time.time() - t_local
    assert driver.returncode == 0, f"STDOUT:\n{out[-3000:]}\nSTDERR:\n{err[-6000:]}"
    assert killed or not kill, "the sft stage never started on a worker node"
    survivor = {"w1": "w2", "w2": "w1", None: None}[killed]
    return {"repo": repo, "commit": commit, "stderr": err, "killed": killed, "survivor": survivor, "local": local,
            "serial": serial}


def test_ray_run_survives_a_lost_node_and_dvc_is_clean(cluster, ray_run):
    repo = ray_run["repo"]
    assert "Data and pipelines are up to date." in run(["dvc", "status"], repo).stdout
    summary = json.loads((repo / ".dvc" / "tmp" / "repro-logs" / "summary.json").read_text())
    assert summary["backend"] == "ray" and not summary["not_run"]
    stages = summary["stages"]
    assert len(stages) == 8 and all(s["state"] == "ran" for s in stages.values()), stages
    # the killed stage ran to its end on the surviving node, and was recorded here from the run cache
    if ray_run["killed"]:
        survivor_started = cluster["tmp"] / f"{ray_run['survivor']}-work" / "started" / KILL_STAGE
        assert survivor_started.exists()
        assert stages[KILL_STAGE]["node"] == json.loads(survivor_started.read_text())["node"]
    for name in set(stages) - {"report"}:
        log = (repo / ".dvc" / "tmp" / "repro-logs" / f"{name}.log").read_text()
        assert f"Stage '{name}' is cached - skipping run" in log.split("recorded here from the run cache")[-1], log
    # the report (git-tracked REPORT.md: no run-cache entry a worker could send back) ran here, on the driver
    log = (repo / ".dvc" / "tmp" / "repro-logs" / "report.log").read_text()
    assert "Running stage 'report'" in log and "--- on node" not in log, log
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert set(stages) <= set(lock)


def test_ray_results_equal_the_local_runner_on_the_same_commit(ray_run):
    local = ray_run["local"]
    ray_lock = yaml.safe_load((ray_run["repo"] / "dvc.lock").read_text())["stages"]
    local_lock = yaml.safe_load((local / "dvc.lock").read_text())["stages"]
    for name in json.loads((ray_run["repo"] / ".dvc/tmp/repro-logs/summary.json").read_text())["stages"]:
        assert ray_lock[name] == local_lock[name], name  # every dep, param and output hash
    for f in ("models/sft/S-broad-300-s0/model.safetensors", "models/base/S-s0/model.safetensors",
              "metrics/runs/S-broad-300-s0.json", "metrics/summary.json", "REPORT.md"):
        assert md5(ray_run["repo"] / f) == md5(local / f), f


def test_second_ray_run_does_nothing(cluster, ray_run):
    r = run([*cluster["ns"], sys.executable, "-m", "imitation_gap.runner.parallel", "--backend", "ray", "--address",
             f"127.0.0.1:{RAY_PORT}", "--workspace", "clone"], ray_run["repo"], extra_env=S3_ENV)
    assert "nothing to run" in r.stderr


def test_fresh_clone_restores_every_stage_from_what_the_workers_pushed(cluster, ray_run, tmp_path):
    """At the commit the driver ran (it holds no dvc.lock: no record of any result, only the pushed run cache),
    `dvc exp run --pull --allow-missing` restores every stage from the run cache and objects the workers pushed,
    eval included. The report alone runs again (seconds): its REPORT.md is git-tracked (cache: false), and DVC keeps
    no run-cache entry for such a stage; it writes the same bytes."""
    ns = cluster["ns"]
    fresh = tmp_path / "fresh"
    run([*ns, "git", "clone", "-q", cluster["git"], str(fresh)], tmp_path)
    run("git config user.email t@t && git config user.name t", fresh)
    assert not (fresh / "dvc.lock").exists()
    t0 = time.time()
    r = run([*ns, "dvc", "exp", "run", "--pull", "--allow-missing"], fresh, extra_env=S3_ENV)
    TIMES["restore"] = time.time() - t0
    assert ran_stages(r.stdout) == {"report"}, r.stdout
    stages = json.loads((ray_run["repo"] / ".dvc/tmp/repro-logs/summary.json").read_text())["stages"]
    for name in set(stages) - {"report"}:
        assert f"Stage '{name}' is cached - skipping run" in r.stdout, (name, r.stdout)
    TIMES["restore_hits"] = r.stdout.count("is cached - skipping run")
    assert "Data and pipelines are up to date." in run(["dvc", "status"], fresh).stdout
    assert md5(fresh / "REPORT.md") == md5(ray_run["repo"] / "REPORT.md")
    assert md5(fresh / "metrics" / "summary.json") == md5(ray_run["repo"] / "metrics" / "summary.json")


def test_ray_timings(ray_run):
    """Not an assert on speed: the seconds, for docs/cluster.md and the closing note (`pytest -rA` or `-s` shows
    them)."""
    print(f"[ray] tiny grid (8 stages) through Ray, 2 worker nodes x 1 CPU, "
          f"{'one node killed mid-sft' if ray_run['killed'] else 'no node killed'}: "
          f"{TIMES.get('ray_run', 0):.1f} s; local runner -j 2 (warm, "
          f"{'after it' if ray_run['serial'] else 'beside it'}): {TIMES.get('local_run', 0):.1f} s; "
          f"fresh clone, every stage restored from the run cache ({TIMES.get('restore_hits')} hits): "
          f"{TIMES.get('restore', 0):.1f} s")


def test_shared_workspace_runs_each_stage_on_a_worker_node(cluster, tmp_path):
    """--workspace shared (a SLURM cluster's shared filesystem; here the nodes share this machine's disk): the tasks
    run `dvc repro --single-item` in the driver's repository itself."""
    repo = tmp_path / "dag"
    repo.mkdir()
    (repo / "stamp.py").write_text("import os, sys\nfrom pathlib import Path\nPath('out').mkdir(exist_ok=True)\n"
                                   "Path('out', sys.argv[1]).write_text(os.environ.get('RAY_NODE_ID', '?'))\n")
    stages = {"a": {"cmd": "python stamp.py a", "deps": ["stamp.py"], "outs": ["out/a"]},
              "b": {"cmd": "python stamp.py b", "deps": ["stamp.py"], "outs": ["out/b"]},
              "c": {"cmd": "python stamp.py c", "deps": ["stamp.py", "out/a", "out/b"], "outs": ["out/c"]}}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    (repo / "params.yaml").write_text("{}\n")
    run("git init -q -b main && git config user.email t@t && git config user.name t && dvc init -q && "
        "git add -A && git commit -qm init", repo)
    run([*cluster["ns"], sys.executable, "-m", "imitation_gap.runner.parallel", "--backend", "ray", "--address",
         f"127.0.0.1:{RAY_PORT}", "--workspace", "shared"], repo)
    summary = json.loads((repo / ".dvc" / "tmp" / "repro-logs" / "summary.json").read_text())
    assert set(summary["stages"]) == {"a", "b", "c"} and all(s["node"] for s in summary["stages"].values())
    assert "Data and pipelines are up to date." in run(["dvc", "status"], repo).stdout
