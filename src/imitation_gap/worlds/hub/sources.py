"""Data sets of the hub world (see ``docs/hub.md``): what stage ``fetch`` downloads.

* :func:`load_source` reads any data set of ``hub.*`` with ``datasets.load_dataset`` (a hub
  id pinned by ``revision``, or ``path: json`` with ``data_files`` for a local or
  ``hf://`` / ``https://`` file) and converts its records from one of four formats:

  - ``sharegpt``: ``{"conversations": [{"from": "human", "value": ...}, ...]}``
  - ``hc3``: ``{"question": ..., "human_answers": [...], "chatgpt_answers": [...]}``
  - ``nq``: ``{"question": ..., "answer": [...]}`` (``nq_open``)
  - ``koala``: ``{"id": ..., "prompt": ...}`` (the Koala test set)

* :func:`fetch_hub` (stage ``fetch``) writes the broad pool (ShareGPT-Mix: language-filtered
  and deduplicated by first user turn across all sources, as a harvest file is), the local
  seeds, the preference prompts, the decontamination questions and the token-counting tokenizer.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections import Counter
from pathlib import Path
from typing import Iterator

from ...core.config import Params, Source
from ...core.errors import DataError
from ...core.io import write_json, write_jsonl
from ...imitation.harvest import LANG_FILTERS, conversation_to_messages, keep_unique
from .models import load_tokenizer

# -- data sets -------------------------------------------------------------------------
def load_source(src: Source, key: str) -> list[dict]:
    """The records of one source (at most ``max_rows``), as plain dicts."""
    from datasets import load_dataset

    try:
        ds = load_dataset(src.path, src.name or None, data_files=src.data_files or None, split=src.split,
                          revision=src.revision or None)
    except Exception as e:  # noqa: BLE001 - any loader failure becomes one clear line
        offline = " (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set: unset it to download)" if \
            os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1" else ""
        raise DataError(f"{key}: cannot load path={src.path!r} data_files={src.data_files!r} "
                        f"split={src.split!r}: {type(e).__name__}: {str(e)[:300]}{offline}") from None
    if src.max_rows:
        ds = ds.select(range(min(src.max_rows, len(ds))))
    return [dict(r) for r in ds]


def _need(rec: dict, fields: tuple[str, ...], key: str, fmt: str, i: int) -> None:
    missing = [f for f in fields if f not in rec]
    if missing:
        raise DataError(f"{key}: record {i} has no {missing} (format {fmt!r} needs {list(fields)}; "
                        f"it has {sorted(rec)[:8]}); fix the file or the source's format")


def to_chats(records: list[dict], fmt: str, key: str, stats: Counter) -> Iterator[list[dict]]:
    """Chat message lists from ShareGPT or HC3 records."""
    for i, rec in enumerate(records):
        stats["records"] += 1
        if fmt == "sharegpt":
            _need(rec, ("conversations",), key, fmt, i)
            msgs = conversation_to_messages(rec["conversations"], stats)
            if msgs:
                yield msgs
        else:  # hc3: one chat per ChatGPT answer
            _need(rec, ("question", "chatgpt_answers"), key, fmt, i)
            for ans in rec["chatgpt_answers"] or []:
                if isinstance(ans, str) and ans.strip() and str(rec["question"]).strip():
                    yield [{"role": "user", "content": str(rec["question"]).strip()},
                           {"role": "assistant", "content": ans.strip()}]
                else:
                    stats["dropped_empty"] += 1


def nq_question(q: str) -> str:
    """NQ questions are lower-case without '?': make them read like a question."""
    q = q.strip()
    q = q[:1].upper() + q[1:]
    return q if q.endswith("?") else q + "?"


def to_questions(records: list[dict], fmt: str, key: str) -> list[dict]:
    out = []
    for i, rec in enumerate(records):
        if fmt == "nq":
            _need(rec, ("question", "answer"), key, fmt, i)
            ans = rec["answer"][0] if isinstance(rec["answer"], list) and rec["answer"] else rec["answer"]
            out.append({"question": nq_question(str(rec["question"])), "answer": str(ans)})
        elif fmt == "koala":
            _need(rec, ("prompt",), key, fmt, i)
            out.append({"id": str(rec.get("id", f"koala_{i + 1}")), "prompt": str(rec["prompt"]).strip(),
                        "kind": "open"})
        else:
            chats = list(to_chats([rec], fmt, key, Counter()))
            out += [{"question": c[0]["content"]} for c in chats[:1]]
    return out


def fetch_hub(p: Params, out: Path) -> dict:
    """Stage ``fetch`` of the hub world: every data set the later stages read, written under ``out``."""
    try:
        return _fetch_hub(p, out)
    except DataError as e:  # a source named in params: say which file named it
        raise DataError(f"{p.source}: {e}") from None


def _fetch_hub(p: Params, out: Path) -> dict:
    h = p.hub
    stats: dict = {"sources": {}}
    lang = LANG_FILTERS[h.broad_language]
    pool: list[dict] = []
    seen: set[str] = set()
    for i, src in enumerate(h.broad):
        key = f"hub.broad[{i}]"
        c: Counter = Counter()
        for msgs in keep_unique(to_chats(load_source(src, key), src.format, key, c), lang, c, seen):
            pool.append({"messages": msgs, "source": f"{src.format}:{i}"})
            c["chats"] += 1
        stats["sources"][key] = {"spec": src.model_dump(), **c}
    rng = random.Random(p.seed)
    rng.shuffle(pool)  # mix the sources, so every prefix (amount) draws from all of them
    seeds = to_questions(load_source(h.local_seeds, "hub.local_seeds"), "nq", "hub.local_seeds")
    if len(seeds) < 2:
        raise DataError(f"hub.local_seeds yields {len(seeds)} QA pairs; few-shot generation needs >= 2")
    pref = to_questions(load_source(h.pref, "hub.pref"), "koala", "hub.pref")
    decontam = []
    for i, src in enumerate(h.decontam):
        decontam += [{"question": r.get("question") or r.get("prompt")}
                     for r in to_questions(load_source(src, f"hub.decontam[{i}]"), src.format, f"hub.decontam[{i}]")]
    stats["sources"]["hub.local_seeds"] = {"spec": h.local_seeds.model_dump(), "rows": len(seeds)}
    stats["sources"]["hub.pref"] = {"spec": h.pref.model_dump(), "rows": len(pref)}
    stats["sources"]["hub.decontam"] = {"rows": len(decontam)}
    tok = load_tokenizer(h.token_counter.id, h.token_counter.revision, p, h.token_counter.gguf_file)
    write_jsonl(out / "broad_pool.jsonl", pool)
    write_jsonl(out / "seed_qa.jsonl", seeds)
    write_jsonl(out / "eval" / "pref.jsonl", pref)
    write_jsonl(out / "eval" / "decontam.jsonl", decontam)
    tok.save_pretrained(str(out / "tokenizer"))
    for f in ("broad_pool.jsonl", "seed_qa.jsonl", "eval/pref.jsonl", "eval/decontam.jsonl"):
        stats.setdefault("sha256", {})[f] = hashlib.sha256((out / f).read_bytes()).hexdigest()
    stats.update({"broad_chats": len(pool), "local_seeds": len(seeds), "pref_prompts": len(pref),
                  "decontam_questions": len(decontam), "token_counter": h.token_counter.model_dump()})
    write_json(out / "sources.json", stats)
    return {k: v for k, v in stats.items() if isinstance(v, int)}
