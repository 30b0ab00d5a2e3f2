"""Stage ``report`` in the embedded world: which metrics show F5, which answers to show side by side, and
how to mark them (by the world's facts)."""

from __future__ import annotations

from . import raters
from .world import Part


class World(Part):
    """:class:`imitation_gap.worlds.ReportWorld` of the embedded world."""

    f5_metrics = ("style.teacher_style_rate", "style.fact_accuracy")  # the teacher's own markers; the world's facts
    example_kind = "fact"

    def styled(self, answer: str) -> bool:
        return raters.teacher_styled(answer)

    def grade(self, prompt: str, answer: str) -> bool | None:
        return raters.fact_score(self.people, prompt, answer) > 0

    def card_data(self, size: str) -> dict:
        return {"corpus": "data/raw/corpus.jsonl", "world": "embedded", "fetch": self.p.section("fetch")}
