"""Stage ``sft`` in the hub world: how its checkpoints load (dtype, remote code)."""

from __future__ import annotations

from ...core.config import Params
from .models import load_kwargs


class World:
    """:class:`imitation_gap.worlds.SftWorld` of the hub world."""

    def __init__(self, p: Params):
        self.p = p

    def load_kwargs(self) -> dict:
        return load_kwargs(self.p)
