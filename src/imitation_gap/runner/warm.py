"""Warm stage processes: one pre-imported Python that forks a child per stage command.

Every stage command (``python -m imitation_gap.stages.sft ...``) first spends ~10 s of a core
importing torch, transformers, TRL, lm-eval and MLflow.  With this study's small models
that is more than the work: SFT of the M model on 800 tokens trains for 2 s in a 17-s
process.  ``make run``'s runner (:mod:`imitation_gap.runner.parallel`) therefore starts one server
that imports those libraries once.  A stage command that finds the server's socket in
``$IMITATION_GAP_WARM`` sends it its module, argv, working directory and environment, and
passes its stdin/stdout/stderr along (file descriptors over the Unix socket): that side, and the
framing both sides use, is :mod:`imitation_gap.core.handoff`, which ``run_cli`` calls.  The server
forks; the child runs the module as ``python -m`` would (``runpy``), in that directory, with
that environment and those streams, and reports its exit code, which the command exits with.
Ctrl-C / SIGTERM of the command are passed on to the child.

DVC sees nothing different: it runs the same command, which ends with the stage's exit
code after the stage's outputs are written, and it hashes deps and outs as always.  The
imports are the only thing shared: the server runs no torch op, opens no database and
starts no thread before it forks, and each child re-seeds Python's ``random``.  The server
moves the imports' objects out of the garbage collector's reach (``gc.freeze``) before it
serves: a child's full collection (the Trainer runs one at its end) then walks only what the
stage made, not the ~760k objects of the libraries (0.36 s a collection).

Without ``$IMITATION_GAP_WARM`` (plain ``dvc repro``, ``dvc exp run``, a direct call) or when
the server does not answer, the command runs cold in its own process, as before.
``python -m imitation_gap.runner.parallel --no-warm`` (or ``REPRO_WARM=0``) turns it off.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path

from ..core.handoff import ENV, _recv, _send

# Read by libraries when they are imported (paths, offline switches, thread pools): a command whose
# environment differs from the server's in any of these runs cold, since the server's imports used its own.
IMPORT_TIME_ENV = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "DATASETS_", "TORCH", "PYTORCH_", "OMP_", "MKL_",
                   "CUDA_", "PYTHON", "MLFLOW_", "LM_EVAL", "TRL_", "ACCELERATE_")


def _code_stamp() -> dict[str, tuple[int, int]]:
    """(mtime, size) of every file of the package: the server's imports are of this code."""
    pkg = Path(__file__).resolve().parents[1]
    return {str(p.relative_to(pkg)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(pkg.rglob("*")) if p.is_file() and p.suffix in (".py", ".yaml")}


def _import_env(env: dict) -> dict:
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME_ENV) and k != "MLFLOW_TRACKING_URI"}


# Imported once by the server: what the stage modules import lazily inside their functions.
PRELOAD = (
    "numpy", "torch", "safetensors.torch", "transformers", "datasets", "accelerate", "peft", "trl",
    "trl.trainer.sft_trainer", "lm_eval", "lm_eval.evaluator", "lm_eval.tasks", "lm_eval.models.huggingface",
    "lm_eval.models.openai_completions", "mlflow", "mlflow.store.tracking.sqlalchemy_store", "openai",
    "scipy.optimize", "tqdm", "imitation_gap.stages.fetch", "imitation_gap.stages.base", "imitation_gap.stages.sft",
    "imitation_gap.stages.evaluate", "imitation_gap.stages.imitate_dataset", *(f"imitation_gap.worlds.embedded.{part}" for part in
                                                             ("fetch", "base", "imitate_dataset", "sft", "evaluate")),
    # the report stage (runs after every `dvc exp run`): no backend is chosen here, analysis.plots picks Agg
    "scipy.stats", "matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg", "imitation_gap.stages.report",
)
# lazy attributes of transformers / TRL that the stages touch (each pulls in a module tree)
PRELOAD_ATTRS = (
    ("transformers", ("AutoModelForCausalLM", "AutoTokenizer", "LlamaConfig", "LlamaForCausalLM", "Trainer",
                      "TrainingArguments", "set_seed")),
    ("trl", ("SFTTrainer", "SFTConfig")),
    ("transformers.integrations", ("MLflowCallback",)),
)


