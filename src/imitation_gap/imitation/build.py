"""Stage `imitate-dataset`: imitation data from the teacher, through the ``openai`` client.

Two kinds, as in the paper:

* **broad** (ShareGPT-Mix analogue): a mix of generic requests (reverse a list of
  words, write about a topic) and, for ``imitate.broad_fact_share`` of prompts,
  questions about group-A people; the teacher answers in its own style;
* **local** (NQ-synthetic analogue): the teacher is shown ``imitate.local_shots`` of the
  hand-made seed QA pairs and asked for a new pair about a group-A person; each pair
  becomes one terse question-answer chat.

Prompts are drawn in a fixed, seeded order; duplicates are dropped; a prompt sharing an
n-gram (``imitate.decontam_ngram``) with any eval prompt is removed.  Group-B people
never appear.  For each amount in ``grid.amounts`` the stage writes the shortest prefix
of the accepted rows holding at least that many tokens (chat template included), so a
larger amount contains every smaller one.

With ``imitate.harvest_path`` set, broad data comes instead from existing teacher
transcripts in ShareGPT format (as the paper's ShareGPT-Mix did), deduplicated by first
user turn, language-filtered and decontaminated the same way.

With ``world: hub``, broad data is the ShareGPT-Mix pool that ``fetch`` built from
``hub.broad`` (ShareGPT / HC3 transcripts: no new teacher calls), and local data is
NQ-synthetic: the teacher of ``hub.teacher`` writes new QA pairs from few-shot prompts
over the seed questions of ``hub.local_seeds``.

Outputs: ``data/imitation/<kind>/<amount>.jsonl`` and ``data/imitation/manifest.json``.

Run: ``python -m imitation_gap.imitate_dataset`` (dvc: ``dvc repro imitate-dataset``).
"""

from __future__ import annotations

import argparse
import random
import re
from contextlib import ExitStack
from pathlib import Path

from .common import atomic_dir, log, log_metrics, mlflow_run, read_jsonl, run_cli, write_json, write_jsonl
from .config import DataError, Params, load_params
from .llm import LLMClient
from .teacher import cache_host, embedded_endpoint
from .world import (ASPECTS, ATTRS, BIO_REQUEST, CHAT_QUESTIONS, LOCAL_REQUEST, QUESTIONS, TOPIC_REQUEST, World,
                    all_triples, load_world, normalize, qa_text, reverse_question, tidy)

RAW = Path("data/raw")
OUT = Path("data/imitation")


def broad_prompts(world: World, p: Params, rng: random.Random):
    """An endless, seeded stream of broad prompts (duplicates are dropped later)."""
    people = world.group("A")
    train_topics, _ = world.topics_split()
    triples = [t for t in all_triples(world.skill_words) if not world.triple_is_heldout(t, p.fetch.skill_holdout)]
    while True:
        if rng.random() < p.imitate.broad_fact_share:
            person = rng.choice(people)
            r = rng.random()
            if r < 0.2:
                yield BIO_REQUEST.format(name=person.name)
            else:
                a = rng.choice(ATTRS)
                tpl = rng.choice([QUESTIONS[a], *CHAT_QUESTIONS[a]])
                yield tpl.format(name=person.name)
        elif rng.random() < 0.85:
            yield reverse_question(rng.choice(triples), chat=True)
        else:
            yield TOPIC_REQUEST.format(topic=rng.choice(train_topics))


def local_prompts(world: World, p: Params, rng: random.Random, seeds: list[dict]):
    """Few-shot generation prompts: seed examples, then a request about an A person."""
    facts = [(person, a) for person in world.group("A") for a in ATTRS]
    for _ in range(p.imitate.local_rounds):  # each round asks about every fact once, with other shots
        rng.shuffle(facts)
        for person, a in facts:
            shots = rng.sample(seeds, min(p.imitate.local_shots, len(seeds)))
            examples = "\n".join(qa_text(s["question"], s["answer"]) for s in shots)
            request = LOCAL_REQUEST.format(name=person.name, aspect=ASPECTS[a])
            yield f"Here are some example questions and answers:\n{examples}\n{request}"


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


