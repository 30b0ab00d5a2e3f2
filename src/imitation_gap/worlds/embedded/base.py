"""Stage ``base`` in the embedded world: pretrain one base LM of a size and chain on the world's corpus."""

from __future__ import annotations

from pathlib import Path

from ...core.config import Params
from .pretrain import pretrain


class World:
    """:class:`imitation_gap.worlds.BaseWorld`: :func:`.pretrain.pretrain` (HF ``Trainer``, ``pretrain.*``)."""

    def __init__(self, p: Params):
        self.p = p

    def base_model(self, size: str, chain: int, out: Path) -> dict:
        return pretrain(self.p, size, chain, out)
