"""Eval: seconds per model for each part of ``imitation_gap.stages.evaluate``; lm-eval batch sizes.

Method: in one process (imports already paid: the import cost is measured separately, in
the start-up table), for one base model, each part is timed with the project's own
functions: model load (the world's ``checkpoint_lm``), lm-eval per task (``capability`` with one task),
the model's answers to the preference prompts (``generate_answers``, which loads the
model again), the teacher's answers (through the client, empty cache), both raters
(``preference``), style metrics (``style``).  The fixed part of each lm-eval task (task
build, data loading, few-shot context: everything but the model's forward passes) is
estimated by the same call with ``limit=1``.
"""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from .common import median, say

BATCH_SIZES = (1, 8, 32, 64)


@contextmanager
def chdir(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _with(p, **eval_kw):
    return p.model_copy(update={"eval": p.eval.model_copy(update=eval_kw)})


def _one_task(p, lm, short: str, limit: int | None = None) -> float:
    """``evaluate.capability`` restricted to one task (and ``limit`` docs); returns seconds."""
    from imitation_gap.stages import evaluate as ev
    from imitation_gap.worlds import get_world
    from imitation_gap.worlds.embedded import evaluate as embedded

    saved = embedded.TASKS
    embedded.TASKS = {short: saved[short]}
    try:
        shots = {task.role: task.shots for task in get_world(p, "evaluate").eval_plan(is_teacher=False)[1]}  # as the stage's
        t = time.perf_counter()
        if limit is None:
            ev.capability(p, get_world(p, "evaluate"), lm)
        else:
            from lm_eval import simple_evaluate

            simple_evaluate(model=lm, tasks=[saved[short]], num_fewshot=shots[short],
                            task_manager=_tm(), log_samples=True, random_seed=p.seed, numpy_random_seed=p.seed,
                            torch_random_seed=p.seed, fewshot_random_seed=p.seed, bootstrap_iters=0, limit=limit)
        return time.perf_counter() - t
    finally:
        embedded.TASKS = saved


def _tm():
    from lm_eval.tasks import TaskManager

    from imitation_gap.worlds.embedded import evaluate as embedded

    return TaskManager(include_path=str(embedded.TASKS_DIR), include_defaults=False)


def run(world: Path, p, model_dir: Path, reps: int, batch_sizes=BATCH_SIZES, batch_limit: int = 40) -> dict:
    import torch

    from imitation_gap.core.io import read_jsonl
    from imitation_gap.core.text import tidy
    from imitation_gap.llm.client import LLMClient
    from imitation_gap.stages import evaluate as ev
    from imitation_gap.worlds import Endpoint, get_world
    from imitation_gap.worlds.embedded import evaluate as embedded
    from imitation_gap.worlds.embedded.teacher import embedded_endpoint

    torch.set_num_threads(p.sft.threads)
    parts: dict[str, list[float]] = {}

    def add(k: str, v: float) -> None:
        parts.setdefault(k, []).append(v)

    with chdir(world), embedded_endpoint(ev.RAW / "world.json", ev.RAW / "tokenizer") as url, \
            tempfile.TemporaryDirectory() as cache:
        world_obj = get_world(p, "evaluate")
        prompts = read_jsonl(ev.RAW / "eval" / "pref.jsonl")
        for rep in range(reps):
            say(f"eval: parts, rep {rep + 1}/{reps}")
            t = time.perf_counter()
            lm = world_obj.checkpoint_lm(model_dir)
            add("model load (HFLM)", time.perf_counter() - t)
            for short in embedded.TASKS:
                add(f"lm-eval {short}", _one_task(p, lm, short))
                add(f"lm-eval {short}: fixed (limit=1)", _one_task(p, lm, short, limit=1))
            del lm
            t = time.perf_counter()
            answers = ev.generate_answers(model_dir, [r["prompt"] for r in prompts], p.eval.pref_max_new_tokens)
            add("answers (load + generate)", time.perf_counter() - t)
            # the teacher's answers and the raters through a fresh cache each rep (the stage's first run)
            rep_cache = Path(cache) / f"r{rep}"
            pt = p.model_copy(update={"teacher": p.teacher.model_copy(update={"cache_dir": str(rep_cache)})})
            t = time.perf_counter()
            cl = LLMClient.from_params(pt.teacher, url, progress=False)
            got = cl.chat_many([(r["id"], [{"role": "user", "content": r["prompt"]}]) for r in prompts],
                               {"temperature": p.teacher.temperature, "max_tokens": p.teacher.max_tokens})
            reference = [tidy(got[r["id"]]["content"]) if r["id"] in got else "" for r in prompts]
            add("teacher answers (client)", time.perf_counter() - t)
            t = time.perf_counter()
            ev.preference(pt, world_obj, Endpoint(url), prompts, answers, reference)
            add("raters (preference, both)", time.perf_counter() - t)
            t = time.perf_counter()
            world_obj.style(prompts, answers, reference)
            add("style", time.perf_counter() - t)
        batches: dict[str, list[float]] = {}
        for b in batch_sizes:
            pb = _with(p, batch_size=b)
            for rep in range(reps):
                say(f"eval: lm-eval batch size {b}, rep {rep + 1}/{reps} ({batch_limit} docs per task)")
                lm = get_world(pb, "evaluate").checkpoint_lm(model_dir)
                t = time.perf_counter()
                for short in embedded.TASKS:
                    _one_task(pb, lm, short, limit=batch_limit)
                batches.setdefault(str(b), []).append(time.perf_counter() - t)
                del lm
    med = {k: median(v) for k, v in parts.items()}
    work = sum(v for k, v in med.items() if "fixed" not in k)
    fixed_lm = sum(v for k, v in med.items() if "fixed" in k)
    return {"model": str(model_dir.name), "parts": parts, "median": med, "total_s": work,
            "lm_eval_fixed_s": fixed_lm, "batch_limit": batch_limit,
            "batch": {k: {"runs": v, "s": median(v)} for k, v in batches.items()},
            "n": {"pref": len(prompts)}}
