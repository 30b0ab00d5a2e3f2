"""One runner per workspace: a second ``make run`` in the same workspace refuses at once, naming the first.

Two runners in one workspace would run the same stages twice and write over each other's logs
(``.dvc/tmp/repro-logs/<stage>.log``).  :func:`only_runner` takes an exclusive ``flock`` on
``.dvc/tmp/runner.lock`` and writes its pid there; the kernel drops the lock when the process ends
(also on ``kill -9``), so a stale file never blocks.  The runner takes it before anything else,
before it touches a log.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

LOCK = Path(".dvc/tmp/runner.lock")
DVC_LOCK = Path(".dvc/tmp/lock")  # DVC's repository lock (zc.lockfile: an flock, the holder's pid in the file)
DVC_RWLOCK = Path(".dvc/tmp/rwlock")  # DVC's locks of a running stage's deps and outs: {read, write} -> {pid, cmd}


class RunnerBusy(RuntimeError):
    """Another runner holds this workspace."""

    def __init__(self, pid: str):
        self.pid = pid
        super().__init__(f"another runner (pid {pid}) is running in this workspace ({Path.cwd()}); wait for it to "
                         f"finish, or stop it with `kill -INT {pid}` (what it finished is kept), then run this again")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def dvc_busy(lock: Path = DVC_LOCK, rwlock: Path = DVC_RWLOCK) -> str | None:
    """Another DVC command working in this repository (a plain ``dvc repro``, ``dvc exp run``), as
    ``"pid N: command"``, or None.  DVC holds its repository lock while it plans and records a stage, and
    read/write locks on the stage's deps and outs while its command runs (then the repository lock is free),
    so both are looked at."""
    import json

    from ..core.io import alive

    if lock.exists():
        fd = os.open(lock, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
            except BlockingIOError:
                pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
                cmd = _cmdline(int(pid)) if pid.isdigit() else ""
                return f"pid {pid or 'unknown'}: {cmd or 'dvc'}"
        finally:
            os.close(fd)
    try:
        locks = json.loads(rwlock.read_text()) if rwlock.exists() else {}
    except (OSError, ValueError):
        locks = {}
    infos = list((locks.get("write") or {}).values()) if isinstance(locks, dict) else []
    for readers in ((locks.get("read") or {}).values() if isinstance(locks, dict) else []):
        infos += readers if isinstance(readers, list) else []
    for info in infos:
        pid = info.get("pid") if isinstance(info, dict) else None
        if isinstance(pid, int) and pid != os.getpid() and alive(pid):
            return f"pid {pid}: {info.get('cmd') or _cmdline(pid) or 'dvc'}"
    return None


@contextlib.contextmanager
def only_runner(lock: Path = LOCK) -> Iterator[None]:
    """Hold the workspace's runner lock for the block, or raise :class:`RunnerBusy` at once."""
    if not lock.parent.parent.is_dir():  # not a DVC repository: DVC itself will say so
        yield
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunnerBusy(os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
