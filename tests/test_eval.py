"""lm-eval on a saved tiny checkpoint, through the eval stage's CLI."""

from __future__ import annotations

import json
import sys

from conftest import run
from imitation_gap.core.io import read_jsonl


def test_eval_stage_on_a_tiny_base_checkpoint(world_repo):
    r = run([sys.executable, "-m", "imitation_gap.stages.evaluate", "--size", "S"], world_repo)
    m = json.loads((world_repo / "metrics" / "runs" / "S-base-s0.json").read_text())
    assert m["run"] == "S-base-s0" and m["kind"] == "base"
    for task in ("qa", "mc", "skill"):
        samples = read_jsonl(world_repo / "eval" / "S-base-s0" / f"samples_{task}.jsonl")
        assert len(samples) == m["n"][task] > 0
        # lm-eval's own per-item scores agree with the aggregate it reported
        assert abs(sum(s["acc"] for s in samples) / len(samples) - m["capability"][task]) < 1e-9
    answers = read_jsonl(world_repo / "eval" / "S-base-s0" / "answers.jsonl")
    assert len(answers) == m["n"]["pref"] and all(a["teacher"] for a in answers)
    judgements = read_jsonl(world_repo / "eval" / "S-base-s0" / "judgements.jsonl")
    # every prompt judged by both raters in both orders
    assert len(judgements) == 4 * m["n"]["pref"]
    assert {j["order"] for j in judgements} == {"model-first", "teacher-first"}
    for rater in ("nonexpert", "expert"):
        p = m["preference"][rater]
        assert p["win"] + p["tie"] + p["loss"] + p["unjudged"] == m["n"]["pref"]
    assert "eval S-base-s0" in r.stderr


def test_each_knowledge_probe_prompt_goes_on_in_the_corpus_only_with_its_attribute(world_repo):
    """The probe ("X, born in" -> a city) scores a base on what it stored: a prompt that the corpus also
    continues with another attribute ("X was born in" -> "the year 1967") marks a right recall as a miss."""
    import re

    from imitation_gap.worlds.embedded.world import PROBE_SENTENCES, probe_pattern

    raw = world_repo / "data" / "raw"
    corpus = "\n".join(r["text"] for r in read_jsonl(raw / "corpus.jsonl"))
    rows = read_jsonl(raw / "eval" / "store.jsonl")
    values = {r["attribute"]: set(r["candidates"]) for r in rows}
    assert set(values) == set(PROBE_SENTENCES)  # every attribute is probed
    for attr, sentence in PROBE_SENTENCES.items():
        prefix = probe_pattern(attr)
        assert all(re.fullmatch(prefix, r["prompt"]) for r in rows if r["attribute"] == attr)
        after = [m.group("next") for m in re.finditer(prefix + r" (?P<next>\w+)", corpus)]
        assert len(after) > 10, attr  # the corpus does use this phrasing
        others = sorted({w for w in after if w not in values[attr]})
        assert not others, f"{attr}: the corpus also continues {sentence!r} with {others[:5]}"
