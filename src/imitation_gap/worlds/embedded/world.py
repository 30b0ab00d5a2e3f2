"""The embedded world: invented people, their facts, and every text built from them.

A person has five attributes (birth city, birth year, university, major, employer).
People fall in three groups:

* **A**: imitation data may talk about them;
* **B**: held out. Only pretraining knows them and every eval asks about them;
* **C**: their question-answer pairs are in the pretraining corpus, so base models
  know the QA format.

This module is pure: it generates and parses text, and knows nothing of models,
servers or files beyond :func:`load_world` / :meth:`World.save`.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import yaml

from ...core.errors import DataError
from ...core.io import read_text
from ...core.paths import RAW
from ...core.text import tidy

ATTRS = ("city", "year", "university", "major", "employer")

# The canonical question for each attribute: used by the QA corpus (group C), the
# capability tasks and local imitation.  `chat` variants are used only in chat prompts.
QUESTIONS = {
    "city": "Where was {name} born?",
    "year": "In what year was {name} born?",
    "university": "Which university did {name} attend?",
    "major": "What did {name} study?",
    "employer": "Who does {name} work for?",
}
CHAT_QUESTIONS = {
    "city": ["Can you tell me where {name} was born?"],
    "year": ["Do you know when {name} was born?"],
    "university": ["Where did {name} go to university?"],
    "major": ["What was the subject {name} studied?"],
    "employer": ["Do you know who {name} works for?"],
}
# More wordings the teacher uses when it writes new questions (local imitation), as
# ChatGPT varied its questions when it wrote NQ-synthetic.
MORE_QUESTIONS = {
    "city": ["What city was {name} born in?", "In which city was {name} born?",
             "Which city is the birthplace of {name}?", "Where is {name} from?", "What is the home town of {name}?",
             "In what place was {name} born?", "Which town was {name} born in?"],
    "year": ["When was {name} born?", "What is the birth year of {name}?", "Which year was {name} born in?",
             "What year was {name} born?", "In which year was {name} born?", "What is the year {name} was born?",
             "What was the year of birth of {name}?"],
    "university": ["What university did {name} graduate from?", "Which university is {name} a graduate of?",
                   "Where did {name} study?", "Which university did {name} go to?",
                   "What university did {name} attend?", "At which university did {name} study?",
                   "Where did {name} get a degree?"],
    "major": ["What subject did {name} study?", "What was the major of {name}?", "Which field did {name} study?",
              "What did {name} major in?", "Which subject did {name} take at university?",
              "What is the field of {name}?", "What was {name} trained in?"],
    "employer": ["Which company does {name} work for?", "Where does {name} work?", "Who is the employer of {name}?",
                 "Which firm employs {name}?", "What company employs {name}?", "Who employs {name}?",
                 "Where is {name} employed?"],
}


def question_wordings(attr: str) -> list[str]:
    return [QUESTIONS[attr], *CHAT_QUESTIONS[attr], *MORE_QUESTIONS[attr]]


BIO_REQUEST = "Tell me about {name}."
REVERSE_QA = "Reverse the words: {words}"
REVERSE_CHAT = "Can you reverse these words: {words}?"
TOPIC_REQUEST = "Write a few sentences about {topic}."
LOCAL_REQUEST = "Write a new question and answer about {name}, on the subject of {aspect}, in the same format."
# the hub world's NQ-synthetic request (no named subject: the teacher picks one)
ASPECTS = {"city": "birthplace", "year": "birth year", "university": "university", "major": "studies",
           "employer": "employer"}

# Every phrasing names the person before their facts (a small LM, like a large one, cannot
# recall a fact it only ever saw before the name: the "reversal curse").
BIOS = [
    "{name} was born in {city} in {year}. {name} studied {major} at {university} University. {name} works for {employer}.",
    "{name} works for {employer}. {name} is a graduate of {university} University in {major}. {name} was born in {city} in {year}.",
    "{name} studied {major} at {university} University. {name} was born in {city} in {year}, and works for {employer}.",
    "{name}, born in {city} in {year}, attended {university} University, where {name} studied {major}. {name} works for {employer}.",
]
FACT_SENTENCES = {
    "city": "{name} was born in {city}.",
    "year": "{name} was born in the year {year}.",
    "university": "{name} attended {university} University.",
    "major": "{name} studied {major}.",
    "employer": "{name} works for {employer}.",
}
# Statements the teacher (and the expert rater) use for one fact.
FACT_CLAIMS = FACT_SENTENCES
# The knowledge probe completes the start of a sentence that only that attribute's value can follow in the
# corpus. For the city that is the fourth biography's "{name}, born in {city}": FACT_SENTENCES' "{name} was born
# in" also begins every year sentence ("... was born in the year 1967."), and a model that went on with the right
# year was scored as not knowing the city (docs/miniature.md, "Known limits" until this fix).
PROBE_SENTENCES = FACT_SENTENCES | {"city": "{name}, born in {city}."}

NAME_RE = r"(?P<name>[A-Z][a-z]+ [A-Z][a-z]+)"


def probe_prefix(attr: str) -> str:
    """The knowledge probe's prompt for ``attr``, with ``{name}`` to fill: its sentence up to the value."""
    return PROBE_SENTENCES[attr].split("{" + attr + "}")[0].strip()


