"""The runner's Ray backend: each ready stage a Ray task with the GPUs and CPUs it declares.

``python -m imitation_gap.runner.parallel --backend ray [--address HOST:PORT] [--workspace shared|clone]``
plans as the local runner does (what changed, what waits for what) and hands each ready stage to
Ray, which places it on any node with the resources of :mod:`imitation_gap.runner.resources`
(``num_gpus``: Ray sets the task's ``CUDA_VISIBLE_DEVICES``).  docs/cluster.md has the set-ups.

Two workspaces:

* ``shared`` (a cluster whose nodes mount the repository at the same path, the usual SLURM set-up):
  the task runs ``dvc repro --single-item <stage>`` in the driver's repository; DVC's own locks
  (files under ``.dvc/tmp``) order the writers of ``dvc.lock``, as with the local runner.
* ``clone`` (no shared filesystem): the task checks out the driver's commit in a scratch clone on
  its node (one per concurrent task, under ``$IMITATION_GAP_RAY_WORKDIR``, default
  ``<tmp>/imitation-gap-ray``; the DVC cache beside them is shared by the node's clones), lays the
  driver's uncommitted files over it (``params.yaml`` edits, ``dvc.lock`` with the stages recorded so
  far, git-tracked metrics), runs ``dvc repro --single-item --pull <stage>`` (its deps come from the
  DVC remote; a stage anyone pushed is restored from the run cache, not run), and pushes the stage's
  outputs and run-cache entry (:mod:`imitation_gap.runner.remote`).  The driver then fetches that
  entry and restores the stage from it with ``dvc repro --single-item``: its ``dvc.lock`` and
  workspace are what a local run gives.  The commit must be on ``--git-remote``; the DVC remote must
  be one every node reaches (S3, ...), with its credentials in each node's environment.

A worker that dies mid-stage loses nothing: Ray runs the task again on another node (``max_retries``),
a stage's entry is pushed only once all its objects are, and the driver records a stage only from a
task that finished.  Stage commands run cold in a clone (the warm server of ``make run`` serves one
checkout's code); with a shared filesystem they start warm where ``$IMITATION_GAP_WARM`` names a
server on the node.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from .backends import Job, LocalBackend, dvc_cmd, log_path
from .resources import Needs

# the driver's variables a stage also needs on the worker (never secrets: those live on the nodes)
PASSENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "MLFLOW_TRACKING_URI", "TOKENIZERS_PARALLELISM",
           "DVC_NO_ANALYTICS")
MAX_RETRIES = 3  # Ray's re-runs of a task whose worker or node died (system failures only)


class RayRunError(Exception):
    pass


def _git(*args: str, cwd: str | Path | None = None, check: bool = True) -> str:
    r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if check and r.returncode:
        raise RayRunError(f"git {' '.join(args)}: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


def overlay() -> tuple[bytes, list[str]]:
    """The driver's files that differ from its commit and git sees (modified or new, not ignored: DVC's
    cached outputs are ignored), as a tar; and the tracked files deleted here."""
    # against HEAD, staged or not (DVC may stage dvc.lock), and untracked files
    changed = [f for f in _git("diff", "--name-only", "-z", "--no-renames", "HEAD").split("\0") if f]
    changed += [f for f in _git("ls-files", "-z", "-o", "--exclude-standard").split("\0") if f]
    deleted = [f for f in _git("diff", "--name-only", "-z", "--no-renames", "--diff-filter=D", "HEAD").split("\0")
               if f]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for f in sorted(set(changed) - set(deleted)):
            if os.path.isfile(f):
                tar.add(f, arcname=f, recursive=False)
    return buf.getvalue(), deleted


def _die_with_parent() -> None:  # a worker's stage dies with the worker (Linux)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _run_logged(cmd: list[str], cwd: str | Path, env: dict, log: io.TextIOBase, pgid_file: Path | None = None) -> int:
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=_die_with_parent)
    if pgid_file is not None:
        pgid_file.write_text(str(proc.pid))
    t0 = time.time()
    try:
        code = proc.wait()
        log.write(f"  ({time.time() - t0:.1f} s, exit {code})\n")
        return code
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


def _stage_env(extra: dict) -> dict:
    env = dict(os.environ) | extra
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")  # `python` of this env
    return env


def _node() -> dict:
    import ray

    return {"node": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(), "pid": os.getpid()}


def shared_task(name: str, root: str, force: bool, passenv: dict) -> dict:
    """On a worker, with a shared filesystem: the stage in the driver's repository."""
    t0, r0 = time.time(), os.times()
    log = io.StringIO()
    with tempfile.TemporaryFile("w+") as fh:
        code = _run_logged(dvc_cmd(name, force), root, _stage_env(passenv), fh)
        fh.seek(0)
        log.write(fh.read())
    r1 = os.times()
    return {"ok": code == 0, "code": code, "log": log.getvalue(), "seconds": time.time() - t0,
            "cpu": (r1.children_user - r0.children_user) + (r1.children_system - r0.children_system), **_node()}


