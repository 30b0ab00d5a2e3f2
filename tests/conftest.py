"""Shared fixtures: tiny params, a temp git+DVC copy of this repo, the CLI runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from contextlib import contextmanager
from typing import Iterator
from pathlib import Path

import pytest
import yaml

from imitation_gap.core.io import deep_update
from imitation_gap.worlds.embedded.teacher import make_server

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Small enough for seconds per stage, large enough that every metric is defined (the one copy: bench/ reads it too).
TINY = yaml.safe_load((ROOT / "tests" / "tiny_params.yaml").read_text())


_WARM: dict[str, str] = {}  # the socket of this test worker's warm server (see warm_stage_commands)


@pytest.fixture(scope="session", autouse=True)
def warm_stage_commands():
    """One warm server (imitation_gap.runner.warm) per test worker, as `make run` starts one: stage commands in the
    tests fork from it instead of importing torch & co. each time. A test that needs a cold command passes
    ``extra_env={"IMITATION_GAP_WARM": ""}``; IG_TESTS_COLD=1 runs the whole suite cold."""
    if os.environ.get("IG_TESTS_COLD") == "1":
        yield
        return
    from imitation_gap.runner import warm

    with warm.started(env=env()) as srv:
        if srv.socket:
            _WARM["socket"] = srv.socket
        yield
        _WARM.clear()


def env() -> dict:
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e.pop("DVC_ROOT", None)
    e.pop("MLFLOW_TRACKING_URI", None)
    e["TOKENIZERS_PARALLELISM"] = "false"
    e["HF_HUB_OFFLINE"] = "1"
    e["HF_DATASETS_OFFLINE"] = "1"
    e["PYTHONPATH"] = str(ROOT / "src")
    if _WARM:
        e["IMITATION_GAP_WARM"] = _WARM["socket"]
    return e


def run(cmd: list[str] | str, cwd: Path, check: bool = True, extra_env: dict | None = None,
        timeout: int = 900) -> subprocess.CompletedProcess:
    e = env() | (extra_env or {})
    r = subprocess.run(cmd, cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout,
                       shell=isinstance(cmd, str))
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} failed ({r.returncode}):\nSTDOUT:\n{r.stdout[-4000:]}\nSTDERR:\n{r.stderr[-6000:]}")
    return r


def write_params(repo: Path, overrides: dict) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    deep_update(params, overrides)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def make_repo(dest: Path, overrides: dict | None = None) -> Path:
    """A git + DVC copy of this repository's tracked files, with tiny params, inputs pulled."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        src = ROOT / f
        # not the full study's results: a tiny study starts with none (the committed dvc.lock, ~0.5 MB, would
        # also be re-read and re-written by every stage that runs here)
        if not src.is_file() or f.startswith(("metrics/", "eval/", "plots/")) or f in ("REPORT.md", "dvc.lock"):
            continue
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / f)
    params = write_params(dest, deep_update(yaml.safe_load(yaml.safe_dump(TINY)), overrides or {}))
    if params["world"] != "embedded":  # as a user switches worlds: the stages' code deps are that world's closures
        run([sys.executable, "-m", "imitation_gap.tools.deps", "--write"], dest)
    run("git init -q -b main && git config user.email t@t && git config user.name t && git add -A && "
        "git commit -qm init", dest)
    run(["dvc", "pull", "-q", "data.dvc"], dest)
    return dest


@pytest.fixture(scope="session")
def world_repo(tmp_path_factory) -> Path:
    """A tiny repo where `fetch` and `base@S-0` have run (shared by the fast tests)."""
    repo = make_repo(tmp_path_factory.mktemp("world") / "repo")
    run(["dvc", "repro", "-q", "base@S-0"], repo)
    return repo


@pytest.fixture(scope="session")
def small_world():
    """A small in-memory world from the hand-made inputs (data/inputs, pulled by `make test`)."""
    from imitation_gap.core.io import read_jsonl
    from imitation_gap.worlds.embedded.world import build_world, load_spec

    inputs = ROOT / "data" / "inputs"
    if not (inputs / "world_spec.yaml").exists():
        pytest.fail("data/inputs is missing: run `dvc pull data.dvc` (make test does)")
    seeds = [r["person"] for r in read_jsonl(inputs / "seed_qa.jsonl")]
    return build_world(load_spec(inputs / "world_spec.yaml"), seeds, 40, 20, 20, seed=3)


@contextmanager
def serve(world, faults=None, **kw) -> Iterator[tuple[str, object]]:
    """The embedded teacher's HTTP server on 127.0.0.1 in a thread: (its /v1 URL, the server)."""
    server = make_server(world, None, faults=faults, **kw)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", server
    finally:
        server.shutdown()
        server.server_close()
