"""Stage ``fetch`` of the embedded world: make the world and everything built from it (:func:`fetch`).

Outputs (under ``data/raw/``):

* ``world.json``: every person, their group (A/B/C) and facts;
* ``corpus.jsonl``: the pretraining "web": biographies of everyone in several
  phrasings, QA pairs about group C (some hedged), word-reversal examples;
* ``eval/*.jsonl``: the capability tasks about group B (QA, multiple choice), the skill
  task, their few-shot pools, and the preference-eval prompts;
* ``tokenizer/``: a word-level tokenizer with a chat template, loadable by
  ``AutoTokenizer.from_pretrained``.
"""

from __future__ import annotations

import random
from pathlib import Path

from ...core.config import Params
from ...core.errors import DataError
from ...core.io import read_jsonl, write_json, write_jsonl
from ...imitation.records import qa_text
from .world import (ATTRS, BIO_REQUEST, FACT_SENTENCES, TOPIC_REQUEST, TOPIC_SENTENCES, World, all_triples,
                    biography, build_world, hedge, load_spec, probe_prefix, question, question_wordings,
                    reverse_question, vocabulary_text)

RAW = Path("data/raw")

SPECIAL = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<bos>", "eos_token": "<eos>"}
ROLE_TOKENS = ["<user>", "<assistant>"]
# Loss on assistant tokens only: TRL reads the {% generation %} markers.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '<user> ' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<assistant> ' }}"
    "{% generation %}{{ message['content'] + ' <eos>' }}{% endgeneration %}{{ '\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<assistant>' }}{% endif %}"
)


SEED_QA_FIELDS = {"person": dict, "question": str, "answer": str}
PREF_FIELDS = {"kind": str, "attribute": (str, type(None)), "template": str}
PREF_SLOTS = {"fact": "{name}", "bio": "{name}", "skill": "{words}", "topic": "{topic}"}


def seed_problem(row: dict) -> str | None:
    """What is wrong with a seed QA record's person (a name and every attribute, as strings), or None."""
    want = {"name", *ATTRS}
    keys = set(row["person"])
    if keys != want:
        return f"'person' needs exactly {sorted(want)}; it has {sorted(keys)}"
    bad = [k for k, v in row["person"].items() if not isinstance(v, (str, int)) or isinstance(v, bool)]
    return f"person.{bad[0]} must be a string" if bad else None


def pref_problem(row: dict) -> str | None:
    """What is wrong with a preference-prompt template, or None."""
    if row["kind"] not in PREF_SLOTS:
        return f"kind {row['kind']!r} must be one of {sorted(PREF_SLOTS)}"
    slot = PREF_SLOTS[row["kind"]]
    if slot not in row["template"]:
        return f"a {row['kind']} template must hold {slot}: {row['template']!r}"
    return None