@contextlib.contextmanager
def _slot(workdir: Path):
    """A scratch clone of this node that no other task uses now (flock), and what an earlier task left
    running in it stopped (the process group it recorded)."""
    workdir.mkdir(parents=True, exist_ok=True)
    i = 0
    while True:
        fh = open(workdir / f"slot-{i}.lock", "w")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            i += 1
            continue
        slot = workdir / f"slot-{i}"
        pg = workdir / f"slot-{i}.pgid"
        with contextlib.suppress(OSError, ValueError, ProcessLookupError, PermissionError):
            os.killpg(int(pg.read_text()), signal.SIGKILL)  # an orphan of a task whose worker died
        try:
            yield slot, pg
        finally:
            pg.unlink(missing_ok=True)
            fh.close()
        return


def _warm_server(slot: Path, env: dict, log: Path) -> str:
    """A warm server (:mod:`imitation_gap.runner.warm`) for this clone's code: started with its src/ on
    PYTHONPATH and the stage's environment, it lives while this Ray worker process does, and refuses (the
    command then runs cold) once a file of that code changes.  Returns its socket."""
    import hashlib

    sock = Path(tempfile.gettempdir()) / f"ig-ray-warm-{hashlib.sha1(str(slot).encode()).hexdigest()[:12]}.sock"
    pidf = sock.with_suffix(".pid")
    with contextlib.suppress(OSError, ValueError):
        os.kill(int(pidf.read_text()), 0)
        if sock.exists():
            return str(sock)
    sock.unlink(missing_ok=True)
    with open(log, "a") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "imitation_gap.runner.warm", "--socket", str(sock),
                                 "--parent-pid", str(os.getpid())], cwd=slot, env=env | {"IMITATION_GAP_WARM": ""},
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    pidf.write_text(str(proc.pid))
    deadline = time.time() + 10  # it binds the socket before importing: commands wait in its backlog
    while not sock.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    return str(sock) if sock.exists() else ""


def clone_task(name: str, commit: str, url: str, tar: bytes, deleted: list[str], force: bool,
               passenv: dict, pulls: list[str]) -> dict:
    """On a worker, without a shared filesystem: clone, lay the driver's files over it, run, push."""
    t0, r0 = time.time(), os.times()
    workdir = Path(os.environ.get("IMITATION_GAP_RAY_WORKDIR") or Path(tempfile.gettempdir()) / "imitation-gap-ray")
    with _slot(workdir) as (slot, pgid), tempfile.TemporaryFile("w+") as log:
        (workdir / "started").mkdir(exist_ok=True)
        (workdir / "started" / name.replace("/", "_")).write_text(json.dumps(_node()))  # for people and tests
        git_env = _stage_env(passenv)
        steps: list[list[str]] = []
        if not (slot / ".git").exists():
            steps.append(["git", "clone", "-q", "--no-checkout", url, str(slot)])
        steps += [["git", "-C", str(slot), "fetch", "-q", url, "+refs/heads/*:refs/remotes/origin/*"],
                  ["git", "-C", str(slot), "checkout", "-q", "-f", "--detach", commit],
                  # everything but the node's MLflow store and response cache: outputs come from the remote
                  ["git", "-C", str(slot), "clean", "-q", "-f", "-d", "-x", "-e", "/mlflow.db", "-e", "/.cache/"]]
        code = 0
        for cmd in steps:
            code = _run_logged(cmd, workdir, git_env, log)
            if code:
                log.write(f"cannot check out {commit} from {url}: is it pushed there?\n")
                break
        if not code:
            with tarfile.open(fileobj=io.BytesIO(tar)) as t:
                t.extractall(slot, filter="data")
            for f in deleted:
                (slot / f).unlink(missing_ok=True)
            # the node's DVC cache, shared by its clones (the same as `dvc config --local cache.dir ...`)
            (slot / ".dvc" / "config.local").write_text(f"[cache]\n    dir = {workdir / 'dvc-cache'}\n")
            env = _stage_env(passenv | {"PYTHONPATH": str(slot / "src"), "IMITATION_GAP_WARM": ""})
            env["IMITATION_GAP_WARM"] = _warm_server(slot, env, workdir / f"{slot.name}.warm.log")
        if not code and pulls:  # what the stage reads from upstream outputs beyond its deps
            code = _run_logged([sys.executable, "-m", "imitation_gap.runner.dvcrun", "pull", "-q", *pulls], slot, env,
                               log)
        if not code:
            cmd = dvc_cmd(name, force)
            cmd[cmd.index("--single-item") + 1:cmd.index("--single-item") + 1] = ["--pull"]
            code = _run_logged(cmd, slot, env, log, pgid)
        ref = {}
        if not code:
            with tempfile.TemporaryFile("w+") as out:
                code = subprocess.run([sys.executable, "-m", "imitation_gap.runner.remote", "push", name], cwd=slot,
                                      env=env, stdout=out, stderr=log, preexec_fn=_die_with_parent).returncode
                out.seek(0)
                text = out.read()
                if not code:
                    ref = json.loads(text.strip().splitlines()[-1])
        log.seek(0)
        text = log.read()
    r1 = os.times()
    return {"ok": code == 0, "code": code, "log": text, "seconds": time.time() - t0, **ref,
            "cpu": (r1.children_user - r0.children_user) + (r1.children_system - r0.children_system), **_node()}