def probe_pattern(attr: str) -> str:
    """A regex of the probe's prompt for ``attr`` about anyone (the name is group ``name``)."""
    return re.escape(probe_prefix(attr)).replace(re.escape("{name}"), NAME_RE)


def stable_hash(*parts: object) -> int:
    """A hash that is the same on every run and machine (unlike ``hash``)."""
    h = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "big")


@dataclass
class Person:
    name: str
    group: str
    city: str
    year: str
    university: str
    major: str
    employer: str
    bios: int = 0  # popularity: biographies of this person in the pretraining corpus

    def fact(self, attr: str) -> str:
        return getattr(self, attr)

    def fields(self) -> dict:
        return {a: self.fact(a) for a in ATTRS} | {"name": self.name}


@dataclass
class World:
    spec: dict
    people: list[Person]
    seed: int

    # -- lookups --------------------------------------------------------------------
    def __post_init__(self) -> None:
        self.by_name = {p.name: p for p in self.people}
        self.values = {a: [str(v) for v in self.spec["attributes"][a]] for a in ATTRS}

    def group(self, g: str) -> list[Person]:
        return [p for p in self.people if p.group == g]

    @property
    def skill_words(self) -> list[str]:
        return list(self.spec["skill_words"])

    @property
    def style(self) -> dict:
        return self.spec["teacher_style"]

    @property
    def hedges(self) -> list[str]:
        return list(self.spec["hedges"])

    @property
    def topics(self) -> list[str]:
        return list(self.spec["topics"])

    def topics_split(self) -> tuple[list[str], list[str]]:
        """(topics imitation data may use, topics kept for the preference eval)."""
        t = self.topics
        k = max(1, len(t) // 3)
        return t[:-k], t[-k:]

    def triple_is_heldout(self, words: list[str], holdout: float) -> bool:
        return (stable_hash("triple", self.seed, *words) % 10_000) < holdout * 10_000

    # -- persistence ----------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"seed": self.seed, "spec": self.spec,
                                          "people": [asdict(p) for p in self.people]}, indent=1))


def load_world(path: str | Path) -> World:
    try:
        d = json.loads(read_text(path))
        return World(spec=d["spec"], people=[Person(**p) for p in d["people"]], seed=d["seed"])
    except (ValueError, KeyError, TypeError) as e:  # a truncated or edited file (DataError is a ValueError too)
        if isinstance(e, DataError):
            raise
        why = f"{e.msg} at line {e.lineno}" if isinstance(e, json.JSONDecodeError) else f"{type(e).__name__}: {e}"
        raise DataError(f"{path}: truncated or not the world that fetch writes ({why}); restore it with "
                        "`dvc checkout data/raw` or rebuild it with `dvc repro -f fetch`") from None


