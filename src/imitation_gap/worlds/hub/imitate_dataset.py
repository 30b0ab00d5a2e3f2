"""Stage ``imitate-dataset`` in the hub world: the ShareGPT-Mix pool of ``fetch``, and NQ-synthetic prompts."""

from __future__ import annotations

import random

from ...core.config import Params
from .answers import answer_problem
from ...core.io import read_jsonl
from ...core.paths import RAW
from ...imitation.records import Prompts, Transcripts
from .prompts import local_prompts_hub


class World:
    """:class:`imitation_gap.worlds.ImitateWorld` of the hub world."""

    def __init__(self, p: Params):
        self.p = p

    def held_out_names(self) -> set[str]:
        return set()

    def imitation_source(self, kind: str) -> Transcripts | Prompts:
        if kind == "broad":  # the ShareGPT-Mix pool of fetch: no new teacher calls
            rows = [{"messages": r["messages"]} for r in read_jsonl(RAW / "broad_pool.jsonl")]
            return Transcripts(rows, {"records": len(rows), "source": "hub.broad"},
                               "the broad pool of hub.broad (data/raw/broad_pool.jsonl)")
        return local_prompts_hub(self.p, random.Random(f"{self.p.seed}-{kind}"), read_jsonl(RAW / "seed_qa.jsonl"))

    def answer_problem(self, kind: str, answer: str) -> str | None:
        # a real teacher has no fixed format: form only (hub.answer_check); the client also refuses empty or
        # undecodable text and any answer that holds a secret
        c = self.p.hub.answer_check
        return answer_problem(answer, c.min_word_share, c.control_tokens)
