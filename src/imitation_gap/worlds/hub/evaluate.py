"""The eval stages in the hub world: lm-eval tasks of ``hub.tasks``, checkpoints and the teacher's API."""

from __future__ import annotations

from pathlib import Path

from ...core.config import Params
from .answers import answer_problem
from ..common import form_style, teacher_styled
from .tasks import capability_lm, check_task_data, task_manager, task_plan, teacher_capability_lm


class World:
    """:class:`imitation_gap.worlds.EvalWorld` of the hub world."""

    eval_env: dict[str, str] = {}  # lm-eval downloads its tasks' data

    def __init__(self, p: Params):
        self.p = p

    def answer_problem(self, kind: str, answer: str) -> str | None:
        # a real teacher has no fixed format: form only (hub.answer_check); the client also refuses empty or
        # undecodable text and any answer that holds a secret
        c = self.p.hub.answer_check
        return answer_problem(answer, c.min_word_share, c.control_tokens)

    def eval_plan(self, is_teacher: bool) -> tuple:
        p = self.p
        tm = task_manager(p)
        tasks, skipped = task_plan(p, tm, is_teacher)
        check_task_data(p, tm, tasks)  # every benchmark's data, before the teacher is paid for anything
        return tm, tasks, skipped, {"apply_chat_template": is_teacher and p.hub.teacher_api == "chat",
                                    "confirm_run_unsafe_code": p.hub.allow_code_eval}

    def checkpoint_lm(self, model_dir: Path):
        return capability_lm(self.p, model_dir)

    def teacher_lm(self, base_url: str):
        return teacher_capability_lm(self.p, base_url)

    def style(self, prompts: list[dict], answers: list[str], reference: list[str] | None) -> dict:
        return form_style(answers, reference)  # form only: no facts to check

    def styled(self, answer: str) -> bool:
        return teacher_styled(answer)

    def grade(self, prompt: str, answer: str) -> bool | None:
        return None
