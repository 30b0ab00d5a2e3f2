"""The warm server (imitation_gap.runner.warm): a stage command forked from it behaves as if run cold.

A probe module that uses the stages' `run_cli` stands in for a stage; the server imports
nothing extra (`--preload none`) so these tests take seconds.  The real stages run warm in
tests/test_pipeline.py, whose determinism test compares a warm run with a cold one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import env

PROBE = '''
import gc, os, sys, time
from imitation_gap.core.cli import run_cli
from imitation_gap.core.errors import ConfigError

def main(argv):
    print("pid", os.getpid(), "cwd", os.getcwd(), "argv", sys.argv[1:], "x", os.environ.get("PROBE_X"),
          "warm", os.environ.get("IMITATION_GAP_WARM"), "frozen", gc.get_freeze_count(), flush=True)
    mode = sys.argv[1]
    if mode == "ok":
        open("out.txt", "w").write("done")
    elif mode == "bad":
        raise ConfigError("params.yaml: probe.key = 3: not allowed; use 1 or 2")
    elif mode == "crash":
        raise RuntimeError("boom")
    elif mode == "sleep":
        time.sleep(300)

if __name__ == "__main__":
    run_cli(main)
'''


@pytest.fixture()
def server(tmp_path):
    sock = tmp_path / "s"
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "imitation_gap.runner.warm", "--socket", str(sock), "--preload", "none"],
                            env=env(), stdout=log, stderr=subprocess.STDOUT)
    for _ in range(200):
        if "ready" in (tmp_path / "server.log").read_text():
            break
        time.sleep(0.05)
    else:
        raise AssertionError("server did not start: " + (tmp_path / "server.log").read_text())
    work = tmp_path / "work"
    work.mkdir()
    (work / "probe.py").write_text(PROBE)
    yield sock, work
    proc.terminate()
    proc.wait(timeout=30)
    log.close()
    assert not sock.exists()  # the server removes its socket


def probe(work: Path, sock: Path, *args: str, env_extra: dict | None = None, **kw) -> subprocess.Popen:
    e = env() | {"IMITATION_GAP_WARM": str(sock), "PROBE_X": "42",
                 "IMITATION_GAP_STAGE_CPU": str(work / "cpu.txt")} | (env_extra or {})
    return subprocess.Popen([sys.executable, "-m", "probe", *args], cwd=work, env=e, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def fields(out: str) -> dict:
    words = out.split("\n")[0].split(" ", 1)[1]
    return {"pid": int(words.split()[0]), "text": out}


def test_runs_in_a_forked_child_with_the_commands_cwd_argv_env_and_streams(server):
    sock, work = server
    p = probe(work, sock, "ok", "--flag")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert (work / "out.txt").read_text() == "done"  # in the command's working directory
    assert f"cwd {work}" in out and "argv ['ok', '--flag']" in out and "x 42" in out
    assert "warm None" in out  # processes the stage starts run cold
    assert int(out.split("frozen ")[1].split()[0]) > 1000  # the server's objects: out of the child's collections
    assert fields(out)["pid"] != p.pid  # it ran in the server's child, not in the command
    assert float((work / "cpu.txt").read_text().split()[0]) > 0  # the child's CPU, for the runner's summary


def test_exit_codes_and_errors_pass_through(server):
    sock, work = server
    p = probe(work, sock, "bad")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2
    assert "error: params.yaml: probe.key = 3: not allowed; use 1 or 2" in err
    p = probe(work, sock, "crash")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 1
    assert "RuntimeError: boom" in err and "Traceback" in err


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by the server) counts as gone
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"


def _child_pid(p: subprocess.Popen) -> int:
    line = p.stdout.readline()
    assert line.startswith("pid "), line
    return int(line.split()[1])


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 128 + signal.SIGTERM)])
def test_signals_reach_the_child(server, sig, code):
    sock, work = server
    p = probe(work, sock, "sleep")
    child = _child_pid(p)
    p.send_signal(sig)
    p.wait(timeout=30)
    assert p.returncode == code
    deadline = time.time() + 10
    while _alive(child) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(child)


def test_a_killed_command_takes_its_child_with_it(server):
    sock, work = server
    p = probe(work, sock, "sleep")
    child = _child_pid(p)
    p.kill()  # SIGKILL: nothing is forwarded; the child sees its command's socket close
    p.wait(timeout=30)
    deadline = time.time() + 10
    while _alive(child) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(child)


def test_no_server_runs_cold(tmp_path):
    work = tmp_path
    (work / "probe.py").write_text(PROBE)
    p = probe(work, tmp_path / "missing-socket", "ok")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "did not answer; running this stage in its own process" in err
    assert fields(out)["pid"] == p.pid
    assert (work / "out.txt").read_text() == "done"


def test_a_command_whose_import_time_environment_differs_runs_cold(server):
    sock, work = server
    p = probe(work, sock, "ok", env_extra={"HF_HOME": str(work / "other-hf-home")})
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "other values of HF_HOME" in err and "running this stage in its own process" in err
    assert fields(out)["pid"] == p.pid


def test_started_stops_its_server_and_reports_one_that_could_not_start(tmp_path):
    """``warm.started`` (the runner's, the bench's and the test fixtures' way to start a server)."""
    from imitation_gap.runner import warm

    shadow = tmp_path / "shadow" / "imitation_gap" / "runner"  # a server module that dies at start-up
    shadow.mkdir(parents=True)
    (shadow / "warm.py").write_text("raise SystemExit('broken on purpose')\n")
    broken = env() | {"PYTHONPATH": f"{shadow.parent.parent}{os.pathsep}{env()['PYTHONPATH']}"}
    with warm.started(tmp_path / "broken.log", env=broken) as srv:
        assert srv.socket is None and srv.env() == {warm.ENV: ""}
    assert "broken on purpose" in (tmp_path / "broken.log").read_text()
    with warm.started(tmp_path / "ok.log", env=env()) as srv:
        assert srv.socket and os.path.exists(srv.socket) and srv.proc.poll() is None
        sock, proc = srv.socket, srv.proc
    assert proc.poll() is not None and not os.path.exists(sock)  # stopped, socket and its directory gone
    assert not os.path.exists(os.path.dirname(sock))
