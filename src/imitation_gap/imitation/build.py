"""Imitation data from teacher answers, the same in both worlds: the world-independent half of stage
``imitate-dataset`` (:mod:`imitation_gap.stages.imitate_dataset`; the worlds supply the prompts or transcripts).

* :func:`build_kind`: ask the teacher, in batches of 256 prompts, until the largest amount of
  ``grid.amounts`` is reached: prompts asked before are skipped, a question the teacher wrote
  before is dropped, a prompt that names a held-out person is an error;
* :func:`harvest_kind`: :class:`Transcripts` (existing chats, e.g. ShareGPT) instead of new teacher calls;
* both decontaminate: a row whose user text shares a word n-gram (``imitate.decontam_ngram``)
  with any eval prompt is removed (:func:`eval_ngrams`, :func:`contaminated`);
* token accounting: each accepted row gets its id and its token count, chat template included
  (:func:`accept`); :func:`prefix_for` cuts the shortest prefix holding an amount, so a larger
  amount contains every smaller one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..core.config import Params
from ..core.errors import DataError
from ..core.io import read_jsonl
from ..core.text import normalize, tidy

RAW = Path("data/raw")

Prompts = Iterator[tuple[str, dict]]
"""What a world asks the teacher: ``(prompt, sampling)`` pairs, in a fixed, seeded order."""


@dataclass
class Transcripts:
    """Imitation data that exists already (no teacher calls): chat rows, their reading stats, and where they
    came from (for messages)."""

    rows: list[dict]
    stats: dict
    where: str


_QA_RE = re.compile(r"Question:\s*(?P<q>.+?)\s*\nAnswer:\s*(?P<a>.+)", re.S)


def to_row(kind: str, prompt: str, response: str) -> dict | None:
    """One chat row from a teacher response; None if the response is unusable."""
    if kind == "broad":
        return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]}
    m = _QA_RE.search(tidy(response))
    if not m:
        return None
    return {"messages": [{"role": "user", "content": m.group("q").strip()},
                         {"role": "assistant", "content": m.group("a").strip().split("\n")[0]}]}


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


def build_kind(kind: str, stream: Prompts, client: Any, p: Params, tok, grams: set,
               b_names: set[str]) -> tuple[list[dict], dict]:
    """Rows of ``kind`` from the teacher's answers to ``stream``, until the largest amount.

    ``client``: an :class:`~imitation_gap.llm.client.LLMClient` (anything with its ``chat_many``);
    ``b_names``: held-out people no prompt may name."""
    default = {"temperature": p.teacher.temperature}
    target = max(p.grid.amounts)
    seen: set[tuple[str, str]] = set()
    seen_rows: set[str] = set()
    rows: list[dict] = []
    tokens = 0
    removed = dropped_dupes = malformed = 0
    exhausted = False
    attempts = 0
    pending: tuple[str, dict] | None = None
    while tokens < target and not exhausted:
        batch: list[str] = []
        extra: dict | None = None  # one sampling per batch (the hub's local rounds change it)
        while len(batch) < 256:
            try:
                prompt, ex = pending or next(stream)
            except StopIteration:
                exhausted = True
                break
            pending = None
            if extra is not None and ex != extra:
                pending = (prompt, ex)
                break
            extra = ex
            attempts += 1
            if attempts > 200_000:
                exhausted = True
                break
            key = (prompt, repr(sorted(ex.items())))
            if key in seen:
                dropped_dupes += 1
                continue
            seen.add(key)
            if any(n in prompt for n in b_names):
                raise DataError(f"a {kind} prompt names a held-out (group B) person: {prompt!r}")
            batch.append(prompt)
        if not batch:
            break
        sampling = {**(extra or default), "max_tokens": p.teacher.max_tokens}
        items = [(f"{kind}-{len(seen)}-{i}", [{"role": "user", "content": q}]) for i, q in enumerate(batch)]
        answers = client.chat_many(items, sampling, desc=f"teacher ({kind})")
        for (rid, msgs), prompt in zip(items, batch):
            if rid not in answers:
                continue  # counted as a failure by the client
            row = to_row(kind, prompt, answers[rid]["content"])
            if row is None:
                malformed += 1
                continue
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
    stats = {"rows": len(rows), "tokens": tokens, "duplicates_dropped": dropped_dupes,
             "decontaminated": removed, "malformed": malformed}
    if tokens < target:
        raise DataError(
            f"grid.amounts asks for {target} tokens of {kind} imitation data, but the prompt pool yields only "
            f"{tokens} tokens ({len(rows)} unique rows). Lower the largest amount in grid.amounts to <= {tokens}, "
            f"or enlarge the pool (fetch.n_people_a for local data; hub.local_seeds in the hub world).")
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
