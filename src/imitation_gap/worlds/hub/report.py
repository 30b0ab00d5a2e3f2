"""Stage ``report`` in the hub world: F5 from list use and QA, open prompts side by side, unmarked."""

from __future__ import annotations

from ...core.config import Params
from ..common import teacher_styled


class World:
    """:class:`imitation_gap.worlds.ReportWorld` of the hub world."""

    # list use (the paper's 13% -> 81%) and QA accuracy: no one knows the facts of open prompts
    f5_metrics = ("style.list_rate", "capability.qa")
    example_kind = "open"

    def __init__(self, p: Params):
        self.p = p

    def styled(self, answer: str) -> bool:
        return teacher_styled(answer)

    def grade(self, prompt: str, answer: str) -> bool | None:
        return None

    def card_data(self, size: str) -> dict:
        return {"world": "hub", "hub_model": self.p.section("sizes").get(size, {}).get("hub")}