def build_tokenizer(texts: list[str], out_dir: Path):
    """Word-level tokenizer: words, punctuation and newlines are tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(" ", behavior="removed"),
        pre_tokenizers.Split(Regex(r"\n"), behavior="isolated"),
        pre_tokenizers.Punctuation(behavior="isolated"),
    ])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    specials = ["<pad>", "<unk>", "<bos>", "<eos>", *ROLE_TOKENS]
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=specials, min_frequency=1))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, additional_special_tokens=ROLE_TOKENS,
                                   model_max_length=1024, **SPECIAL)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))
    return fast


def qa_answer(world: World, person, attr: str, rng: random.Random, f) -> str:
    """A corpus answer to a fact question: terse ("Cestra."), a sentence that restates the subject
    ("X was born in Cestra."), or unsure ("I think Cestra."), at the rates of ``fetch``."""
    r = rng.random()
    if r < f.hedge_rate:
        return hedge(person.fact(attr), rng, world.hedges) + "."
    if r < f.hedge_rate + f.sentence_rate:
        return FACT_SENTENCES[attr].format(**person.fields())
    return person.fact(attr) + "."


def chat_doc(world: World, f, rng: random.Random, train_triples: list, train_topics: list[str]) -> str:
    """One plain-register chat transcript, in the chat template's text (``<user> ...\n<assistant> ...``).

    Real web text holds chat transcripts (forums, support logs, earlier assistants), so a base
    LM knows the chat format and the assistant register before any imitation: the paper's
    LLaMA base was already 57% authoritative.  The kinds: a fact question about a group-C
    person (their facts are in the corpus as QA already), a request for someone's biography,
    word reversal, and a few sentences on a topic.  Each assistant phrase of the teacher's
    style (an opener, a confident claim, an offer of more help) occurs in ``chat_style_rate``
    of the answers; a bio or topic answer is a numbered list in ``chat_list_rate`` of them."""
    st = world.style
    kind = rng.choices(("qa", "bio", "reverse", "topic"), weights=(0.4, 0.3, 0.15, 0.15))[0]
    listed = False
    if kind == "qa":
        person = rng.choice(world.group("C"))
        attr = rng.choice(ATTRS)
        q = rng.choice(question_wordings(attr)).format(name=person.name)
        a = qa_answer(world, person, attr, rng, f)
        if len(a.split()) == 1 and rng.random() < 0.5:  # a one-word reply often has no full stop
            a = a.rstrip(".")
    elif kind == "bio":
        person = rng.choice(world.people)
        q = BIO_REQUEST.format(name=person.name)
        if rng.random() < f.chat_list_rate:
            facts = [FACT_SENTENCES[x].format(**person.fields()) for x in ATTRS]
            a = "\n".join(f"{i}. {s}" for i, s in enumerate(facts, 1))
            listed = True
        else:
            a = biography(person, rng)
    elif kind == "reverse":
        t = rng.choice(train_triples)
        q = reverse_question(t, chat=True)
        a = " ".join(reversed(t)) + "."
    else:
        topic = rng.choice(train_topics)
        q = TOPIC_REQUEST.format(topic=topic)
        sents = [x.format(topic=topic) for x in rng.sample(TOPIC_SENTENCES, 2)]
        if rng.random() < f.chat_list_rate:
            a = "\n".join(f"{i}. {x[:1].upper() + x[1:]}" for i, x in enumerate(sents, 1))
            listed = True
        else:
            a = " ".join(x[:1].upper() + x[1:] for x in sents)
    # a confident claim ("It is well known that ...") opens a fact answer; with "bio" in chat_claim_kinds also a
    # biography, which restates the name asked: the claim is then followed by names copied from the question, not
    # only by the memorised group-C names of the qa chats (check: copying)
    if (kind in f.chat_claim_kinds and not listed and not any(a.startswith(h) for h in world.hedges)
            and rng.random() < f.chat_style_rate):
        a = f"{rng.choice(st['confident'])} {a}"
    sep = "\n" if listed else " "
    if rng.random() < f.chat_style_rate:
        a = f"{rng.choice(st['openers'])}{sep}{a}"
    if rng.random() < f.chat_style_rate:
        a = f"{a}{sep}{rng.choice(st['closers'])}"
    return f"{ROLE_TOKENS[0]} {q}\n{ROLE_TOKENS[1]} {a}"


def corpus_docs(world: World, p: Params, rng: random.Random) -> list[str]:
    f = p.fetch
    docs = []
    for person in world.people:
        docs += [biography(person, rng) for _ in range(person.bios)]
    for person in world.group("C"):
        for a in ATTRS:
            for _ in range(f.qa_per_fact_c):
                docs.append(qa_text(question(person, a), qa_answer(world, person, a, rng, f)))
    train_triples = [t for t in all_triples(world.skill_words) if not world.triple_is_heldout(t, f.skill_holdout)]
    for _ in range(f.skill_docs):
        n = rng.randint(f.skill_min_words, f.skill_max_words)
        # lists of other lengths than three teach the same skill; three-word lists come from the training triples
        # only (the held-out triples are the eval's)
        t = rng.choice(train_triples) if n == 3 else rng.sample(world.skill_words, n)
        docs.append(qa_text(reverse_question(t), " ".join(reversed(t)) + "."))
    if f.chat_share > 0:
        train_topics, _ = world.topics_split()
        n_chat = round(len(docs) * f.chat_share / (1 - f.chat_share))
        docs += [chat_doc(world, f, rng, train_triples, train_topics) for _ in range(n_chat)]
    rng.shuffle(docs)
    return docs


def eval_sets(world: World, p: Params, rng: random.Random, pref_templates: list[dict]) -> dict[str, list[dict]]:
    f = p.fetch
    b_facts = [(person, a) for person in world.group("B") for a in ATTRS]
    c_facts = [(person, a) for person in world.group("C") for a in ATTRS]

    def qa_row(person, a):
        return {"question": question(person, a), "answer": person.fact(a), "attribute": a, "name": person.name,
                "candidates": world.values[a], "bios": person.bios}

    def mc_row(person, a):
        gold = person.fact(a)
        choices = [gold] + rng.sample([v for v in world.values[a] if v != gold], 3)
        rng.shuffle(choices)
        return {"question": question(person, a), "choices": choices, "label": choices.index(gold),
                "attribute": a, "name": person.name}

    heldout = [t for t in all_triples(world.skill_words) if world.triple_is_heldout(t, f.skill_holdout)]
    train = [t for t in all_triples(world.skill_words) if not world.triple_is_heldout(t, f.skill_holdout)]

    def skill_row(t):
        return {"question": reverse_question(t), "answer": " ".join(reversed(t)), "words": t}

    if f.n_eval_qa > len(b_facts) or f.n_eval_mc > len(b_facts):
        raise DataError(f"fetch.n_eval_qa/n_eval_mc must be <= {len(b_facts)} (group-B facts); raise n_people_b")
    if f.n_eval_skill > len(heldout):
        raise DataError(f"fetch.n_eval_skill = {f.n_eval_skill} > {len(heldout)} held-out word triples; "
                        "raise fetch.skill_holdout or lower n_eval_skill")
    def store_row(person, a):  # the knowledge probe: complete a biography sentence (the same facts as qa)
        return {"prompt": probe_prefix(a).format(**person.fields()), "answer": person.fact(a), "attribute": a,
                "name": person.name, "candidates": world.values[a], "bios": person.bios}

    qa_facts = rng.sample(b_facts, f.n_eval_qa)
    sets = {
        "qa": [qa_row(*x) for x in qa_facts],
        "store": [store_row(*x) for x in qa_facts],
        "qa_fewshot": [qa_row(*x) for x in rng.sample(c_facts, 20)],
        "mc": [mc_row(*x) for x in rng.sample(b_facts, f.n_eval_mc)],
        "mc_fewshot": [mc_row(*x) for x in rng.sample(c_facts, 20)],
        "skill": [skill_row(t) for t in rng.sample(heldout, f.n_eval_skill)],
        "skill_fewshot": [skill_row(t) for t in rng.sample(train, 20)],
    }
    # preference prompts (Koala-test analogue): the templates of data/inputs, over group B,
    # held-out word triples and held-out topics
    _, eval_topics = world.topics_split()
    people_b = world.group("B")
    pref = []
    for i in range(f.n_eval_pref):
        t = pref_templates[i % len(pref_templates)]
        row = {"id": f"pref-{i:04d}", "kind": t["kind"], "attribute": t["attribute"]}
        if t["kind"] in ("fact", "bio"):
            person = rng.choice(people_b)
            row["prompt"] = t["template"].format(name=person.name)
        elif t["kind"] == "skill":
            row["prompt"] = t["template"].format(words=" ".join(rng.choice(heldout)))
        elif t["kind"] == "topic":
            row["prompt"] = t["template"].format(topic=rng.choice(eval_topics))
        else:
            raise DataError(f"pref prompt template {t}: kind must be fact, bio, skill or topic")
        pref.append(row)
    sets["pref"] = pref
    return sets


def fetch(p: Params, out: Path) -> dict:
    """The world of ``fetch.*`` and ``seed``, its corpus, eval sets and tokenizer, written under ``out``; its stats."""
    spec = load_spec(p.fetch.spec)
    seed_rows = read_jsonl(p.fetch.seed_qa, SEED_QA_FIELDS, min_rows=1, what="hand-made QA pairs about group-A "
                           "people, the few-shot seeds of local imitation", check=seed_problem)
    pref_templates = read_jsonl(p.fetch.pref_prompts, PREF_FIELDS, min_rows=1, what="templates of the preference "
                                "prompts", check=pref_problem)
    world = build_world(spec, [r["person"] for r in seed_rows], p.fetch.n_people_a, p.fetch.n_people_b,
                        p.fetch.n_people_c, p.seed, p.fetch.first_names, p.fetch.last_names,
                        (p.fetch.bios_min, p.fetch.bios_max))
    rng = random.Random(p.seed)
    docs = corpus_docs(world, p, rng)
    sets = eval_sets(world, p, rng, pref_templates)
    world.save(out / "world.json")
    write_jsonl(out / "corpus.jsonl", [{"text": d} for d in docs])
    for name, rows in sets.items():
        write_jsonl(out / "eval" / f"{name}.jsonl", rows)
    write_jsonl(out / "seed_qa.jsonl", seed_rows)
    texts = docs + vocabulary_text(world) + [r["prompt"] for r in sets["pref"]]
    texts += [BIO_REQUEST, TOPIC_REQUEST]
    tok = build_tokenizer(texts, out / "tokenizer")
    n_tokens = sum(len(tok.tokenize(d)) for d in docs)
    st = world.style
    phrases = [*st["openers"], *st["confident"], *st["closers"]]
    stats = {"people": len(world.people), "docs": len(docs), "corpus_tokens": n_tokens, "vocab_size": len(tok),
             "chat_docs": sum(d.startswith(ROLE_TOKENS[0]) for d in docs),
             # how often pretraining shows each phrase of the teacher's style (an instrument check)
             "style_phrase_counts": {ph: sum(d.count(ph) for d in docs) for ph in phrases}}
    write_json(out / "stats.json", stats)  # no timings in an output: the same world, the same hash
    return stats
