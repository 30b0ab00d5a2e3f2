"""Imitation data from teacher answers, the same in both worlds: the world-independent half of stage
``imitate-dataset`` (:mod:`imitation_gap.stages.imitate_dataset`; the worlds supply the prompts or transcripts).

* :func:`build_kind`: ask the teacher for what the largest amount of ``grid.amounts`` needs (plus a
  margin for rejects), after checking that the prompt pool can reach it at all: prompts asked before
  are skipped, a question the teacher wrote before is dropped, an answer in the wrong format is a
  malformed response (never cached), a prompt that names a held-out person is an error;
* :func:`harvest_kind`: :class:`Transcripts` (existing chats, e.g. ShareGPT) instead of new teacher calls;
* both decontaminate: a row whose user text shares a word n-gram (``imitate.decontam_ngram``)
  with any eval prompt is removed (:func:`eval_ngrams`, :func:`contaminated`);
* token accounting: each accepted row gets its id and its token count, chat template included
  (:func:`accept`); :func:`prefix_for` cuts the shortest prefix holding an amount, so a larger
  amount contains every smaller one.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable

from ..core.config import Params
from ..core.errors import DataError, TooManyFailures
from ..core.io import read_jsonl
from ..core.text import normalize, tidy
from .records import Prompts, Transcripts

RAW = Path("data/raw")

_QA_RE = re.compile(r"Question:\s*(?P<q>.+?)\s*\nAnswer:\s*(?P<a>.+)", re.S)
# the variants a small instruct model writes around a pair, one line each: "**Question:**", "Q:", "Question 1:",
# "New question -", list marks or quotes before them; and "Question: ...? Answer: ..." on one line
_MARK = r"[ \t>*#-]*(?:\*\*|__)?"
_LABEL = r"\s*(?:\d+\s*)?(?:\*\*|__)?\s*[:.)\-]\s*(?:\*\*|__)?\s*"
_PAIR_RE = re.compile(rf"(?im)^{_MARK}(?:new\s+)?(?:question|q){_LABEL}(?P<q>\S[^\n]*?)\s*\n+"
                      rf"{_MARK}(?:answer|a){_LABEL}(?P<a>\S[^\n]*)")
_INLINE_RE = re.compile(r"(?i)\b(?:question|q)\s*:\s*(?P<q>[^\n?]+\?)\s*(?:answer|a)\s*:\s*(?P<a>\S[^\n]*)")
_ANSWER_LABEL = re.compile(r"(?i)^(?:answer\s*:\s*)+")


def qa_pairs(text: str) -> list[tuple[str, str]]:
    """Every (question, answer) pair of a response, in the order written, in any of the variants above."""
    found = [(m.start(), m.group("q"), m.group("a")) for r in (_PAIR_RE, _INLINE_RE) for m in r.finditer(text)]
    out = []
    for _, q, a in sorted(found):
        q, a = q.strip().strip("*_ "), _ANSWER_LABEL.sub("", a.strip().strip("*_ ")).strip()
        if q and a and (q, a) not in out:
            out.append((q, a))
    return out


def to_row(kind: str, prompt: str, response: str, skip: frozenset[str] | set[str] = frozenset()) -> dict | None:
    """One chat row from a teacher response; None if the response is unusable.

    A local pair is the response's first ``Question: ...`` / ``Answer: ...``; failing that (or if that one's
    question, :func:`~imitation_gap.core.text.normalize`-d, is in ``skip``: a few-shot example copied), the
    first pair of :func:`qa_pairs` whose question is not in ``skip``."""
    if kind == "broad":
        return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]}
    text = tidy(response)
    m = _QA_RE.search(text)
    if m and not (skip and normalize(m.group("q")) in skip):
        q, a = m.group("q").strip(), _ANSWER_LABEL.sub("", m.group("a").strip().split("\n")[0]).strip()
    else:
        q, a = next(((q, a) for q, a in qa_pairs(text) if normalize(q) not in skip), (None, None))
        if q is None:
            return None
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


class FewShotPrompts:
    """A :data:`Prompts` stream whose prompts show ``examples`` (few-shot questions): a pair that repeats one of
    them is no new data (:func:`build_kind` refuses it as a malformed answer, ``copied_example``, and asks again)."""

    def __init__(self, stream: Prompts, examples: list[str]):
        self.stream, self.examples = iter(stream), list(examples)

    def __iter__(self) -> "FewShotPrompts":
        return self

    def __next__(self) -> tuple[str, dict]:
        return next(self.stream)


def eval_ngrams(n: int) -> set[tuple[str, ...]]:
    """Word n-grams of every eval prompt (embedded: qa, mc, skill, pref; hub: pref, decontam)."""
    grams: set[tuple[str, ...]] = set()
    for name in ("qa", "mc", "skill", "pref", "decontam"):
        if not (RAW / "eval" / f"{name}.jsonl").exists():
            continue
        for r in read_jsonl(RAW / "eval" / f"{name}.jsonl"):
            words = normalize(r.get("question") or r.get("prompt", "")).split()
            grams.update(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return grams


def contaminated(text: str, grams: set, n: int) -> bool:
    words = normalize(text).split()
    return any(tuple(words[i:i + n]) in grams for i in range(len(words) - n + 1))


def accept(row: dict, rows: list[dict], kind: str, tok) -> int:
    """Give ``row`` its id and token count (chat template included), append it; return its tokens."""
    row["n_tokens"] = len(tok.apply_chat_template(row["messages"], tokenize=True, return_dict=True)["input_ids"])
    row["id"] = f"{kind}-{len(rows):06d}"
    rows.append(row)
    return row["n_tokens"]


def harvest_kind(p: Params, tok, grams: set, src: Transcripts, b_names: set[str]) -> tuple[list[dict], dict]:
    """Broad data from existing transcripts instead of new teacher calls."""
    rows, stats, where = src.rows, src.stats, src.where
    out, removed, total = [], 0, 0
    for row in rows:
        text = " ".join(m["content"] for m in row["messages"] if m["role"] == "user")
        if contaminated(text, grams, p.imitate.decontam_ngram) or any(n in text for n in b_names):
            removed += 1
            continue
        total += accept(row, out, "broad", tok)
    stats = {**stats, "rows": len(out), "tokens": total, "decontaminated": removed,
             "source": stats.get("source", "harvest")}
    if total < max(p.grid.amounts):
        raise DataError(f"{where} holds {total} tokens after dedup and decontamination; grid.amounts asks for "
                        f"{max(p.grid.amounts)}. Lower grid.amounts or harvest more transcripts.")
    return out, stats


MAX_BATCH = 256  # prompts in one chat_many call, at most
MARGIN = 0.25  # prompts asked for beyond the estimated need, as a share of it, for rejects (duplicates, bad format)
MAX_DRAWS = 200_000  # prompts drawn from a world's stream at most (broad streams are endless; duplicates are dropped)
ANSWER_SLACK = 4  # a pre-check's bound counts each answer as up to this many times teacher.max_tokens of our tokens


class _Pool:
    """The distinct prompts of a world's stream, drawn lazily in its order (held-out people refused)."""

    def __init__(self, stream: Prompts, kind: str, b_names: set[str]):
        self.stream, self.kind, self.b_names = stream, kind, b_names
        self.items: list[tuple[str, dict]] = []
        self.dupes_before: list[int] = []  # stream duplicates dropped before each item
        self.seen: set[tuple[str, str]] = set()
        self.dupes = self.draws = 0
        self.exhausted = False

    def fill(self, n: int) -> bool:
        """Draw until ``n`` distinct prompts are known; False if the stream ends first."""
        while len(self.items) < n and not self.exhausted:
            try:
                prompt, ex = next(self.stream)
            except StopIteration:
                self.exhausted = True
                break
            self.draws += 1
            if self.draws > MAX_DRAWS:
                self.exhausted = True
                break
            key = (prompt, repr(sorted(ex.items())))
            if key in self.seen:
                self.dupes += 1
                continue
            self.seen.add(key)
            if any(n in prompt for n in self.b_names):
                raise DataError(f"a {self.kind} prompt names a held-out (group B) person: {prompt!r}")
            self.items.append((prompt, ex))
            self.dupes_before.append(self.dupes)
        return len(self.items) >= n


