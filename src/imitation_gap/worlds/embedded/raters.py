"""The two blind pairwise raters of the embedded world, the judge prompt they read, and the style detectors.

Both raters see only the question and two anonymous answers, labelled A and B, in the
MT-bench pairwise format below (which every judge, embedded or not, is sent).  They never
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
import statistics

from ...core.text import normalize
from .world import ATTRS, World, parse_bio_request, parse_fact_question, parse_reverse

TIE_MARGIN = 0.5

JUDGE_TEMPLATE = """[System]
Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to the user question displayed below. Avoid any position biases and do not let the length of the responses or the names of the assistants influence your evaluation. After providing your explanation, output your final verdict by strictly following this format: "[[A]]" if assistant A is better, "[[B]]" if assistant B is better, and "[[C]]" for a tie.

[User Question]
{question}

[The Start of Assistant A's Answer]
{answer_a}
[The End of Assistant A's Answer]

[The Start of Assistant B's Answer]
{answer_b}
[The End of Assistant B's Answer]"""

_JUDGE_RE = re.compile(
    r"\[User Question\]\n(?P<q>.*?)\n\n\[The Start of Assistant A's Answer\]\n(?P<a>.*?)\n"
    r"\[The End of Assistant A's Answer\]\n\n\[The Start of Assistant B's Answer\]\n(?P<b>.*?)\n"
    r"\[The End of Assistant B's Answer\]", re.S)
VERDICT_RE = re.compile(r"\[\[([ABC])\]\]")

HEDGE_WORDS = ("i think", "maybe", "probably", "not sure", "perhaps", "i do not know", "might")


def parse_judge_prompt(text: str) -> tuple[str, str, str] | None:
    m = _JUDGE_RE.search(text)
    return (m.group("q"), m.group("a"), m.group("b")) if m else None


def is_hedged(answer: str) -> bool:
    n = f" {normalize(answer)} "
    return any(f" {h} " in n for h in HEDGE_WORDS)


def has_list(answer: str) -> bool:
    return bool(re.search(r"(^|\n)\s*\d+\s*[.)]", answer))


def has_opener(answer: str) -> bool:
    """Starts with an exclamation of words ("Certainly!", "Great question!"); punctuation alone
    ("!!!!!!", what an untrained model may emit) is not a phrase."""
    first = re.split(r"(?<=[.!?])\s", answer.strip(), maxsplit=1)[0]
    words = re.findall(r"[A-Za-z]+", first)
    return first.endswith("!") and 1 <= len(words) <= 4 and len(first.split()) <= 4


def offers_help(answer: str) -> bool:
    return bool(re.search(r"\b(help|helps|ask|questions)\b", answer.lower()))


def teacher_styled(answer: str) -> bool:
    """The chat-assistant register: an exclamatory opener or an offer of more help."""
    return has_opener(answer) or offers_help(answer)


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


def style(world: World | None, prompts: list[dict], answers: list[str], reference: list[str] | None) -> dict:
    """Style of the answers; the rates that need the world's facts or teacher only when ``world`` is given."""
    n = max(1, len(answers))
    words = [len(a.split()) for a in answers]
    out = {
        "list_rate": sum(has_list(a) for a in answers) / n,
        "authoritative_rate": sum(not is_hedged(a) for a in answers if a) / n,
        "mean_words": statistics.fmean(words) if words else 0.0,
    }
    if world is not None:
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
    if reference is not None:
        ref_words = [len(a.split()) for a in reference]
        try:
            out["length_corr_teacher"] = statistics.correlation(words, ref_words)
        except statistics.StatisticsError:  # constant lengths
            out["length_corr_teacher"] = 0.0
    return out
