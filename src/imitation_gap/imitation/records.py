"""The imitation records both worlds hand to stage ``imitate-dataset``, and the QA format of local imitation.

A world supplies either :data:`Prompts` (what to ask the teacher) or :class:`Transcripts` (chats that exist
already); :mod:`.build` turns either into rows.  Local imitation (the paper's NQ-synthetic) shows the teacher
QA pairs in :func:`qa_text`'s format and asks for a new one with :data:`LOCAL_REQUEST_HUB`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

Prompts = Iterator[tuple[str, dict]]
"""What a world asks the teacher: ``(prompt, sampling)`` pairs, in a fixed, seeded order."""


@dataclass
class Transcripts:
    """Imitation data that exists already (no teacher calls): chat rows, their reading stats, and where they
    came from (for messages)."""

    rows: list[dict]
    stats: dict
    where: str


LOCAL_REQUEST_HUB = "Write a new question and answer in the same format, on a different topic."


def qa_text(q: str, a: str) -> str:
    """One QA block in the format of the pretraining corpus and the few-shot tasks."""
    return f"Question: {q}\nAnswer: {a}"