class RayBackend:
    name = "ray"

    def __init__(self, ray, workspace: str, git_url: str, commit: str, force: bool, gpus_on_cluster: bool):
        self.ray = ray
        self.workspace = workspace
        self.git_url = git_url
        self.commit = commit
        self.force = force
        self.gpus = gpus_on_cluster
        self.local = LocalBackend()
        self.passenv = {k: os.environ[k] for k in PASSENV if k in os.environ}
        self.root = str(Path.cwd().resolve())
        self.needs: dict[str, Needs] = {}
        self.pulls: dict[str, list[str]] = {}  # clone: upstream outputs a stage reads besides its deps
        self.on_driver: set[str] = set()  # clone: stages DVC keeps no run-cache entry for (see driver_stages)
        self.tasks = {"shared": ray.remote(shared_task), "clone": ray.remote(clone_task)}

    def start(self, name: str, env: dict) -> Job:
        if name in self.on_driver:  # nothing a worker could send back: run it here, as the local runner does
            job = self.local.start(name, env | {"IMITATION_GAP_WARM": ""})
            job.extra["local"] = True
            return job
        job = Job(name)
        need = self.needs.get(name, Needs())
        opts = {"num_cpus": need.cpus, "num_gpus": need.gpus if self.gpus else 0, "max_retries": MAX_RETRIES,
                "retry_exceptions": False, "name": f"stage:{name}"}
        if self.workspace == "shared":
            ref = self.tasks["shared"].options(**opts).remote(name, self.root, self.force, self.passenv)
        else:
            tar, deleted = overlay()  # now: dvc.lock holds every stage recorded so far
            ref = self.tasks["clone"].options(**opts).remote(name, self.commit, self.git_url, tar, deleted,
                                                             self.force, self.passenv, self.pulls.get(name, []))
        job.extra["ref"] = ref
        log_path(name).write_text(f"submitted to Ray ({self.workspace} workspace; {need.gpus} GPU(s), "
                                  f"{need.cpus} CPU(s))\n")
        return job

    def poll(self, job: Job) -> tuple[int, float] | None:
        if job.extra.get("local"):
            return LocalBackend.wait_local(job)
        if job.proc is not None:  # recording the finished stage here
            res = LocalBackend.wait_local(job)
            return None if res is None else (res[0], res[1] + job.extra.get("remote_cpu", 0.0))
        ready, _ = self.ray.wait([job.extra["ref"]], timeout=0)
        if not ready:
            return None
        try:
            out = self.ray.get(job.extra["ref"])
        except Exception as e:  # noqa: BLE001 (the task's own error, or Ray's after its retries)
            with open(log_path(job.name), "a") as fh:
                fh.write(f"Ray task failed: {type(e).__name__}: {e}\n")
            return 1, 0.0
        with open(log_path(job.name), "a") as fh:
            fh.write(f"--- on node {out['node']} ({out['host']}), {out['seconds']:.1f} s ---\n{out['log']}")
        job.extra["remote_cpu"] = out["cpu"]
        job.extra["summary"] = {"node": out["node"], "remote_s": round(out["seconds"], 2)}
        if not out["ok"]:
            return out["code"] or 1, out["cpu"]
        if self.workspace == "shared":
            return 0, out["cpu"]
        with open(log_path(job.name), "a") as fh:
            fh.write("--- recorded here from the run cache ---\n")
        self.local.spawn(job, [sys.executable, "-m", "imitation_gap.runner.remote", "record", job.name, out["key"],
                               out["value"]], dict(os.environ), mode="a")
        return None

    def stop(self, jobs: list[Job]) -> None:
        for j in jobs:
            if "ref" in j.extra and j.proc is None:
                with contextlib.suppress(Exception):
                    self.ray.cancel(j.extra["ref"], force=True)
        self.local.stop([j for j in jobs if j.proc is not None])