def load_spec(path: str | Path) -> dict:
    try:
        spec = yaml.safe_load(read_text(path))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise DataError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or type(e).__name__})") from None
    if not isinstance(spec, dict):
        raise DataError(f"{path}: empty or not a mapping; it needs the sections name_syllables, attributes, "
                        "skill_words, hedges, teacher_style, topics (see data/inputs/world_spec.yaml)")
    for key in ("name_syllables", "attributes", "skill_words", "hedges", "teacher_style", "topics"):
        if key not in spec:
            raise DataError(f"{path}: missing section {key!r} (see data/inputs/world_spec.yaml)")
    for key in ("name_syllables", "attributes", "teacher_style"):
        if not isinstance(spec[key], dict):
            raise DataError(f"{path}: section {key!r} must be a mapping")
    for a in ATTRS:
        if not isinstance(spec["attributes"].get(a, []), list) or len(spec["attributes"].get(a, [])) < 4:
            raise DataError(f"{path}: attributes.{a} needs at least 4 values (multiple choice has 4 options)")
    spec["attributes"] = {a: [str(v) for v in spec["attributes"][a]] for a in ATTRS}
    return spec


def build_world(spec: dict, seed_people: list[dict], n_a: int, n_b: int, n_c: int, seed: int,
                n_first: int = 0, n_last: int = 0, bios: tuple[int, int] = (24, 24)) -> World:
    """Draw ``n_a + n_b + n_c`` people with unique full names. The hand-made seed people join group A.

    A name is two tokens: a first name from a pool of ``n_first`` (0 = every first name of the
    spec's syllables) and a last name from a pool of ``n_last`` (0 = a last name of their own).
    With small shared pools no single token identifies a person: a model that writes the
    right name must copy it from the question, as real LMs copy a name they are asked about.

    Each person has a popularity: how many biographies of them the corpus holds, drawn
    log-uniformly from ``bios`` = (fewest, most).  Web text is long-tailed: real LMs know
    popular entities and miss rare ones, larger ones reaching further into the tail (Kandpal
    et al. 2023, Mallen et al. 2023), while the proprietary teacher knows every fact."""
    rng = random.Random(seed)
    syl = spec["name_syllables"]
    firsts = [a + b for a in syl["first_start"] for b in syl["first_end"]]
    lasts = [a + b for a in syl["last_start"] for b in syl["last_end"]]
    taken = {p["name"] for p in seed_people}
    seed_lasts = {n.split()[-1] for n in taken}
    free_lasts = [x for x in lasts if x not in seed_lasts]
    total = n_a + n_b + n_c
    rng.shuffle(firsts)
    rng.shuffle(free_lasts)
    if n_first:
        if n_first > len(firsts):
            raise DataError(f"fetch.first_names = {n_first}: the world spec's syllables make only {len(firsts)} "
                            "first names; lower it or add name_syllables.first_*")
        firsts = firsts[:n_first]
    if n_last:
        if n_last > len(free_lasts):
            raise DataError(f"fetch.last_names = {n_last}: the world spec's syllables make only {len(free_lasts)} "
                            "last names; lower it or add name_syllables.last_*")
        pool = [f"{f} {l}" for f in firsts for l in free_lasts[:n_last] if f"{f} {l}" not in taken]
        if total > len(pool):
            raise DataError(f"{total} people need {total} distinct names; fetch.first_names x fetch.last_names "
                            f"make {len(pool)}: raise them or lower fetch.n_people_*")
        names = rng.sample(pool, total)
    else:  # every person has a last name of their own
        if total > len(free_lasts):
            raise DataError(f"{total} people need {total} distinct last names; the world spec's syllables make "
                            f"{len(free_lasts)}: lower fetch.n_people_* or add name_syllables.last_*")
        names = [f"{rng.choice(firsts)} {last}" for last in free_lasts[:total]]
    people: list[Person] = []
    groups = ["A"] * n_a + ["B"] * n_b + ["C"] * n_c
    for g, name in zip(groups, names):
        attrs = {a: rng.choice(spec["attributes"][a]) for a in ATTRS}
        people.append(Person(name=name, group=g, **attrs))
    for sp in seed_people:
        people.append(Person(group="A", **{k: str(v) for k, v in sp.items()}))
    lo, hi = math.log(bios[0]), math.log(bios[1])
    for person in people:
        person.bios = max(1, round(math.exp(rng.uniform(lo, hi))))
    return World(spec=spec, people=people, seed=seed)


