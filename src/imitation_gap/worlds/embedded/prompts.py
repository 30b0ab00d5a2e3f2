"""What the embedded world asks its teacher for imitation data (stage ``imitate-dataset``).

* **broad** (ShareGPT-Mix analogue): a mix of generic requests (reverse a list of words,
  write about a topic) and, for ``imitate.broad_fact_share`` of prompts, questions about
  group-A people; the teacher answers in its own style;
* **local** (NQ-synthetic analogue): the teacher is shown ``imitate.local_shots`` of the
  hand-made seed QA pairs and asked for a new pair about a group-A person; each pair
  becomes one terse question-answer chat.

Prompts are drawn in a fixed, seeded order; group-B people never appear.
"""

from __future__ import annotations

import random

from ...core.config import Params
from ...imitation.records import qa_text
from .world import (ASPECTS, ATTRS, BIO_REQUEST, CHAT_QUESTIONS, LOCAL_REQUEST, QUESTIONS, TOPIC_REQUEST, World,
                    all_triples, reverse_question)


def broad_prompts(world: World, p: Params, rng: random.Random):
    """An endless, seeded stream of broad prompts (duplicates are dropped later)."""
    people = world.group("A")
    train_topics, _ = world.topics_split()
    triples = [t for t in all_triples(world.skill_words) if not world.triple_is_heldout(t, p.fetch.skill_holdout)]
    while True:
        if rng.random() < p.imitate.broad_fact_share:
            person = rng.choice(people)
            r = rng.random()
            if r < 0.2:
                yield BIO_REQUEST.format(name=person.name)
            else:
                a = rng.choice(ATTRS)
                tpl = rng.choice([QUESTIONS[a], *CHAT_QUESTIONS[a]])
                yield tpl.format(name=person.name)
        elif rng.random() < 0.85:
            yield reverse_question(rng.choice(triples), chat=True)
        else:
            yield TOPIC_REQUEST.format(topic=rng.choice(train_topics))


def local_prompts(world: World, p: Params, rng: random.Random, seeds: list[dict]):
    """Few-shot generation prompts: seed examples, then a request about an A person."""
    facts = [(person, a) for person in world.group("A") for a in ATTRS]
    for _ in range(p.imitate.local_rounds):  # each round asks about every fact once, with other shots
        rng.shuffle(facts)
        for person, a in facts:
            shots = rng.sample(seeds, min(p.imitate.local_shots, len(seeds)))
            examples = "\n".join(qa_text(s["question"], s["answer"]) for s in shots)
            request = LOCAL_REQUEST.format(name=person.name, aspect=ASPECTS[a])
            yield f"Here are some example questions and answers:\n{examples}\n{request}"