def driver_stages(names: list[str]) -> set[str]:
    """Stages that run on the driver in clone mode: those with a ``cache: false`` output that is neither a
    metric nor a plot (the report's git-tracked REPORT.md), for which DVC saves no run-cache entry
    (``Stage.run`` in dvc/stage/__init__.py), so a worker could send nothing back."""
    from dvc.repo import Repo

    with Repo() as repo:
        return {s.addressing for s in repo.index.stages if s.addressing in names and
                any(not o.use_cache and not (o.is_metric or o.is_plot) for o in s.outs)}


def upstream_outputs(names: list[str]) -> dict[str, list[str]]:
    """Per stage: the cached outputs of the stages right upstream of it that none of its deps lies in or
    holds (the report reads eval/<run>/answers.jsonl beside metrics/runs, its dep). ``--pull`` fetches
    a stage's deps; a clone fetches these too, so a stage sees what it would see in a local workspace."""
    from dvc.repo import Repo

    def related(a: str, b: str) -> bool:
        return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")

    out: dict[str, list[str]] = {}
    with Repo() as repo:
        graph = repo.index.graph
        by_name = {s.addressing: s for s in repo.index.stages}
        for n in names:
            st = by_name[n]
            deps = [d.def_path for d in st.deps]
            extra = []
            for up in graph.successors(st):  # edges go from a stage to the stages it depends on
                for o in up.outs:
                    if o.use_cache and not any(related(o.def_path, d) for d in deps):
                        extra.append(o.def_path)
            out[n] = sorted(set(extra))
    return out


@contextlib.contextmanager
def connected(address: str | None, workspace: str, git_remote: str, force: bool, needs: dict[str, Needs]):
    """A :class:`RayBackend` on the cluster at ``address`` ($RAY_ADDRESS, else a cluster on this machine)."""
    try:
        import ray
    except ImportError:
        raise RayRunError("--backend ray needs ray: pip install -c requirements.lock 'ray==2.60.0'") from None
    commit = _git("rev-parse", "HEAD").strip()
    url = ""
    if workspace == "clone":
        names = _git("remote").split()
        url = _git("remote", "get-url", git_remote).strip() if git_remote in names else git_remote
        if not _git("ls-remote", url, check=False).strip():
            raise RayRunError(f"--workspace clone: cannot list git remote {git_remote!r} ({url})")
        _git("fetch", "-q", url, "+refs/heads/*:refs/imitation-gap-ray/*")
        if not _git("for-each-ref", "--contains", commit, "refs/imitation-gap-ray/"):
            raise RayRunError(f"--workspace clone: commit {commit[:10]} is not on git remote {git_remote!r}; "
                              f"push it first (workers check it out from there)")
    address = address or os.environ.get("RAY_ADDRESS") or "auto"
    ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    try:
        total = ray.cluster_resources()
        gpus = total.get("GPU", 0) > 0
        per_node = [n.get("Resources", {}).get("GPU", 0) for n in ray.nodes() if n.get("Alive")]
        for n, nd in needs.items():
            if gpus and nd.gpus > max(per_node or [0]):
                raise RayRunError(f"stage {n} needs {nd.gpus} GPUs; the largest node has {max(per_node):g}")
        be = RayBackend(ray, workspace, url, commit, force, gpus)
        be.needs = needs
        if workspace == "clone":
            be.pulls = upstream_outputs(list(needs))
            be.on_driver = driver_stages(list(needs))
        yield be
    finally:
        ray.shutdown()
