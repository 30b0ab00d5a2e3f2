"""Stage ``sft`` in the embedded world: its checkpoints load with no extra arguments."""

from __future__ import annotations

from ...core.config import Params


class World:
    """:class:`imitation_gap.worlds.SftWorld` of the embedded world."""

    def __init__(self, p: Params):
        self.p = p

    def load_kwargs(self) -> dict:
        return {}
