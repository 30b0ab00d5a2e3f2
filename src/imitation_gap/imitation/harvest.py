"""Harvest mode: imitation data from existing teacher transcripts (ShareGPT style).

The paper's ShareGPT-Mix was built from conversations users had shared, not from new
API calls.  :func:`load_sharegpt` reads such a dump, JSON (a list of records) or JSONL
(one record per line), where a record is::

    {"id": "...", "conversations": [{"from": "human", "value": "..."},
                                    {"from": "gpt", "value": "..."}, ...]}

and returns chat rows ``{"messages": [{"role": "user"|"assistant", "content": ...}]}``:

* speakers ``human``/``user`` become ``user``; ``gpt``/``chatgpt``/``assistant``/``bard``/
  ``bing``/``model`` become ``assistant``; ``system`` turns are dropped; any other
  speaker drops the conversation;
* leading assistant turns are dropped; at the first turn that breaks the
  user/assistant alternation, or is empty, the conversation is cut; a trailing
  unanswered user turn is dropped; a conversation with no answered user turn is dropped;
* a language filter (``lang_filter(text) -> bool`` on the whole conversation; default:
  keep all; :func:`english_heuristic` is a simple option) runs before
* dedup by the first user turn (whitespace-collapsed, case-folded): the first
  occurrence wins.

The stats count every reason a record or turn was dropped.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..core.errors import DataError
from ..core.io import read_text

LangFilter = Callable[[str], bool]

USER_SPEAKERS = frozenset({"human", "user"})
ASSISTANT_SPEAKERS = frozenset({"gpt", "chatgpt", "assistant", "bard", "bing", "model"})
SYSTEM_SPEAKERS = frozenset({"system"})


def ascii_ratio(text: str) -> float:
    """Share of the non-space characters of ``text`` that are ASCII (1.0 for an empty text)."""
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return 1.0
    return sum(c.isascii() for c in chars) / len(chars)


def english_heuristic(text: str, min_ascii: float = 0.9) -> bool:
    """A crude English test: at least ``min_ascii`` of the non-space characters are ASCII.

    It keeps English (and code) and drops text in non-Latin scripts; it cannot tell
    English from other Latin-script languages.  Plug a real language identifier in
    through ``lang_filter`` when that matters.
    """
    return ascii_ratio(text) >= min_ascii


def make_ascii_filter(min_ascii: float) -> LangFilter:
    """:func:`english_heuristic` with another threshold."""
    if not 0 <= min_ascii <= 1:
        raise ValueError(f"min_ascii = {min_ascii!r}: must be in [0, 1]")
    return lambda text: english_heuristic(text, min_ascii)


LANG_FILTERS: dict[str, LangFilter | None] = {"none": None, "english": english_heuristic}
"""Named filters, for a params key such as ``imitate.harvest_language: english`` (its allowed values:
:data:`imitation_gap.core.config.Language`)."""


def _dedup_key(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def _records(path: Path) -> Iterator[tuple[str, Any]]:
    """``(where, record)`` for each record of a JSON list / object or a JSONL file."""
    text = read_text(path)  # UTF-8, or a DataError naming the line (latin-1, UTF-16)
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
        if path.suffix == ".json" and text.lstrip().startswith("["):
            raise DataError(f"{path}: not valid JSON; a ShareGPT dump is a JSON list of records or JSONL "
                            "(one record per line)") from None
    if isinstance(data, list):
        for i, rec in enumerate(data):
            yield f"{path}[{i}]", rec
        return
    if isinstance(data, dict) and not ("conversations" in data or "items" in data):
        raise DataError(f"{path}: a JSON object without 'conversations'; a ShareGPT dump is a list of records "
                        "{'conversations': [{'from': 'human', 'value': ...}, ...]} or JSONL")
    if isinstance(data, dict):  # a one-record JSON or JSONL file
        yield f"{path}:1", data
        return
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{i}", json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{i}: not valid JSON ({e.msg}); fix the line or drop it") from None


def conversation_to_messages(turns: Any, stats: Counter) -> list[dict] | None:
    """ShareGPT turns -> alternating user/assistant messages (see the module docstring), or None."""
    if not isinstance(turns, list):
        stats["dropped_malformed"] += 1
        return None
    msgs: list[dict] = []
    for turn in turns:
        if not isinstance(turn, dict):
            stats["dropped_malformed"] += 1
            return None
        speaker = str(turn.get("from", turn.get("role", ""))).strip().lower()
        value = turn.get("value", turn.get("content"))
        if speaker in SYSTEM_SPEAKERS:
            stats["system_turns_dropped"] += 1
            continue
        if speaker in USER_SPEAKERS:
            role = "user"
        elif speaker in ASSISTANT_SPEAKERS:
            role = "assistant"
        else:
            stats["dropped_unknown_speaker"] += 1
            return None
        if not msgs and role == "assistant":
            stats["leading_assistant_turns_dropped"] += 1
            continue
        expected = "user" if not msgs or msgs[-1]["role"] == "assistant" else "assistant"
        if role != expected or not isinstance(value, str) or not value.strip():
            stats["conversations_cut"] += 1
            break
        msgs.append({"role": role, "content": value.strip()})
    if msgs and msgs[-1]["role"] == "user":
        msgs.pop()
        stats["unanswered_turns_dropped"] += 1
    if not msgs:
        stats["dropped_empty"] += 1
        return None
    return msgs


def keep_unique(chats: Iterable[list[dict]], lang_filter: LangFilter | None, stats: Counter,
                seen: set[str]) -> Iterator[list[dict]]:
    """The chats that pass ``lang_filter`` and whose first user turn is not in ``seen`` (first occurrence
    wins; ``seen`` grows), counting ``dropped_language`` and ``dropped_duplicate`` in ``stats``."""
    for msgs in chats:
        if lang_filter is not None and not lang_filter("\n".join(m["content"] for m in msgs)):
            stats["dropped_language"] += 1
            continue
        key = _dedup_key(msgs[0]["content"])
        if key in seen:
            stats["dropped_duplicate"] += 1
            continue
        seen.add(key)
        yield msgs


def load_sharegpt(path: str | Path, lang_filter: LangFilter | None = None) -> tuple[list[dict], dict]:
    """Read a ShareGPT-style dump; return ``(rows, stats)``.

    ``rows`` are ``{"messages": [...]}`` in file order; ``stats`` has ``records``,
    ``rows``, ``turns`` and one count per reason to drop or cut something
    (``dropped_language``, ``dropped_duplicate``, ``dropped_malformed``, ...).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: harvest file not found")
    stats: Counter = Counter()

    def chats() -> Iterator[list[dict]]:
        for _where, rec in _records(path):
            stats["records"] += 1
            if not isinstance(rec, dict):
                stats["dropped_malformed"] += 1
                continue
            msgs = conversation_to_messages(rec.get("conversations", rec.get("items")), stats)
            if msgs is not None:
                yield msgs

    rows = [{"messages": msgs} for msgs in keep_unique(chats(), lang_filter, stats, set())]
    stats["turns"] = sum(len(r["messages"]) for r in rows)
    stats["rows"] = len(rows)
    base = {"records": 0, "rows": 0, "turns": 0, "dropped_language": 0, "dropped_duplicate": 0,
            "dropped_malformed": 0, "dropped_empty": 0, "dropped_unknown_speaker": 0}
    return rows, {**base, **dict(sorted(stats.items()))}
