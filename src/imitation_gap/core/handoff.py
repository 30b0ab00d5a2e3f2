"""The stage command's side of the runner's warm server: the one hook from stage code into the runner.

:func:`imitation_gap.core.cli.run_cli` calls :func:`handoff` before a stage's ``main``.  With no
server named in ``$IMITATION_GAP_WARM`` (plain ``dvc repro``, ``dvc exp run``, a direct call), or
when the named server does not answer or refuses, it returns at once and the stage runs in this
process.  Otherwise it sends the server this ``python -m`` command (module, argv, working
directory, environment) with its stdin/stdout/stderr (file descriptors over the Unix socket),
passes Ctrl-C / SIGTERM on to the forked child that runs it, and exits with the child's code.
Either way the stage runs the same code on the same inputs: the server only saves the imports
(see :mod:`imitation_gap.runner.warm`, which imports this protocol from here, never the reverse).

Protocol on the socket: each message is a 4-byte big-endian length, then that many bytes of
JSON.  The command sends ``{"module", "argv", "cwd", "env"}`` with fds 0, 1, 2 attached; the
server answers ``{"pid"}`` (the child started) or ``{"refused": why}``, then, when the child is
done, ``{"exit", "cpu"}`` (and ``"error"`` if it died without a status).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys

ENV = "IMITATION_GAP_WARM"  # path of the server's socket
CPU_ENV = "IMITATION_GAP_STAGE_CPU"  # file where the command adds the CPU seconds its child used


# -- framing: a 4-byte length, then JSON ------------------------------------------------
def _send(sock: socket.socket, obj: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(obj).encode()
    msg = struct.pack("!I", len(data)) + data
    if fds:
        socket.send_fds(sock, [msg], fds)
    else:
        sock.sendall(msg)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def _recv(sock: socket.socket, with_fds: int = 0) -> tuple[dict, list[int]]:
    fds: list[int] = []
    if with_fds:
        head, fds, _, _ = socket.recv_fds(sock, 4, with_fds)
        if len(head) < 4:
            head += _recv_exact(sock, 4 - len(head))
    else:
        head = _recv_exact(sock, 4)
    (n,) = struct.unpack("!I", head)
    return json.loads(_recv_exact(sock, n)), fds


# -- the stage command's side ------------------------------------------------------------
def handoff() -> None:
    """If a warm server is named in the environment, run this ``python -m`` command there and exit
    with its code; return (run cold) when there is none or it does not answer."""
    path = os.environ.get(ENV)
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if not path or spec is None:
        return
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        _send(sock, {"module": spec.name, "argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)},
              [0, 1, 2])
        first, _ = _recv(sock)  # the child's pid: it has started
    except (OSError, ConnectionError, ValueError):
        sock.close()
        print(f"warm server at {path} did not answer; running this stage in its own process", file=sys.stderr)
        return
    if "refused" in first:
        sock.close()
        print(f"warm server at {path}: {first['refused']}; running this stage in its own process", file=sys.stderr)
        return
    pid = first["pid"]
    forwarded: list[int] = []

    def forward(signum, _frame):
        forwarded.append(signum)
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    try:
        result, _ = _recv(sock)
    except (OSError, ConnectionError, ValueError):
        if forwarded:  # it died of the signal we passed on: exit as a process killed by it
            result = {"exit": 128 + forwarded[-1], "cpu": 0.0}
        else:
            result = {"exit": 1, "cpu": 0.0, "error": f"the warm process {pid} ended without an exit status "
                                                      "(killed?); rerun with REPRO_WARM=0 to run stages cold"}
    try:  # wait for the child to be gone: its outputs are complete once the socket closes
        while sock.recv(4096):
            pass
    except OSError:
        pass
    if result.get("error"):
        print(f"error: {result['error']}", file=sys.stderr)
    if os.environ.get(CPU_ENV):
        with open(os.environ[CPU_ENV], "a") as f:
            f.write(f"{result.get('cpu', 0.0)}\n")
    os._exit(int(result["exit"]))