# -- the server's side -------------------------------------------------------------------
def _child(conn: socket.socket, req: dict, fds: list[int]) -> None:
    """In the forked child: become the stage command, run it, report the exit code. Never returns."""
    import atexit
    import random
    import resource
    import runpy
    import threading
    import traceback

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    os.environ.pop(ENV, None)  # processes this stage starts run cold
    sys.argv = [req["module"], *req["argv"]]
    sys.path[0] = req["cwd"]  # as `python -m` puts the working directory first
    random.seed()
    sys.modules.pop(req["module"], None)  # preloaded: run its code afresh as __main__, as `python -m` does
    _send(conn, {"pid": os.getpid()})

    def watch() -> None:  # the command went away (killed): stop, as a cold process would have died with it
        try:
            conn.recv(1)
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()
    code = 0
    try:
        runpy.run_module(req["module"], run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if e.code is not None and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 130
    except BaseException:  # noqa: BLE001 - as the interpreter would: traceback, exit 1
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            pass
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        _send(conn, {"exit": code, "cpu": own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime})
    finally:
        os._exit(code)


def preload(modules: tuple[str, ...] = PRELOAD, attrs: tuple = PRELOAD_ATTRS) -> float:
    import importlib

    t0 = time.time()
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - an optional library: the stage imports it itself (or fails there)
            print(f"warm: could not preload {name}: {e}", file=sys.stderr)
    for mod, names in attrs:
        for a in names:
            try:
                getattr(importlib.import_module(mod), a)
            except Exception as e:  # noqa: BLE001
                print(f"warm: could not preload {mod}.{a}: {e}", file=sys.stderr)
    return time.time() - t0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def serve(path: str, modules: tuple[str, ...] = PRELOAD, attrs: tuple = PRELOAD_ATTRS,
          parent: int | None = None) -> None:
    """Import once, then fork one child per connection until SIGTERM or ``parent`` (default: ours) exits."""
    import gc
    import threading

    parent = parent or os.getppid()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(64)  # commands that connect during the preload wait in the backlog
    from ..core import cli  # noqa: F401 - sets the telemetry switches every stage command sets

    mine = _import_env(dict(os.environ))  # as started, before any library could change it
    code = _code_stamp()
    secs = preload(modules, attrs)
    gc.collect()
    gc.freeze()  # the imports' ~760k objects: a child's full collections skip them (~0.36 s each otherwise)
    if threading.active_count() > 1:  # a thread would not survive fork: refuse rather than hang a stage
        print(f"warm: {threading.active_count() - 1} thread(s) after the imports; not serving", file=sys.stderr)
        srv.close()
        os.unlink(path)
        sys.exit(1)
    print(f"warm: ready in {secs:.1f} s (pid {os.getpid()}, {path})", file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runner stops us with SIGTERM
    srv.settimeout(1.0)
    served = 0
    try:
        while _alive(parent):
            try:
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            except ChildProcessError:
                pass
            try:
                conn, _ = srv.accept()
            except socket.timeout:
                continue
            conn.settimeout(None)
            try:
                req, fds = _recv(conn, with_fds=3)
            except (OSError, ConnectionError, ValueError) as e:
                print(f"warm: bad request ({e})", file=sys.stderr)
                conn.close()
                continue
            theirs, now = _import_env(req.get("env", {})), _code_stamp()
            why = ""
            if theirs != mine:
                diff = sorted(k for k in set(theirs) | set(mine) if theirs.get(k) != mine.get(k))
                why = ("it was started with other values of " + ", ".join(diff[:5]) + " (read when libraries are "
                       "imported); restart it in this environment")
            elif now != code:  # its imports would run the old code while DVC records the new
                changed = sorted(k for k in set(now) | set(code) if now.get(k) != code.get(k))
                why = "the project's code changed since it started (" + ", ".join(changed[:5]) + "); restart it"
            if why:
                with contextlib.suppress(OSError):
                    _send(conn, {"refused": why})
                for fd in fds:
                    os.close(fd)
                conn.close()
                continue
            pid = os.fork()
            if pid == 0:
                srv.close()
                _child(conn, req, fds)
            served += 1
            for fd in fds:
                os.close(fd)
            conn.close()
    finally:
        deadline = time.time() + 10  # reap the last children, so that their CPU counts in our parent's rusage
        while time.time() < deadline:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    time.sleep(0.1)
            except ChildProcessError:
                break
        print(f"warm: served {served} stage command(s)", file=sys.stderr, flush=True)
        srv.close()
        Path(path).unlink(missing_ok=True)


class Started:
    """A server started by :func:`started`: its socket (``None`` if it did not start), process and log."""

    def __init__(self, socket_path: str | None, proc, log: Path):
        self.socket, self.proc, self.log = socket_path, proc, log

    def env(self) -> dict[str, str]:
        """The variable that sends stage commands to this server (or keeps them cold if it did not start)."""
        return {ENV: self.socket or ""}


@contextlib.contextmanager
def started(log: Path | str | None = None, env: dict | None = None, parent_pid: int | None = None,
            wait_s: float = 10.0):
    """Start a server on a fresh socket, yield :class:`Started`, stop it (SIGTERM, then SIGKILL) on exit.

    The socket lives in a new short temp directory (Unix socket paths are limited to ~100 bytes); the
    server binds it before importing anything, so the wait is for the process, not the imports
    (commands that connect early wait in the backlog).  ``parent_pid``: the server exits with that
    process (default: the caller).  If it dies at start-up, ``socket`` is ``None`` (see the log).  ``log``:
    where its output goes (default: beside the socket, removed with it)."""
    import shutil
    import subprocess
    import tempfile

    sweep_stale()
    tmp = tempfile.mkdtemp(prefix=f"ig-warm-{parent_pid or os.getpid()}-")
    sock = os.path.join(tmp, "socket")
    log = Path(log) if log else Path(tmp) / "server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "imitation_gap.runner.warm", "--socket", sock,
                                 "--parent-pid", str(parent_pid or os.getpid())], env=env, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + wait_s
    while not os.path.exists(sock) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield Started(sock if proc.poll() is None and os.path.exists(sock) else None, proc, log)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def sweep_stale(tmpdir: str | None = None) -> list[str]:
    """Remove the temporary directories (socket, log) of warm servers whose owner is gone: a runner killed
    with ``kill -9`` never ran its clean-up.  A directory is ``ig-warm-<owner pid>-<random>``; one of an older
    version (no pid in its name) is removed when it is over an hour old and nothing answers on its socket."""
    import re
    import shutil
    import tempfile

    from ..core.io import alive

    root = Path(tmpdir or tempfile.gettempdir())
    removed = []
    for d in root.glob("ig-warm-*"):
        try:
            if not d.is_dir() or d.is_symlink() or d.stat().st_uid != os.getuid():
                continue
        except FileNotFoundError:
            continue
        m = re.match(r"^ig-warm-(\d+)-", d.name)
        if m:
            stale = not alive(int(m.group(1)))
        else:  # an older version's: only when old (it may be starting) and nothing answers on its socket
            sock = d / "socket"
            stale = time.time() - d.stat().st_mtime > 3600
            if stale and sock.exists():
                with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(1.0)
                    s.connect(str(sock))
                    stale = False  # a server answers there
        if stale:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(str(d))
    return removed


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--socket", required=True, help="path of the Unix socket to serve on")
    ap.add_argument("--preload", default="stages",
                    help="'stages' (the libraries of this study's stages), 'none', or comma-separated modules")
    ap.add_argument("--parent-pid", type=int, default=None,
                    help="exit when this process exits (default: the process that started the server)")
    args = ap.parse_args(argv)
    if args.preload == "stages":
        serve(args.socket, parent=args.parent_pid)
    else:
        mods = tuple(m for m in args.preload.split(",") if m and args.preload != "none")
        serve(args.socket, mods, (), parent=args.parent_pid)


if __name__ == "__main__":
    main()
