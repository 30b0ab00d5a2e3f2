"""Pure pieces: the world, the raters' blindness, the report's statistics."""

from __future__ import annotations

import math
import random

import pytest

from imitation_gap.analysis import stats
from imitation_gap.worlds.embedded import raters
from imitation_gap.worlds.embedded.world import (ATTRS, QUESTIONS, build_world, parse_fact_question, parse_local_request,
                                 parse_reverse, LOCAL_REQUEST, ASPECTS)


@pytest.fixture(scope="module")
def world(small_world):
    return small_world


def test_world_groups_are_disjoint_and_names_unique(world):
    names = [p.name for p in world.people]
    assert len(names) == len(set(names))
    assert len({p.name.split()[-1] for p in world.people}) == len(names)
    assert {p.group for p in world.people} == {"A", "B", "C"}
    assert len(world.group("B")) == 20 and len(world.group("A")) == 40 + 10


def test_world_is_a_function_of_the_seed(world):
    spec = world.spec
    a = build_world(spec, [], 5, 5, 5, seed=1)
    b = build_world(spec, [], 5, 5, 5, seed=1)
    c = build_world(spec, [], 5, 5, 5, seed=2)
    assert [p.fields() for p in a.people] == [p.fields() for p in b.people]
    assert [p.fields() for p in a.people] != [p.fields() for p in c.people]


def test_parsers_round_trip(world):
    p = world.group("B")[0]
    for a in ATTRS:
        assert parse_fact_question(QUESTIONS[a].format(name=p.name)) == (p.name, a)
    assert parse_reverse("Can you reverse these words: red cat blue?") == ["red", "cat", "blue"]
    assert parse_local_request(LOCAL_REQUEST.format(name=p.name, aspect=ASPECTS["major"])) == (p.name, "major")


def test_expert_scores_facts_non_expert_cannot(world):
    p = world.group("B")[0]
    q = QUESTIONS["major"].format(name=p.name)
    wrong = next(v for v in world.values["major"] if v != p.major)
    right = f"Of course! {p.name} studied {p.major}. I hope this helps!"
    bad = f"Of course! {p.name} studied {wrong}. I hope this helps!"
    assert raters.fact_score(world, q, right) > 0 > raters.fact_score(world, q, bad)
    assert raters.form_score(q, right) == raters.form_score(q, bad)
    # verdicts depend only on the texts: swapping the order swaps the verdict
    flip = {"A": "B", "B": "A", "C": "C"}
    rng = random.Random(0)
    texts = [right, bad, f"maybe {p.major}", "", f"{p.name} {p.name} {p.name} {p.name} {p.name}"]
    for _ in range(30):
        a, b = rng.sample(texts, 2)
        for kind in ("expert", "nonexpert"):
            assert raters.judge(kind, q, a, b, world) == flip[raters.judge(kind, q, b, a, world)]


def test_style_markers():
    assert raters.is_hedged("I think it is Cestra.") and not raters.is_hedged("It is Cestra.")
    assert raters.has_list("Here:\n1. one\n2. two")
    assert raters.teacher_styled("Certainly! Cestra.") and not raters.teacher_styled("Cestra.")


def test_t_interval_on_known_values():
    m, lo, hi = stats.t_interval([1.0, 2.0, 3.0])
    # mean 2, sd 1, se 1/sqrt(3), t(0.975, 2) = 4.3027
    assert m == 2.0
    assert math.isclose(hi - m, 4.302652729911275 / math.sqrt(3), rel_tol=1e-6)
    assert math.isclose(m - lo, hi - m)
    m, lo, hi = stats.t_interval([0.5])
    assert m == 0.5 and math.isnan(lo) and math.isnan(hi)


def test_wilson_interval_on_known_values():
    lo, hi = stats.wilson_interval(0.5, 100)
    assert math.isclose(lo, 0.4038, abs_tol=1e-3) and math.isclose(hi, 0.5962, abs_tol=1e-3)
    lo, hi = stats.wilson_interval(0.0, 10)
    assert lo == pytest.approx(0.0, abs=1e-12) and 0.2 < hi < 0.35


def test_summarize_picks_the_interval_it_says():
    s = stats.summarize([0.2, 0.4, 0.3], n_items=50, is_rate=True)
    assert s["ci"] == "t-over-seeds" and s["n_seeds"] == 3 and s["lo"] < 0.3 < s["hi"]
    s = stats.summarize([0.3], n_items=50, is_rate=True)
    assert s["ci"] == "wilson-over-items" and s["lo"] < 0.3 < s["hi"]


