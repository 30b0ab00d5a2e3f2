"""Where the runner's stages run: here, as subprocesses (the default), or on a Ray cluster.

A backend starts one stage (``start``), says when it has finished (``poll``: None while it runs,
else its exit code and CPU seconds) and stops what runs on an interrupt (``stop``).  The scheduling
(what is ready, GPUs, CPU threads) stays in :mod:`imitation_gap.runner.parallel`; each stage's log
is ``.dvc/tmp/repro-logs/<stage>.log`` whatever runs it.  The Ray backend is
:mod:`imitation_gap.runner.ray_backend`.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core.handoff import CPU_ENV

LOG_DIR = Path(".dvc/tmp/repro-logs")


def log_path(stage: str) -> Path:
    return LOG_DIR / (re.sub(r"[^A-Za-z0-9@._-]+", "_", stage) + ".log")


def cpu_file(stage: str) -> Path:
    return log_path(stage).with_suffix(".cpu")


def dvc_cmd(stage: str, force: bool = False) -> list[str]:
    """``dvc repro --single-item <stage>``, through :mod:`imitation_gap.runner.dvcrun` (DVC's CLI; the same
    dvc.lock, with a comment-free lock parsed by libyaml instead of ruamel's pure-Python loader)."""
    return [sys.executable, "-m", "imitation_gap.runner.dvcrun", "--wait-for-lock", "repro", "--single-item",
            *(["--force"] if force else []), stage]


@dataclass
class Job:
    name: str
    t0: float = field(default_factory=time.time)
    proc: subprocess.Popen | None = None  # the local process of the stage (or of its recording)
    log: object = None
    extra: dict = field(default_factory=dict)  # backend state (Ray: the task's ref, its result)


class LocalBackend:
    """Each stage as ``dvc repro --single-item <stage>`` in a subprocess of this machine."""

    name = "local"

    def __init__(self, force: bool = False):
        self.force = force

    def start(self, name: str, env: dict) -> Job:
        job = Job(name)
        self.spawn(job, dvc_cmd(name, self.force), env)
        return job

    def spawn(self, job: Job, cmd: list[str], env: dict, mode: str = "w") -> None:
        job.log = open(log_path(job.name), mode)
        cpu_file(job.name).unlink(missing_ok=True)
        # own process group: an interrupt of the runner is passed on to it (stop)
        job.proc = subprocess.Popen(cmd, stdout=job.log, stderr=subprocess.STDOUT, start_new_session=True,
                                    env=env | {CPU_ENV: str(cpu_file(job.name).resolve())})

    def poll(self, job: Job) -> tuple[int, float] | None:
        return self.wait_local(job)

    @staticmethod
    def wait_local(job: Job) -> tuple[int, float] | None:
        pid, status, usage = os.wait4(job.proc.pid, os.WNOHANG)  # CPU of dvc and the stage's command
        if pid == 0:
            return None
        job.proc.returncode = os.waitstatus_to_exitcode(status)
        job.log.close()
        # plus that of the command's warm child, if it had one
        cpu = usage.ru_utime + usage.ru_stime
        with contextlib.suppress(OSError, ValueError):
            cpu += sum(float(x) for x in cpu_file(job.name).read_text().split())
            cpu_file(job.name).unlink()
        return job.proc.returncode, cpu

    def stop(self, jobs: list[Job]) -> None:
        stop_groups([j.proc for j in jobs if j.proc is not None])

    def close(self) -> None:
        pass


def stop_groups(procs: list[subprocess.Popen], grace: float = 20.0) -> None:
    """SIGINT to each stage's process group (as Ctrl-C), then SIGTERM, then SIGKILL to what is still running.

    A stage can miss the SIGINT: DVC ignores SIGINT while it runs a command, and a signal that lands
    between that and the command's start reaches no one."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        alive = [p for p in procs if p.poll() is None]
        if not alive:
            return
        for p in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, sig)
        deadline = time.time() + wait
        while time.time() < deadline and any(p.poll() is None for p in alive):
            time.sleep(0.1)
