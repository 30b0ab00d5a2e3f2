"""NQ-synthetic prompts: what the hub world asks its teacher for local imitation data (stage ``imitate-dataset``)."""

from __future__ import annotations

import random
from typing import Iterator

from ...core.config import Params
from ...imitation.records import LOCAL_REQUEST_HUB, qa_text


def local_prompts_hub(p: Params, rng: random.Random, seeds: list[dict],
                      per_round: int = 256) -> Iterator[tuple[str, dict]]:
    """Few-shot NQ-synthetic prompts: ``imitate.local_shots`` seeds, drawn and ordered afresh.

    Yields ``(prompt, sampling)``.  Rounds of ``per_round`` distinct prompts are sampled
    at ``hub.local_temperature`` with the round number as the request ``seed``, so the
    same shots asked again in a later round give a new pair (and a new cache entry).
    """
    k = min(p.imitate.local_shots, len(seeds))
    for r in range(1000):
        seen: set[str] = set()
        for _ in range(per_round * 4):
            if len(seen) >= per_round:
                break
            examples = "\n".join(qa_text(s["question"], s["answer"]) for s in rng.sample(seeds, k))
            prompt = f"Here are some example questions and answers:\n{examples}\n{LOCAL_REQUEST_HUB}"
            if prompt not in seen:
                seen.add(prompt)
                yield prompt, {"temperature": p.hub.local_temperature, "seed": r}
