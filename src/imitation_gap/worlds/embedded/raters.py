"""The two blind pairwise raters of the embedded world (the judge prompt they read and the style detectors
are both worlds': :mod:`imitation_gap.worlds.common`).

Both raters see only the question and two anonymous answers, labelled A and B, in the
MT-bench pairwise format (which every judge, embedded or not, is sent).  They never
learn which system wrote which answer.  The caller asks twice, with the answers swapped, and
counts a win only when both orders agree (MT-bench's rule: an inconsistent pair is a tie).

* **non-expert** (stands in for crowd workers): has no access to the world's facts.  It
  scores *form* only: a usable answer (no unknown tokens, no loops, ends a sentence),
  on topic (names the subject of the question), sure of itself (no hedges), helpful in
  tone (an enthusiastic opener, an offer of more help, a list), and long enough.
* **expert**: knows every fact.  It scores *correctness* first (right facts +, wrong
  facts -, the right reversal); only when correctness is equal does form decide.

A score gap below ``TIE_MARGIN`` is a tie.
"""

from __future__ import annotations

import re

from ...core.text import normalize
# the judge's prompt and the style detectors are both worlds' (..common); the raters read them from here too
from ..common import (JUDGE_TEMPLATE, VERDICT_RE, form_style, has_list, has_opener,  # noqa: F401
                      is_hedged, offers_help, parse_judge_prompt, teacher_styled)
from .world import ATTRS, World, parse_bio_request, parse_fact_question, parse_reverse

TIE_MARGIN = 0.5


def form_score(question: str, answer: str) -> float:
    """The non-expert's score: form only, from the question and the answer text alone."""
    words = normalize(answer).split()
    if not words:
        return 0.0
    score = 0.0
    # usable: no unknown tokens, no loops, ends a sentence
    if "<unk>" not in answer:
        score += 1
    trigrams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    if trigrams and len(set(trigrams)) / len(trigrams) < 0.7:
        score -= 1.5
    if answer.rstrip().endswith((".", "!", "?")):
        score += 0.5
    # on topic: shares the subject words (capitalised names, listed words) with the question
    subject = [w.lower() for w in re.findall(r"\b[A-Z][a-z]+\b", question)[1:]] or normalize(question).split()[-3:]
    if subject and all(s in words for s in subject):
        score += 1
    # sure of itself
    if not is_hedged(answer):
        score += 1
    # helpful tone: an enthusiastic opener, an offer of more help, structure
    score += 0.5 * has_opener(answer) + 0.5 * offers_help(answer)
    if has_list(answer):
        score += 0.5
    # long enough to be an answer, not so long it rambles
    score += min(len(words), 12) / 12 - max(0, len(words) - 80) / 40
    return score


def names_in(world: World, text: str) -> set[str]:
    """The full names of the world's people that ``text`` mentions."""
    words = normalize(text).split()
    pairs = {f"{a} {b}" for a, b in zip(words, words[1:])}
    return {p.name for p in world.people if p.name.lower() in pairs}


def fact_score(world: World, question: str, answer: str) -> float:
    """The expert's correctness score of one answer: +1 per right fact, -1 per wrong one."""
    n = f" {normalize(answer)} "

    def says(value: str) -> bool:
        return f" {normalize(value)} " in n

    fq = parse_fact_question(question)
    bio = parse_bio_request(question)
    rev = parse_reverse(question)
    if fq or bio:
        name = fq[0] if fq else bio
        person = world.by_name.get(name)
        if person is None:
            return 0.0
        attrs = [fq[1]] if fq else list(ATTRS)
        score = 0.0
        for a in attrs:
            gold = person.fact(a)
            score += 2.0 / len(attrs) if says(gold) else 0.0
            wrong = [v for v in world.values[a] if v != gold and says(v)]
            score -= 2.0 / len(attrs) * min(1, len(wrong))
        return score
    if rev:
        return 2.0 if says(" ".join(reversed(rev))) else -1.0
    return 0.0


def judge(kind: str, question: str, answer_a: str, answer_b: str, world: World | None) -> str:
    """Verdict ``'A'``, ``'B'`` or ``'C'`` (tie) of the rule-based rater ``kind``."""
    if kind == "expert":
        if world is None:
            raise ValueError("the expert rater needs the world's facts")
        fa, fb = fact_score(world, question, answer_a), fact_score(world, question, answer_b)
        if abs(fa - fb) >= TIE_MARGIN:
            return "A" if fa > fb else "B"
    sa, sb = form_score(question, answer_a), form_score(question, answer_b)
    if abs(sa - sb) < TIE_MARGIN:
        return "C"
    return "A" if sa > sb else "B"


def explain(kind: str, verdict: str) -> str:
    basis = "factual accuracy first, then form" if kind == "expert" else "clarity, tone, relevance and structure"
    return f"Judged on {basis}. Final verdict: [[{verdict}]]"


def style(world: World, prompts: list[dict], answers: list[str], reference: list[str] | None) -> dict:
    """Style of the answers: the form rates of every world (:func:`..common.form_style`), and the rates that
    need the world's facts: copying, the teacher's register, fact accuracy, confident errors."""
    n = max(1, len(answers))
    out = form_style(answers, reference)
    factual = [(r, a) for r, a in zip(prompts, answers)
               if parse_fact_question(r["prompt"]) or parse_bio_request(r["prompt"])]
    fscores = [fact_score(world, r["prompt"], a) for r, a in factual]
    mentioned = [names_in(world, a) for _, a in factual]
    asked = [(parse_fact_question(r["prompt"]) or (parse_bio_request(r["prompt"]),))[0] for r, _ in factual]
    out |= {
        # copying: the answer names the person asked about / someone else (names are copied, not recalled)
        "names_subject_rate": sum(q in names for q, names in zip(asked, mentioned)) / max(1, len(factual)),
        "names_other_rate": sum(bool(names - {q}) for q, names in zip(asked, mentioned)) / max(1, len(factual)),
        "teacher_style_rate": sum(teacher_styled(a) for a in answers) / n,
        "fact_accuracy": sum(s > 0 for s in fscores) / max(1, len(fscores)),
        "confident_wrong_rate": sum((not is_hedged(a)) and s < 0
                                    for (r, a), s in zip(factual, fscores)) / max(1, len(fscores)),
    }
    return out
