"""Stage ``fetch`` in the embedded world: people, corpus, eval sets and tokenizer under ``data/raw/``."""

from __future__ import annotations

import time

from ...core.config import Params
from ...core.io import atomic_dir
from ...core.paths import RAW
from ...core.tracking import log_metrics, mlflow_run
from .corpus import fetch


class World:
    """:class:`imitation_gap.worlds.FetchWorld` of the synthetic world of ``params.yaml``'s ``fetch`` section."""

    def __init__(self, p: Params):
        self.p = p

    def fetch(self) -> dict:
        p, t0 = self.p, time.time()
        with mlflow_run(p, "fetch", {"seed": p.seed, **p.section("fetch")}):
            with atomic_dir(RAW) as out:
                stats = fetch(p, out)
            log_metrics({k: v for k, v in stats.items() if k != "style_phrase_counts"} |
                        {"seconds": round(time.time() - t0, 1), "style_phrase_min": min(stats["style_phrase_counts"].values())})
        return stats
