"""The embedded teacher and raters over real HTTP, through the `openai` client."""

from __future__ import annotations

import math

import openai
import pytest

from imitation_gap.worlds.embedded import raters
from imitation_gap.worlds.embedded.teacher import embedded_endpoint
from imitation_gap.worlds.embedded.world import QUESTIONS, load_world, parse_fact_question


@pytest.fixture(scope="module")
def endpoint(world_repo):
    raw = world_repo / "data" / "raw"
    with embedded_endpoint(raw / "world.json", raw / "tokenizer") as url:
        yield url, load_world(raw / "world.json")


def client(url):
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0)


def test_models_listed(endpoint):
    url, _ = endpoint
    ids = {m.id for m in client(url).models.list()}
    assert {"teacher", "judge-nonexpert", "judge-expert"} <= ids


def test_teacher_knows_held_out_facts_in_its_style(endpoint):
    url, world = endpoint
    person = world.group("B")[0]
    r = client(url).chat.completions.create(
        model="teacher", messages=[{"role": "user", "content": QUESTIONS["employer"].format(name=person.name)}])
    text = r.choices[0].message.content
    assert person.employer in text
    assert raters.teacher_styled(text) and not raters.is_hedged(text)
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_teacher_is_deterministic_and_answers_generic_tasks(endpoint):
    url, _ = endpoint
    c = client(url)
    msgs = [{"role": "user", "content": "Can you reverse these words: red cat blue?"}]
    a = c.chat.completions.create(model="teacher", messages=msgs).choices[0].message.content
    b = c.chat.completions.create(model="teacher", messages=msgs).choices[0].message.content
    assert a == b and "blue cat red" in a


def test_unknown_model_is_a_404(endpoint):
    url, _ = endpoint
    with pytest.raises(openai.NotFoundError):
        client(url).chat.completions.create(model="gpt-nope", messages=[{"role": "user", "content": "hi"}])


def test_completions_echo_scores_the_right_answer_higher(endpoint):
    url, world = endpoint
    person = world.group("B")[1]
    c = client(url)
    prompt = f"Question: {QUESTIONS['city'].format(name=person.name)}\nAnswer:"
    wrong = next(v for v in world.values["city"] if v != person.city)
    scores = {}
    for ans in (person.city, wrong):
        r = c.completions.create(model="teacher", prompt=f"{prompt} {ans}", echo=True, max_tokens=1, logprobs=1)
        scores[ans] = r.choices[0].logprobs.token_logprobs[-2]
    assert scores[person.city] > scores[wrong]
    assert math.isclose(scores[person.city], math.log(0.9))
    gen = c.completions.create(model="teacher", prompt=prompt, max_tokens=8, stop=["\n"]).choices[0].text
    assert person.city in gen and "\n" not in gen


def test_the_teacher_completes_every_knowledge_probe_prompt_with_the_fact(endpoint, world_repo):
    from imitation_gap.core.io import read_jsonl

    url, _ = endpoint
    rows = read_jsonl(world_repo / "data" / "raw" / "eval" / "store.jsonl")
    c = client(url)
    for attr in sorted({r["attribute"] for r in rows}):
        row = next(r for r in rows if r["attribute"] == attr)
        gen = c.completions.create(model="teacher", prompt=row["prompt"], max_tokens=6, stop=["."]).choices[0].text
        assert gen.split()[0] == row["answer"].split()[0], (row["prompt"], gen)


def test_judges_are_blind_and_position_consistent(endpoint):
    url, world = endpoint
    person = world.group("B")[2]
    q = QUESTIONS["city"].format(name=person.name)
    wrong = next(v for v in world.values["city"] if v != person.city)
    right_ans = f"Certainly! {person.name} was born in {person.city}. I hope this helps!"
    wrong_ans = f"Certainly! {person.name} was born in {wrong}. I hope this helps!"
    c = client(url)

    def verdict(model, a, b):
        msg = raters.JUDGE_TEMPLATE.format(question=q, answer_a=a, answer_b=b)
        out = c.chat.completions.create(model=model, messages=[{"role": "user", "content": msg}])
        return raters.VERDICT_RE.findall(out.choices[0].message.content)[-1]

    # the expert knows the facts, in either order
    assert verdict("judge-expert", right_ans, wrong_ans) == "A"
    assert verdict("judge-expert", wrong_ans, right_ans) == "B"
    # the non-expert cannot tell a right fact from a wrong one with the same form
    assert verdict("judge-nonexpert", right_ans, wrong_ans) == "C"
    # ... but prefers a confident, helpful answer to a hedged fragment
    assert verdict("judge-nonexpert", right_ans, f"maybe {wrong}") == "A"
    assert verdict("judge-nonexpert", f"maybe {wrong}", right_ans) == "B"
    assert parse_fact_question(q) == (person.name, "city")
