"""Stage ``fetch`` in the hub world: the data sets of ``hub.*`` under ``data/raw/``."""

from __future__ import annotations

from ...core.config import Params
from ...core.io import atomic_dir
from ...core.paths import RAW
from ...core.tracking import log_metrics, mlflow_run
from .sources import fetch_hub


class World:
    """:class:`imitation_gap.worlds.FetchWorld` of the hub world."""

    def __init__(self, p: Params):
        self.p = p

    def fetch(self) -> dict:
        p = self.p
        with mlflow_run(p, "fetch", {"seed": p.seed, "hub": p.section("hub")}):
            with atomic_dir(RAW) as out:
                stats = fetch_hub(p, out)
            log_metrics(stats)
        return stats
