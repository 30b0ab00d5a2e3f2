"""What both worlds share: the judge's prompt and verdict, and the style detectors.

Every judge, embedded or real, is sent MT-bench's pairwise prompt (:data:`JUDGE_TEMPLATE`) and answers
with ``[[A]]``, ``[[B]]`` or ``[[C]]`` (:data:`VERDICT_RE`).  The style detectors measure the paper's
form metrics (list use, authoritative tone, the chat-assistant register) from the answer text alone,
so they mean the same in every world.  Neither world imports the other: both import this module.
"""

from __future__ import annotations

import re
import statistics

from ..core.text import normalize

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


def form_style(answers: list[str], reference: list[str] | None) -> dict:
    """Style rates that need no facts: list use, authoritative tone, length (and its correlation with the
    teacher's ``reference`` answers, when given)."""
    n = max(1, len(answers))
    words = [len(a.split()) for a in answers]
    out = {
        "list_rate": sum(has_list(a) for a in answers) / n,
        "authoritative_rate": sum(not is_hedged(a) for a in answers if a) / n,
        "mean_words": statistics.fmean(words) if words else 0.0,
    }
    if reference is not None:
        ref_words = [len(a.split()) for a in reference]
        try:
            out["length_corr_teacher"] = statistics.correlation(words, ref_words)
        except statistics.StatisticsError:  # constant lengths
            out["length_corr_teacher"] = 0.0
    return out
