"""Shared helpers of the bench: progress lines, medians, the machine, a scratch world."""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from imitation_gap.core.io import deep_update

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
T0 = time.perf_counter()


def say(msg: str) -> None:
    """A progress line with the time since the bench started (the bench runs for minutes)."""
    el = time.perf_counter() - T0
    print(f"[bench {int(el // 60):2d}:{el % 60:04.1f}] {msg}", file=sys.stderr, flush=True)


def median(xs) -> float:
    return float(statistics.median(xs))


def spread(xs) -> str:
    """`median (min-max)`, for the tables."""
    xs = list(xs)
    return f"{median(xs):.3g} ({min(xs):.3g}-{max(xs):.3g})"


def env() -> dict:
    """The environment of the stage processes the bench starts: this checkout's code, offline."""
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    for k in ("DVC_ROOT", "MLFLOW_TRACKING_URI"):
        e.pop(k, None)
    e.update(TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
             PYTHONPATH=str(ROOT / "src"), MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true",
             DVC_NO_ANALYTICS="1")
    return e


def run(cmd, cwd: Path, timeout: int = 1200) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout,
                       shell=isinstance(cmd, str))
    if r.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    return r


def params_with(overrides: dict) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    return deep_update(params, overrides)


def scratch_world(dest: Path, overrides: dict | None = None, imitate: bool = True) -> Path:
    """A working directory with params.yaml, data/inputs and the stages `fetch` (+ `imitate-dataset`) run.

    No git or DVC: the training, client and eval benches call the project's code directly.
    """
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "params.yaml").write_text(yaml.safe_dump(params_with(overrides or {}), sort_keys=False))
    shutil.copytree(ROOT / "data" / "inputs", dest / "data" / "inputs", dirs_exist_ok=True)
    run([sys.executable, "-m", "imitation_gap.stages.fetch"], dest)
    if imitate:
        run([sys.executable, "-m", "imitation_gap.stages.imitate_dataset"], dest)
    return dest


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    except OSError:
        pass
    return []


def cpu_snapshot() -> dict | None:
    """CPU seconds so far: all cores' busy and steal time (/proc/stat) and this process tree's own (rusage).
    The difference of two snapshots tells how much CPU *other* work took during the bench."""
    import resource

    try:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    own = sum(getattr(resource.getrusage(w), a) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for a in ("ru_utime", "ru_stime"))
    # user nice system idle iowait irq softirq steal ...: busy = user + nice + system + irq + softirq
    return {"busy": (f[0] + f[1] + f[2] + f[5] + f[6]) / hz, "steal": (f[7] if len(f) > 7 else 0) / hz,
            "own": own, "t": time.perf_counter()}


def other_cpu(a: dict | None, b: dict | None, cores: int) -> dict | None:
    """Share of the machine's CPU that other processes (not this bench) and the hypervisor (steal) took
    between two snapshots."""
    if not a or not b:
        return None
    wall = b["t"] - a["t"]
    other = max(0.0, (b["busy"] - a["busy"]) - (b["own"] - a["own"]))
    return {"other_cpu_s": other, "steal_s": b["steal"] - a["steal"], "wall_s": wall,
            "other_share": other / (wall * cores) if wall > 0 else 0.0,
            "steal_share": (b["steal"] - a["steal"]) / (wall * cores) if wall > 0 else 0.0}


def machine() -> dict:
    import importlib.metadata as md

    import torch

    def ver(pkg: str) -> str:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return "-"

    load = os.getloadavg() if hasattr(os, "getloadavg") else (0, 0, 0)
    return {
        "cpu": cpu_model(), "cpu_flags": cpu_flags(), "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads_default": torch.get_num_threads(), "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {p: ver(p) for p in ("torch", "transformers", "trl", "lm_eval", "datasets", "accelerate",
                                         "mlflow", "dvc", "openai")},
        "torch_parallel": torch.__config__.parallel_info().splitlines()[:6],
        "loadavg_at_start": [round(x, 2) for x in load],
    }
