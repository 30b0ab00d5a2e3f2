"""The eval stages in the embedded world: its lm-eval tasks (``tasks/``), its teacher and raters, its facts."""

from __future__ import annotations

import os
from pathlib import Path

from ...core.config import HubTask
from ...core.paths import RAW
from . import raters
from .teacher import TeacherPart

TASKS_DIR = Path(__file__).parent / "tasks"
TASKS = {"qa": "ig_qa", "mc": "ig_mc", "skill": "ig_skill", "store": "ig_store"}


class World(TeacherPart):
    """:class:`imitation_gap.worlds.EvalWorld` of the embedded world."""

    eval_env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # every task file is local

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
