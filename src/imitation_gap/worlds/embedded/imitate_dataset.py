"""Stage ``imitate-dataset`` in the embedded world: what it asks its teacher, and the teacher's format."""

from __future__ import annotations

import random

from ...core.io import read_jsonl
from ...core.paths import RAW
from ...imitation.harvest import LANG_FILTERS, load_sharegpt
from ...imitation.records import Prompts, Transcripts
from .prompts import broad_prompts, local_prompts
from .teacher import TeacherPart


class World(TeacherPart):
    """:class:`imitation_gap.worlds.ImitateWorld` of the embedded world."""

    def held_out_names(self) -> set[str]:
        return {x.name for x in self.people.group("B")}

    def imitation_source(self, kind: str) -> Transcripts | Prompts:
        p = self.p
        if kind == "broad" and p.imitate.harvest_path:  # existing transcripts instead of new teacher calls
            rows, stats = load_sharegpt(p.imitate.harvest_path, LANG_FILTERS[p.imitate.harvest_language])
            return Transcripts(rows, stats, f"imitate.harvest_path = {p.imitate.harvest_path!r}")
        rng = random.Random(f"{p.seed}-{kind}")
        default = {"temperature": p.teacher.temperature}
        if kind == "broad":
            return ((q, default) for q in broad_prompts(self.people, p, rng))
        return ((q, default) for q in local_prompts(self.people, p, rng, read_jsonl(RAW / "seed_qa.jsonl")))