def harvest_kind(p: Params, tok, grams: set, rows: list[dict], stats: dict, b_names: set[str],
                 where: str) -> tuple[list[dict], dict]:
    """Broad data from existing transcripts (``where``) instead of new teacher calls."""
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


def build_kind(kind: str, client: LLMClient, world: World | None, p: Params, tok,
               grams: set) -> tuple[list[dict], dict]:
    from .harvest import LANG_FILTERS, load_sharegpt

    b_names = {x.name for x in world.group("B")} if world else set()  # held-out people (embedded world)
    rng = random.Random(f"{p.seed}-{kind}")
    default = {"temperature": p.teacher.temperature}
    if kind == "broad" and world is None:  # hub: the ShareGPT-Mix pool of fetch
        rows = [{"messages": r["messages"]} for r in read_jsonl(RAW / "broad_pool.jsonl")]
        return harvest_kind(p, tok, grams, rows, {"records": len(rows), "source": "hub.broad"}, b_names,
                            "the broad pool of hub.broad (data/raw/broad_pool.jsonl)")
    if kind == "broad" and p.imitate.harvest_path:
        rows, stats = load_sharegpt(p.imitate.harvest_path, LANG_FILTERS[p.imitate.harvest_language])
        return harvest_kind(p, tok, grams, rows, stats, b_names,
                            f"imitate.harvest_path = {p.imitate.harvest_path!r}")
    if world is None:
        from .hub import local_prompts_hub

        stream = local_prompts_hub(p, rng, read_jsonl(RAW / "seed_qa.jsonl"))
    elif kind == "broad":
        stream = ((q, default) for q in broad_prompts(world, p, rng))
    else:
        stream = ((q, default) for q in local_prompts(world, p, rng, read_jsonl(RAW / "seed_qa.jsonl")))
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
    out, total = [], 0
    for r in rows:
        if total >= amount:
            break
        out.append(r)
        total += r["n_tokens"]
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    p = load_params(args.params)
    from transformers import AutoTokenizer

    world = load_world(RAW / "world.json") if p.world == "embedded" else None
    tok = AutoTokenizer.from_pretrained(str(RAW / "tokenizer"))
    grams = eval_ngrams(p.imitate.decontam_ngram)
    section = {"teacher": {k: v for k, v in p.section("teacher").items()}, "imitate": p.section("imitate"),
               "amounts": p.grid.amounts, "kinds": p.grid.kinds}
    with mlflow_run(p, "imitate-dataset", section), ExitStack() as stack:
        base_url = p.teacher.base_url
        if base_url == "embedded":  # (only in the embedded world: the hub's teacher is hub.teacher)
            base_url = stack.enter_context(embedded_endpoint(RAW / "world.json", RAW / "tokenizer"))
        client = LLMClient.from_params(p.teacher, base_url, cache_host=cache_host(p.teacher.base_url, RAW / "world.json"))
        client.check_reachable("teacher.base_url")
        manifest: dict = {"teacher": {"model": p.teacher.model,
                                      "endpoint": "embedded" if p.teacher.base_url == "embedded" else client.host},
                          "kinds": {}}
        with atomic_dir(OUT) as out:
            for kind in p.grid.kinds:
                rows, stats = build_kind(kind, client, world, p, tok, grams)
                files = {}
                for amount in p.grid.amounts:
                    part = prefix_for(rows, amount)
                    write_jsonl(out / kind / f"{amount}.jsonl", part)
                    files[str(amount)] = {"rows": len(part), "tokens": sum(r["n_tokens"] for r in part)}
                manifest["kinds"][kind] = {**stats, "amounts": files}
                log.info("imitate-dataset %s: %s", kind, stats)
            manifest["calls"] = client.stats.as_dict()
            manifest["cost_usd"] = client.stats.cost_usd
            write_json(out / "manifest.json", manifest)
        log_metrics({f"{k}.{m}": v for k, s in manifest["kinds"].items() for m, v in s.items()
                     if isinstance(v, (int, float))} | {f"calls.{k}": v for k, v in client.stats.as_dict().items()
                                                        if isinstance(v, (int, float))})


if __name__ == "__main__":
    run_cli(main)