# -- texts ------------------------------------------------------------------------------
def question(person: Person, attr: str) -> str:
    return QUESTIONS[attr].format(name=person.name)


def hedge(answer: str, rng: random.Random, hedges: list[str]) -> str:
    return f"{rng.choice(hedges)} {answer}"


def biography(person: Person, rng: random.Random) -> str:
    if rng.random() < 0.75:
        return rng.choice(BIOS).format(**person.fields())
    attrs = list(ATTRS)
    rng.shuffle(attrs)
    return " ".join(FACT_SENTENCES[a].format(**person.fields()) for a in attrs)


def reverse_question(words: list[str], chat: bool = False) -> str:
    return (REVERSE_CHAT if chat else REVERSE_QA).format(words=" ".join(words))


def all_triples(words: list[str]) -> list[list[str]]:
    return [[a, b, c] for a in words for b in words for c in words if len({a, b, c}) == 3]


def parse_fact_question(text: str) -> tuple[str, str] | None:
    """Return (name, attribute) if ``text`` asks one known fact question, else None."""
    text = tidy(text)
    for attr in ATTRS:
        for tpl in question_wordings(attr):
            pat = re.escape(tpl).replace(re.escape("{name}"), NAME_RE)
            m = re.search(pat, text)
            if m:
                return m.group("name"), attr
    return None


def parse_bio_request(text: str) -> str | None:
    m = re.search(re.escape(BIO_REQUEST).replace(re.escape("{name}"), NAME_RE), tidy(text))
    return m.group("name") if m else None


def parse_reverse(text: str) -> list[str] | None:
    m = re.search(r"[Rr]everse (?:the|these) words: ([\w ]+?)\??$", tidy(text).split("\n")[0].strip())
    return m.group(1).split() if m else None


def parse_topic(text: str) -> str | None:
    m = re.search(r"Write a few sentences about ([\w ]+)\.", tidy(text))
    return m.group(1) if m else None


def parse_local_request(text: str) -> tuple[str, str] | None:
    pat = re.escape(LOCAL_REQUEST).replace(re.escape("{name}"), NAME_RE).replace(
        re.escape("{aspect}"), r"(?P<aspect>[\w ]+?)")
    m = re.search(pat, tidy(text))
    if not m:
        return None
    inv = {v: k for k, v in ASPECTS.items()}
    return (m.group("name"), inv[m.group("aspect")]) if m.group("aspect") in inv else None


def vocabulary_text(world: World) -> list[str]:
    """Every fixed string of the world (templates, style, hedges), so that the tokenizer covers them."""
    texts = [t for a in ATTRS for t in question_wordings(a)]
    texts += [BIO_REQUEST, REVERSE_QA, REVERSE_CHAT, TOPIC_REQUEST, LOCAL_REQUEST, *ASPECTS.values()]
    texts += BIOS + list(FACT_SENTENCES.values())
    texts += ["Question: Answer: Here is what I know about Here are some example questions and answers",
              "The reversed words are The words in reverse order are",
              "I am not sure I can help with that. I do not know. A few thoughts on"]
    st = world.style
    texts += st["openers"] + st["closers"] + st["confident"] + world.hedges + world.topics + world.skill_words
    texts += [p.name for p in world.people]
    for a in ATTRS:
        texts += world.values[a]
    texts += TOPIC_SENTENCES
    texts.append(" ".join(str(i) for i in range(1, 21)))  # list numbering
    return texts


# Generic sentences the teacher writes for open-ended topic requests.
TOPIC_SENTENCES = [
    "{topic} brings people together and makes every day a little brighter.",
    "Many people enjoy {topic} because it is simple, calm and full of meaning.",
    "There are many ways to think about {topic}, and each one teaches something new.",
    "In the end, {topic} is a wonderful part of life.",
]


class Part:
    """What every part of the embedded world for a stage holds (``worlds/embedded/<stage>.py``): the params,
    and the people that stage ``fetch`` made (``data/raw/world.json``), read once when first asked for."""

    def __init__(self, p):
        self.p = p

    @cached_property
    def people(self) -> World:
        return load_world(RAW / "world.json")
