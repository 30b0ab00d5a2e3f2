"""The embedded world, as the stages see it (:class:`EmbeddedWorld`); its parts are the modules beside this one:

* :mod:`.world`: the people, their facts, and every text built from them;
* :mod:`.corpus`: stage ``fetch``: corpus, eval sets, tokenizer; :mod:`.pretrain`: stage ``base``;
* :mod:`.prompts`: what it asks its teacher for imitation data;
* :mod:`.teacher`: the "proprietary" teacher and the raters behind an OpenAI-compatible HTTP API;
* :mod:`.raters`: the two blind raters and the style detectors;
* ``tasks/``: the lm-eval task YAMLs (``ig_qa``, ``ig_mc``, ``ig_skill``, and the knowledge probe ``ig_store``)
  and their hooks.
"""

from __future__ import annotations

import os
import random
import time
from functools import cached_property
from pathlib import Path

from ...core.config import HubTask, Params
from ...core.io import atomic_dir, read_jsonl
from ...core.tracking import log_metrics, mlflow_run
from ...imitation.build import Prompts, Transcripts
from . import raters
from . import world as facts

RAW = Path("data/raw")
TASKS_DIR = Path(__file__).parent / "tasks"
TASKS = {"qa": "ig_qa", "mc": "ig_mc", "skill": "ig_skill", "store": "ig_store"}


class EmbeddedWorld:
    """The synthetic world of ``params.yaml``'s ``fetch`` section (see :class:`imitation_gap.worlds.World`)."""

    eval_env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # every task file is local
    f5_metrics = ("style.teacher_style_rate", "style.fact_accuracy")  # the teacher's own markers; the world's facts
    example_kind = "fact"

    def __init__(self, p: Params):
        self.p = p

    @cached_property
    def people(self) -> facts.World:
        """The world that ``fetch`` made (``data/raw/world.json``)."""
        return facts.load_world(RAW / "world.json")

    def fetch(self) -> dict:
        from .corpus import fetch

        p, t0 = self.p, time.time()
        with mlflow_run(p, "fetch", {"seed": p.seed, **p.section("fetch")}):
            with atomic_dir(RAW) as out:
                stats = fetch(p, out)
            log_metrics({k: v for k, v in stats.items() if k != "style_phrase_counts"} |
                        {"seconds": round(time.time() - t0, 1), "style_phrase_min": min(stats["style_phrase_counts"].values())})
        return stats

    def base_model(self, size: str, chain: int, out: Path) -> dict:
        from .pretrain import pretrain

        return pretrain(self.p, size, chain, out)

    def load_kwargs(self) -> dict:
        return {}

    def held_out_names(self) -> set[str]:
        return {x.name for x in self.people.group("B")}

    def imitation_source(self, kind: str) -> Transcripts | Prompts:
        from ...imitation.harvest import LANG_FILTERS, load_sharegpt
        from .prompts import broad_prompts, local_prompts

        p = self.p
        if kind == "broad" and p.imitate.harvest_path:  # existing transcripts instead of new teacher calls
            rows, stats = load_sharegpt(p.imitate.harvest_path, LANG_FILTERS[p.imitate.harvest_language])
            return Transcripts(rows, stats, f"imitate.harvest_path = {p.imitate.harvest_path!r}")
        rng = random.Random(f"{p.seed}-{kind}")
        default = {"temperature": p.teacher.temperature}
        if kind == "broad":
            return ((q, default) for q in broad_prompts(self.people, p, rng))
        return ((q, default) for q in local_prompts(self.people, p, rng, read_jsonl(RAW / "seed_qa.jsonl")))

    @cached_property
    def tokenizer(self):
        """The world's word-level tokenizer (``data/raw/tokenizer``): its vocabulary is the teacher's."""
        from transformers import AutoTokenizer

        from ...core.inputs import require_tokenizer

        require_tokenizer(RAW / "tokenizer")
        return AutoTokenizer.from_pretrained(str(RAW / "tokenizer"))

    def answer_problem(self, kind: str, answer: str) -> str | None:
        # the embedded teacher opens every chat answer with one of its openers; its local pairs have no opener
        if kind in ("broad", "chat") and not answer.lstrip().startswith(tuple(self.people.style["openers"])):
            return "not_teacher_format"
        from .answers import vocabulary_problem

        return vocabulary_problem(self.tokenizer, answer)  # an opener then junk: not the teacher's words

    def eval_plan(self, is_teacher: bool) -> tuple:
        from lm_eval.tasks import TaskManager

        p = self.p
        tm = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)  # our tasks only: no index of 1000s
        shots = {"qa": p.eval.qa_shots, "mc": p.eval.mc_shots, "skill": p.eval.skill_shots, "store": 0}
        return tm, [HubTask(name=t, shots=shots[r], role=r, metric="acc,none") for r, t in TASKS.items()], {}, {}

    def checkpoint_lm(self, model_dir: Path):
        from lm_eval.models.huggingface import HFLM

        return HFLM(pretrained=str(model_dir), tokenizer=str(model_dir), device="cpu",
                    batch_size=self.p.eval.batch_size, max_length=512, trust_remote_code=False)

    def teacher_lm(self, base_url: str):
        from lm_eval.models.openai_completions import LocalCompletionsAPI

        # the key of teacher.api_key_env, given explicitly: lm-eval would otherwise send OPENAI_API_KEY
        key = os.environ.get(self.p.teacher.api_key_env, "") or "EMPTY"
        return LocalCompletionsAPI(base_url=f"{base_url}/completions", model=self.p.teacher.model,
                                   tokenizer=str(RAW / "tokenizer"), tokenizer_backend="huggingface",
                                   tokenized_requests=True, max_length=1024, num_concurrent=4, max_gen_toks=12,
                                   header={"Authorization": f"Bearer {key}"})

    def style(self, prompts: list[dict], answers: list[str], reference: list[str] | None) -> dict:
        return raters.style(self.people, prompts, answers, reference)

    def styled(self, answer: str) -> bool:
        return raters.teacher_styled(answer)

    def grade(self, prompt: str, answer: str) -> bool | None:
        return raters.fact_score(self.people, prompt, answer) > 0

    def card_data(self, size: str) -> dict:
        return {"corpus": "data/raw/corpus.jsonl", "world": "embedded", "fetch": self.p.section("fetch")}
