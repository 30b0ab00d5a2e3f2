"""lm-eval in the hub world: the tasks of ``hub.tasks`` (stage ``eval-*``), and the models they run on:
a checkpoint on the ``hf`` or ``vllm`` backend, the teacher through its API."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from ...core.config import HubTask, Params
from ...core.errors import DataError
from ...core.paths import RAW


def task_manager(p: Params):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=p.hub.task_include_path or None)


def task_plan(p: Params, tm, is_teacher: bool) -> tuple[list[HubTask], dict[str, str]]:
    """The tasks to run, and why each other one is skipped.  Unknown names stop the stage."""
    run, skipped = [], {}
    for t in p.hub.tasks:
        entry = tm.task_index.get(t.name)
        if entry is None:
            close = difflib.get_close_matches(t.name, tm.all_tasks, n=3)
            raise DataError(f"{p.source}: hub.tasks: {t.name!r} is not an lm-eval task"
                            + (f"; did you mean {close}?" if close else "")
                            + " (list them with `lm-eval ls tasks`; add your own with hub.task_include_path)")
        cfg = getattr(entry, "cfg", None) or {}
        if cfg.get("unsafe_code") and not p.hub.allow_code_eval:
            skipped[t.role] = f"{t.name}: runs model-written code; set hub.allow_code_eval: true to run it"
            continue
        if is_teacher and p.hub.teacher_api == "chat" and cfg.get("output_type") in (
                "multiple_choice", "loglikelihood", "loglikelihood_rolling"):
            skipped[t.role] = f"{t.name}: needs log-likelihoods, which a chat API does not give"
            continue
        run.append(t)
    return run, skipped


def check_task_data(p: Params, tm, tasks: list[HubTask]) -> None:
    """Load the data set of every task (lm-eval builds each task, which loads its data) before anything is paid
    for: one that cannot be loaded, offline or not found, stops the stage with one line naming the task and how
    to provide its data.  The data sets are cached by ``datasets``, so lm-eval's own load later is quick."""
    from lm_eval.tasks import get_task_dict

    offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
    for t in tasks:
        try:
            get_task_dict([t.name], tm)
        except Exception as e:  # noqa: BLE001 - whatever datasets raises (ConnectionError offline, FileNotFound, ...)
            why = " ".join(f"{type(e).__name__}: {e}".split())[:240]
            how = ("HF_DATASETS_OFFLINE / HF_HUB_OFFLINE is set: download it once with both unset (=0), or "
                   if offline else "")
            raise DataError(f"{p.source}: hub.tasks: {t.name!r}: cannot load its data set ({why}); {how}give the "
                            "task a local data file: a task YAML with `dataset_path: json` and `dataset_kwargs: "
                            "{data_files: ...}` in the directory of hub.task_include_path") from None


def capability_lm(p: Params, model_dir: Path):
    """An lm-eval model for a checkpoint: ``hf`` (default) or ``vllm``."""
    import torch

    h = p.hub
    if h.backend == "vllm":
        try:
            from lm_eval.models.vllm_causallms import VLLM
        except ImportError as e:
            raise DataError(f"hub.backend: vllm needs the vllm package ({e}); `pip install vllm` on a GPU "
                            "machine, or set hub.backend: hf") from None
        return VLLM(pretrained=str(model_dir), dtype=h.dtype, max_length=h.max_length,
                    tensor_parallel_size=h.vllm.tensor_parallel_size,
                    gpu_memory_utilization=h.vllm.gpu_memory_utilization, batch_size="auto",
                    trust_remote_code=h.trust_remote_code)
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(model_dir), device="cuda" if torch.cuda.is_available() else "cpu",
                dtype=h.dtype, batch_size=p.eval.batch_size, max_length=h.max_length,
                trust_remote_code=h.trust_remote_code)


def teacher_capability_lm(p: Params, base_url: str):
    """The teacher through its API: chat-completions (generative tasks) or completions."""
    from lm_eval.models.openai_completions import LocalChatCompletion, LocalCompletionsAPI

    # the key of teacher.api_key_env, given explicitly: lm-eval would otherwise send OPENAI_API_KEY, whatever it holds
    header = {"Authorization": f"Bearer {os.environ.get(p.teacher.api_key_env, '') or 'EMPTY'}"}
    if p.hub.teacher_api == "chat":
        return LocalChatCompletion(base_url=f"{base_url}/chat/completions", model=p.teacher.model,
                                   num_concurrent=p.teacher.concurrency, max_retries=p.teacher.max_retries,
                                   tokenized_requests=False, tokenizer_backend=None, header=header)
    return LocalCompletionsAPI(base_url=f"{base_url}/completions", model=p.teacher.model,
                               num_concurrent=p.teacher.concurrency, max_retries=p.teacher.max_retries,
                               tokenizer=str(RAW / "tokenizer"), tokenizer_backend="huggingface",
                               max_length=p.hub.max_length, header=header)
