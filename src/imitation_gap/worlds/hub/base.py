"""Stage ``base`` in the hub world: download ``sizes.<size>.hub`` (safetensors only)."""

from __future__ import annotations

from pathlib import Path

from ...core.config import Params
from ...core.tracking import log_metrics, mlflow_run
from .models import download_model


class World:
    """:class:`imitation_gap.worlds.BaseWorld` of the hub world."""

    def __init__(self, p: Params):
        self.p = p

    def base_model(self, size: str, chain: int, out: Path) -> dict:
        """The same download for every chain: a released model has one pretraining run (DVC's cache stores the
        identical files once)."""
        p = self.p
        with mlflow_run(p, f"base@{size}-{chain}", {"size": size, "hub": p.section("sizes").get(size, {})}):
            info = download_model(p, size, out)
            log_metrics({"params": info["params"]})
        return info