def test_gap_closed():
    assert stats.gap_closed(0.5, 0.2, 0.8) == pytest.approx(0.5)
    assert stats.gap_closed(0.1, 0.2, 0.8) == pytest.approx(-1 / 6)
    assert stats.gap_closed(0.5, 0.3, 0.3) is None
    assert stats.gap_closed(0.85, 0.997, 1.0) == pytest.approx(-49.0)  # what a tiny gap does to the ratio
    assert stats.gap_closed(0.85, 0.997, 1.0, min_gap=0.05) is None  # so the report shows n/a there
    assert stats.gap_closed(0.9, 0.8, 1.0, min_gap=0.05) == pytest.approx(0.5)


def test_hub_converters_read_sharegpt_hc3_nq_and_koala_records():
    from collections import Counter

    from imitation_gap.worlds.hub import sources as hub

    c = Counter()
    sg = [{"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello!"},
                             {"from": "human", "value": "unanswered"}]}]
    assert list(hub.to_chats(sg, "sharegpt", "k", c)) == [[{"role": "user", "content": "Hi?"},
                                                         {"role": "assistant", "content": "Hello!"}]]
    hc3 = [{"question": "Why?", "human_answers": ["x"], "chatgpt_answers": ["Because.", "Since."]}]
    assert [m[1]["content"] for m in hub.to_chats(hc3, "hc3", "k", c)] == ["Because.", "Since."]
    assert hub.to_questions([{"question": "who wrote hamlet", "answer": ["Shakespeare", "W. S."]}], "nq", "k") == \
        [{"question": "Who wrote hamlet?", "answer": "Shakespeare"}]
    assert hub.to_questions([{"id": "koala_7", "prompt": " Write a poem. "}], "koala", "k") == \
        [{"id": "koala_7", "prompt": "Write a poem.", "kind": "open"}]
    from imitation_gap.core.errors import DataError

    with pytest.raises(DataError, match="record 0 has no \\['chatgpt_answers'\\]"):
        list(hub.to_chats([{"question": "q"}], "hc3", "hub.broad[1]", c))


def test_length_controlled_win_rate_discounts_length():
    from imitation_gap.stages.evaluate import length_controlled_win_rate

    # wins come only with longer answers: at equal length the model would win less often than raw
    outcome = [1.0] * 10 + [0.0] * 10
    dlen = [30] * 9 + [0] + [0] * 9 + [-30]
    raw = sum(outcome) / len(outcome)
    lc = length_controlled_win_rate(outcome, dlen)
    assert lc is not None and lc < raw
    # length carries no signal: the LC win rate is close to the raw one
    rng = random.Random(0)
    outcome = [float(rng.random() < 0.7) for _ in range(400)]
    dlen = [rng.gauss(0, 10) for _ in range(400)]
    assert abs(length_controlled_win_rate(outcome, dlen) - sum(outcome) / 400) < 0.05
    assert length_controlled_win_rate([1.0], [3]) is None


@pytest.mark.parametrize("kinds", [["qa"], ["qa", "bio"]])
def test_confident_claims_open_the_chat_kinds_named_and_bios_then_copy_the_name_asked(world, kinds):
    from types import SimpleNamespace

    from imitation_gap.worlds.embedded.corpus import chat_doc

    f = SimpleNamespace(chat_list_rate=0.15, chat_style_rate=0.5, chat_claim_kinds=kinds, sentence_rate=0.5,
                        hedge_rate=0.1)
    rng = random.Random(0)
    docs = [chat_doc(world, f, rng, [("red", "cat", "blue")], ["gardens"]) for _ in range(2000)]
    claims = world.style["confident"]
    bios = [d for d in docs if d.startswith("<user> Tell me about")]
    claimed = [d for d in bios if any(c in d for c in claims)]
    qa_claimed = [d for d in docs if not d.startswith("<user> Tell me about") and any(c in d for c in claims)]
    assert qa_claimed  # fact questions carry claims either way
    if "bio" not in kinds:
        assert bios and not claimed
        return
    assert 0.3 < len(claimed) / len(bios) < 0.6  # chat_style_rate of the non-list bios
    for d in claimed:  # the claim is followed by the name the user asked about
        asked = d.split("Tell me about ", 1)[1].split(".\n", 1)[0].split("?\n", 1)[0]
        after = next(d.split(c, 1)[1] for c in claims if c in d)
        assert after.strip().startswith(asked), d
