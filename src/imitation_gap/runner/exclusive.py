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


class RunnerBusy(RuntimeError):
    """Another runner holds this workspace."""

    def __init__(self, pid: str):
        self.pid = pid
        super().__init__(f"another runner (pid {pid}) is running in this workspace ({Path.cwd()}); wait for it to "
                         f"finish, or stop it with `kill -INT {pid}` (what it finished is kept), then run this again")


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
