"""The hub world, as the stages see it (:class:`HubWorld`): real data sets, base models, endpoints and lm-eval
tasks (see ``docs/hub.md``).  Its parts: :mod:`.sources` (data sets, stage ``fetch``), :mod:`.models`
(tokenizer, dtype, stage ``base``), :mod:`.tasks` (lm-eval tasks and models), :mod:`.prompts` (NQ-synthetic)."""

from __future__ import annotations

import random
from pathlib import Path

from ...core.config import Params
from ...core.io import atomic_dir, read_jsonl
from ...core.tracking import log_metrics, mlflow_run
from ...imitation.build import Prompts, Transcripts
from ..embedded import raters

RAW = Path("data/raw")


class HubWorld:
    """The models, data and endpoints of ``params.yaml``'s ``hub`` section (see :class:`imitation_gap.worlds.World`)."""

    eval_env: dict[str, str] = {}  # lm-eval downloads its tasks' data
    # list use (the paper's 13% -> 81%) and QA accuracy: no one knows the facts of open prompts
    f5_metrics = ("style.list_rate", "capability.qa")
    example_kind = "open"

    def __init__(self, p: Params):
        self.p = p

    def fetch(self) -> dict:
        from .sources import fetch_hub

        p = self.p
        with mlflow_run(p, "fetch", {"seed": p.seed, "hub": p.section("hub")}):
            with atomic_dir(RAW) as out:
                stats = fetch_hub(p, out)
            log_metrics(stats)
        return stats

    def base_model(self, size: str, chain: int, out: Path) -> dict:
        """The same download for every chain: a released model has one pretraining run (DVC's cache stores the
        identical files once)."""
        from .models import download_model

        p = self.p
        with mlflow_run(p, f"base@{size}-{chain}", {"size": size, "hub": p.section("sizes").get(size, {})}):
            info = download_model(p, size, out)
            log_metrics({"params": info["params"]})
        return info

    def load_kwargs(self) -> dict:
        from .models import load_kwargs

        return load_kwargs(self.p)

    def held_out_names(self) -> set[str]:
        return set()

    def imitation_source(self, kind: str) -> Transcripts | Prompts:
        from .prompts import local_prompts_hub

        if kind == "broad":  # the ShareGPT-Mix pool of fetch: no new teacher calls
            rows = [{"messages": r["messages"]} for r in read_jsonl(RAW / "broad_pool.jsonl")]
            return Transcripts(rows, {"records": len(rows), "source": "hub.broad"},
                               "the broad pool of hub.broad (data/raw/broad_pool.jsonl)")
        return local_prompts_hub(self.p, random.Random(f"{self.p.seed}-{kind}"), read_jsonl(RAW / "seed_qa.jsonl"))

    def answer_problem(self, kind: str, answer: str) -> str | None:
        return None  # a real teacher has no fixed format; the client still refuses empty or undecodable text

    def eval_plan(self, is_teacher: bool) -> tuple:
        from .tasks import check_task_data, task_manager, task_plan

        p = self.p
        tm = task_manager(p)
        tasks, skipped = task_plan(p, tm, is_teacher)
        check_task_data(p, tm, tasks)
        return tm, tasks, skipped, {"apply_chat_template": is_teacher and p.hub.teacher_api == "chat",
                                    "confirm_run_unsafe_code": p.hub.allow_code_eval}

    def checkpoint_lm(self, model_dir: Path):
        from .tasks import capability_lm

        return capability_lm(self.p, model_dir)

    def teacher_lm(self, base_url: str):
        from .tasks import teacher_capability_lm

        return teacher_capability_lm(self.p, base_url)

    def style(self, prompts: list[dict], answers: list[str], reference: list[str] | None) -> dict:
        return raters.style(None, prompts, answers, reference)  # form only: no facts to check

    def styled(self, answer: str) -> bool:
        return raters.teacher_styled(answer)

    def grade(self, prompt: str, answer: str) -> bool | None:
        return None

    def card_data(self, size: str) -> dict:
        return {"world": "hub", "hub_model": self.p.section("sizes").get(size, {}).get("hub")}