def _too_much(kind: str, target: int, tokens: int, rows: int, before: bool = False) -> DataError:
    how = (f"the prompt pool could yield at most ~{tokens} tokens ({rows} distinct prompts; each answer counted "
           f"as up to {ANSWER_SLACK} x teacher.max_tokens), so no request was sent" if before else
           f"the prompt pool yields only {tokens} tokens ({rows} unique rows)")
    lower = "well below that" if before else f"to <= {tokens}"
    return DataError(
        f"grid.amounts asks for {target} tokens of {kind} imitation data, but {how}. Lower the largest amount in "
        f"grid.amounts {lower}, or enlarge the pool (fetch.n_people_a for local data; hub.local_seeds in "
        "the hub world).")


def build_kind(kind: str, stream: Prompts, client: Any, p: Params, tok, grams: set,
               b_names: set[str], check: Callable[[str], str | None] | None = None) -> tuple[list[dict], dict]:
    """Rows of ``kind`` from the teacher's answers to ``stream``, until the largest amount.

    ``client``: an :class:`~imitation_gap.llm.client.LLMClient` (anything with its ``chat_many``);
    ``b_names``: held-out people no prompt may name; ``check(answer)``: why an answer is unusable
    (the world's format), or None: such an answer is a malformed response, never cached.

    Before the first request, an upper bound of what the prompt pool can yield is checked against
    the amount.  Then the teacher is asked for what the amount still needs, estimated from the
    tokens per prompt so far, plus :data:`MARGIN` for rejects: the accepted rows (a prefix of the
    stream's answers) are the same whatever the batch sizes."""
    default = {"temperature": p.teacher.temperature}
    target = max(p.grid.amounts)
    pool = _Pool(stream, kind, b_names)
    overhead = len(tok.apply_chat_template([{"role": "user", "content": ""}, {"role": "assistant", "content": ""}],
                                           tokenize=True, return_dict=True)["input_ids"])
    answer_max = ANSWER_SLACK * p.teacher.max_tokens

    def row_max(prompt: str) -> int:  # a row: the prompt and the answer (broad), or a pair cut from the answer
        return overhead + answer_max + (len(tok(prompt, add_special_tokens=False)["input_ids"]) if kind == "broad"
                                        else 0)

    bound = i = 0
    while bound < target and pool.fill(i + 1):
        bound += row_max(pool.items[i][0])
        i += 1
    if bound < target:
        raise _too_much(kind, target, bound, len(pool.items), before=True)

    skip = frozenset(normalize(q) for q in getattr(stream, "examples", ()))

    def fits(answer: str) -> str | None:
        if to_row(kind, "", answer, skip) is None:
            return "copied_example" if skip and to_row(kind, "", answer) is not None else "not_qa_format"
        return check(answer) if check else None

    seen_rows: set[str] = set()
    rows: list[dict] = []
    tokens = removed = dropped_dupes = failed = 0
    nxt = 0  # the next pool item to ask for
    per_prompt = None  # accepted tokens per prompt asked so far
    while tokens < target:
        need = target - tokens
        est = (need / per_prompt) if per_prompt else need / row_max(pool.items[nxt][0] if nxt < len(pool.items)
                                                                     else "")
        want = max(1, min(MAX_BATCH, math.ceil(est * (1 + MARGIN)) + 1))
        if not pool.fill(nxt + want) and nxt >= len(pool.items):
            break
        batch = pool.items[nxt:nxt + want]
        extra = batch[0][1]
        batch = batch[:next((j for j, (_, ex) in enumerate(batch) if ex != extra), len(batch))]  # one sampling
        sampling = {**(extra or default), "max_tokens": p.teacher.max_tokens}
        items = [(f"{kind}-{nxt + j}", [{"role": "user", "content": q}]) for j, (q, _) in enumerate(batch)]
        # teacher.max_failure_fraction holds for the stage's requests: of the ~nxt + want that the amount needs
        allowed = max(0.0, p.teacher.max_failure_fraction * (nxt + want) - failed)
        try:
            answers = client.chat_many(items, sampling, desc=f"teacher ({kind})", validate=fits,
                                       max_failure_fraction=min(1.0, allowed / len(items)))
        except TooManyFailures:
            n_failed = sum(rid.startswith(f"{kind}-") for rid in client.stats.failed_ids)
            raise TooManyFailures(
                f"teacher: {n_failed} {kind} prompts failed after retries (reasons: "
                f"{dict(client.stats.failure_reasons)}; ids {client.stats.failed_ids[:5]}), more than "
                f"teacher.max_failure_fraction = {p.teacher.max_failure_fraction:g} of the ~{nxt + want} prompts the "
                "amount needs. Good answers are cached; fix the endpoint, or raise teacher.malformed_retries / "
                "teacher.max_failure_fraction, and re-run.") from None
        failed += len(items) - len(answers)
        for j, ((rid, _), (prompt, _)) in enumerate(zip(items, batch)):
            used = nxt + j + 1
            if rid not in answers:
                continue  # counted as a failure by the client
            row = to_row(kind, prompt, answers[rid]["content"], skip)
            user = row["messages"][0]["content"]
            if user in seen_rows:  # the teacher wrote this question before
                dropped_dupes += 1
                continue
            seen_rows.add(user)
            if contaminated(user, grams, p.imitate.decontam_ngram):
                removed += 1
                continue
            tokens += accept(row, rows, kind, tok)
            if tokens >= target:
                break
        nxt = used
        per_prompt = tokens / nxt if tokens else None
    stats = {"rows": len(rows), "tokens": tokens,
             "duplicates_dropped": dropped_dupes + (pool.dupes_before[nxt - 1] if nxt else 0),
             "decontaminated": removed, "prompts_used": nxt}
    if tokens < target:
        raise _too_much(kind, target, tokens, len(rows))
    return rows, stats


def prefix_for(rows: list[dict], amount: int) -> list[dict]:
    """The shortest prefix of ``rows`` holding at least ``amount`` tokens."""
    out, total = [], 0
    for r in rows:
        if total >= amount:
            break
        out.append(r)
        total += r["n_tokens"]
    return out
