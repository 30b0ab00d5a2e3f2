"""NQ-synthetic prompts: what the hub world asks its teacher for local imitation data (stage ``imitate-dataset``)."""

from __future__ import annotations

import random
from typing import Iterator

from ...core.config import Params
from ...imitation.build import FewShotPrompts
from ...imitation.records import LOCAL_REQUEST_HUB, qa_text

# what the answer must look like, spelt out: a small instruct model (SmolLM2-135M) at temperature 1.0 then writes
# the pair in the examples' format; imitation.build.qa_pairs also reads the usual variants (Q:/A:, **Question:**)
LOCAL_FORMAT_HUB = "Reply with two lines only:\nQuestion: <a new question>\nAnswer: <its short answer>"


def local_prompt_hub(shots: list[dict]) -> str:
    examples = "\n\n".join(qa_text(s["question"], s["answer"]) for s in shots)
    return f"Here are some example questions and answers:\n\n{examples}\n\n{LOCAL_REQUEST_HUB} {LOCAL_FORMAT_HUB}"


def local_prompts_hub(p: Params, rng: random.Random, seeds: list[dict], per_round: int = 256) -> FewShotPrompts:
    """Few-shot NQ-synthetic prompts: ``imitate.local_shots`` seeds, drawn and ordered afresh.

    Yields ``(prompt, sampling)``.  Rounds of ``per_round`` distinct prompts are sampled
    at ``hub.local_temperature`` with the round number as the request ``seed``, so the
    same shots asked again in a later round give a new pair (and a new cache entry).  A pair
    that repeats a seed's question is not new data: it is refused and asked again.
    """
    k = min(p.imitate.local_shots, len(seeds))

    def stream() -> Iterator[tuple[str, dict]]:
        for r in range(1000):
            seen: set[str] = set()
            for _ in range(per_round * 4):
                if len(seen) >= per_round:
                    break
                prompt = local_prompt_hub(rng.sample(seeds, k))
                if prompt not in seen:
                    seen.add(prompt)
                    yield prompt, {"temperature": p.hub.local_temperature, "seed": r}

    return FewShotPrompts(stream(), [s["question"] for s in seeds])
