"""What each stage needs to run: GPUs and CPU threads, from its name and the params (one place).

Both runners read it: the local one (:mod:`imitation_gap.runner.parallel`) gives each running stage
its own GPUs through ``CUDA_VISIBLE_DEVICES``; the Ray one (:mod:`imitation_gap.runner.ray_backend`)
asks Ray for ``num_gpus`` / ``num_cpus``.  Stages are matched by the part of their DVC name
before ``@`` (``sft@M-local-1000000-0`` -> ``sft``, ``eval-base@M-s0`` -> ``eval-base``), so a new
matrix or foreach axis needs nothing here.

| stage | GPUs | CPU threads |
|---|---|---|
| ``fetch``, ``imitate-dataset``, ``report`` | 0 (downloads, teacher calls, tables) | 1 |
| ``base@...`` | embedded: 1 (pretraining); hub: 0 (a download) | ``pretrain.threads`` |
| ``sft@...`` | ``sft.num_processes`` (one per accelerate process) | ``sft.threads`` x processes |
| ``eval-teacher`` | 0 (the teacher is an API) | ``sft.threads`` |
| ``eval-base@...``, ``eval-sft@...`` | hub with ``hub.backend: vllm``: ``hub.vllm.tensor_parallel_size``; else 1 | ``sft.threads`` |
| anything else | 0 | 1 |

GPUs count only where there are some: on a machine (or a Ray cluster) without GPUs every stage
runs on the CPU, as before.  The params are the resolved ones of :func:`imitation_gap.core.config.
resolve_raw` (the hub recipe applies in ``world: hub``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..core.io import lookup


@dataclass(frozen=True)
class Needs:
    gpus: int = 0
    cpus: int = 1


def _get(params: dict, dotted: str, default):
    value = lookup(params, dotted)
    return default if value is None else value


def needs(stage: str, params: dict) -> Needs:
    """GPUs and CPU threads of one stage (by its DVC name), from the resolved params."""
    kind = stage.split("@", 1)[0]
    hub = _get(params, "world", "embedded") == "hub"
    threads = max(1, int(_get(params, "sft.threads", 1) or 1))
    if kind == "base":
        return Needs(gpus=0 if hub else 1, cpus=max(1, int(_get(params, "pretrain.threads", 1) or 1)))
    if kind == "sft":
        procs = max(1, int(_get(params, "sft.num_processes", 1)))
        return Needs(gpus=procs, cpus=threads * procs)
    if kind == "eval-teacher":
        return Needs(gpus=0, cpus=threads)
    if kind.startswith("eval"):
        vllm = hub and _get(params, "hub.backend", "hf") == "vllm"
        gpus = max(1, int(_get(params, "hub.vllm.tensor_parallel_size", 1))) if vllm else 1
        return Needs(gpus=gpus, cpus=threads)
    return Needs(gpus=0, cpus=1)


def load(path: str | Path = "params.yaml") -> dict:
    """The params as the stages see them (the hub recipe applied), as a plain mapping."""
    from ..core.config import resolve_raw

    path = Path(path)
    raw = yaml.safe_load(path.read_text()) if path.exists() else None
    return resolve_raw(raw if isinstance(raw, dict) else {})


def visible_gpus(arg: str | None) -> list[str]:
    """GPU ids this runner may hand out: ``--gpus 0,1,2,3`` (or ``none``), else $CUDA_VISIBLE_DEVICES,
    else the GPUs ``nvidia-smi -L`` lists; none found: an empty list (every stage on the CPU)."""
    if arg is not None:
        return [] if arg.strip().lower() in ("", "none") else [g.strip() for g in arg.split(",") if g.strip()]
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


class GpuPool:
    """Disjoint GPU sets for the stages that run side by side; never more than there are."""

    def __init__(self, ids: list[str]):
        self.ids = list(ids)
        self.free = list(ids)

    def __bool__(self) -> bool:
        return bool(self.ids)

    def fits(self, n: int) -> bool:
        """Could a stage needing ``n`` GPUs ever run here?"""
        return not self.ids or n <= len(self.ids)

    def take(self, n: int) -> list[str] | None:
        """``n`` free GPUs (the lowest ids first), or None when fewer are free now."""
        if not self.ids or n == 0:
            return []
        if n > len(self.free):
            return None
        got, self.free = self.free[:n], self.free[n:]
        return got

    def give_back(self, got: list[str]) -> None:
        self.free = sorted(set(self.free) | set(got), key=self.ids.index)

    def env(self, got: list[str]) -> dict:
        """The stage's CUDA_VISIBLE_DEVICES: its own GPUs ("" keeps a CPU stage off them); nothing
        on a machine without GPUs."""
        return {"CUDA_VISIBLE_DEVICES": ",".join(got)} if self.ids else {}
