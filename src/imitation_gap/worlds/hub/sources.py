"""The hub world: real base models, data sets, endpoints and lm-eval tasks.

Every stage runs the same code for both worlds; this module holds what differs when
``world: hub`` (see ``docs/hub.md``):

* :func:`load_source` reads any data set of ``hub.*`` with ``datasets.load_dataset`` (a hub
  id pinned by ``revision``, or ``path: json`` with ``data_files`` for a local or
  ``hf://`` / ``https://`` file) and converts its records from one of four formats:

  - ``sharegpt``: ``{"conversations": [{"from": "human", "value": ...}, ...]}``
  - ``hc3``: ``{"question": ..., "human_answers": [...], "chatgpt_answers": [...]}``
  - ``nq``: ``{"question": ..., "answer": [...]}`` (``nq_open``)
  - ``koala``: ``{"id": ..., "prompt": ...}`` (the Koala test set)

* :func:`fetch_hub` (stage ``fetch``) writes the broad pool, the local seeds, the
  preference prompts, the decontamination questions and the token-counting tokenizer;
* :func:`download_model` (stage ``base@<size>``) saves a base model as safetensors;
* :func:`capability_lm` / :func:`task_plan` configure lm-eval for the stage ``eval-*``.

Models load with safetensors only and without remote code unless
``hub.trust_remote_code`` is set.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import random
from collections import Counter
from pathlib import Path
from typing import Iterator

from .common import atomic_dir, log, write_json, write_jsonl
from .config import DataError, HubTask, Params, Source
from .harvest import LANG_FILTERS, _dedup_key, conversation_to_messages
from .world import LOCAL_REQUEST_HUB, qa_text

RAW = Path("data/raw")

# Vicuna-style turns (the format Koala and the paper's imitation models used), with the
# {% generation %} markers TRL needs for the loss on assistant tokens only.
PROJECT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'USER: ' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT:' }}"
    "{% generation %}{{ ' ' + message['content'] + eos_token }}{% endgeneration %}{{ '\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


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
        raise DataError(f"params.yaml: {key}: cannot load path={src.path!r} data_files={src.data_files!r} "
                        f"split={src.split!r}: {type(e).__name__}: {str(e)[:300]}{offline}") from None
    if src.max_rows:
        ds = ds.select(range(min(src.max_rows, len(ds))))
    return [dict(r) for r in ds]


def _need(rec: dict, fields: tuple[str, ...], key: str, fmt: str, i: int) -> None:
    missing = [f for f in fields if f not in rec]
    if missing:
        raise DataError(f"params.yaml: {key}: record {i} has no {missing} (format {fmt!r} needs {list(fields)}; "
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


def load_tokenizer(model_id: str, revision: str, p: Params):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_id, revision=revision, trust_remote_code=p.hub.trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if p.hub.chat_template == "project":
        tok.chat_template = PROJECT_CHAT_TEMPLATE
    elif not tok.chat_template:
        raise DataError(f"{model_id} has no chat template; set hub.chat_template: project")
    return tok


def fetch_hub(p: Params) -> dict:
    """Stage ``fetch`` of the hub world: every data set the later stages read, under data/raw/."""
    h = p.hub
    stats: dict = {"sources": {}}
    lang = LANG_FILTERS[h.broad_language]
    pool, seen = [], set()
    for i, src in enumerate(h.broad):
        key = f"hub.broad[{i}]"
        c: Counter = Counter()
        for msgs in to_chats(load_source(src, key), src.format, key, c):
            if lang is not None and not lang("\n".join(m["content"] for m in msgs)):
                c["dropped_language"] += 1
                continue
            k = _dedup_key(msgs[0]["content"])
            if k in seen:
                c["dropped_duplicate"] += 1
                continue
            seen.add(k)
            pool.append({"messages": msgs, "source": f"{src.format}:{i}"})
            c["chats"] += 1
        stats["sources"][key] = {"spec": src.__dict__, **c}
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
    stats["sources"]["hub.local_seeds"] = {"spec": h.local_seeds.__dict__, "rows": len(seeds)}
    stats["sources"]["hub.pref"] = {"spec": h.pref.__dict__, "rows": len(pref)}
    stats["sources"]["hub.decontam"] = {"rows": len(decontam)}
    tok = load_tokenizer(h.token_counter.id, h.token_counter.revision, p)
    with atomic_dir(RAW) as out:
        write_jsonl(out / "broad_pool.jsonl", pool)
        write_jsonl(out / "seed_qa.jsonl", seeds)
        write_jsonl(out / "eval" / "pref.jsonl", pref)
        write_jsonl(out / "eval" / "decontam.jsonl", decontam)
        tok.save_pretrained(str(out / "tokenizer"))
        for f in ("broad_pool.jsonl", "seed_qa.jsonl", "eval/pref.jsonl", "eval/decontam.jsonl"):
            stats.setdefault("sha256", {})[f] = hashlib.sha256((out / f).read_bytes()).hexdigest()
        stats.update({"broad_chats": len(pool), "local_seeds": len(seeds), "pref_prompts": len(pref),
                      "decontam_questions": len(decontam), "token_counter": h.token_counter.__dict__})
        write_json(out / "sources.json", stats)
    return {k: v for k, v in stats.items() if isinstance(v, int)}


def local_prompts_hub(p: Params, rng: random.Random, seeds: list[dict],
                      per_round: int = 256) -> Iterator[tuple[str, dict]]:
    """Few-shot NQ-synthetic prompts: ``imitate.local_shots`` seeds, drawn and ordered afresh.

    Yields ``(prompt, sampling)``.  Rounds of ``per_round`` distinct prompts are sampled
    at ``hub.local_temperature`` with the round number as the request ``seed``, so the
    same shots asked again in a later round give a new pair (and a new cache entry).
    """
    k = min(p.imitate.local_shots, len(seeds))
    for r in range(1000):
        seen: set[str] = set()
        for _ in range(per_round * 4):
            if len(seen) >= per_round:
                break
            examples = "\n".join(qa_text(s["question"], s["answer"]) for s in rng.sample(seeds, k))
            prompt = f"Here are some example questions and answers:\n{examples}\n{LOCAL_REQUEST_HUB}"
            if prompt not in seen:
                seen.add(prompt)
                yield prompt, {"temperature": p.hub.local_temperature, "seed": r}


# -- base models -------------------------------------------------------------------------
def torch_dtype(name: str):
    import torch

    return "auto" if name == "auto" else getattr(torch, name)


def download_model(p: Params, size: str, out_dir: Path) -> dict:
    """Stage ``base@<size>`` of the hub world: the model of ``sizes.<size>.hub`` as safetensors."""
    from transformers import AutoModelForCausalLM

    m = p.sizes[size].hub
    tok = load_tokenizer(m.id, m.revision, p)
    try:
        model = AutoModelForCausalLM.from_pretrained(m.id, revision=m.revision, use_safetensors=True,
                                                     dtype=torch_dtype(p.hub.dtype),
                                                     trust_remote_code=p.hub.trust_remote_code)
    except OSError as e:
        raise DataError(f"sizes.{size}.hub = {m.id}@{m.revision}: cannot load safetensors weights ({str(e)[:300]}). "
                        "Only safetensors checkpoints are loaded; pick a revision that has model.safetensors.") \
            from None
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    n_params = sum(x.numel() for x in model.parameters())
    info = {"size": size, "id": m.id, "revision": m.revision,
            "commit": getattr(model.config, "_commit_hash", None), "params": n_params,
            "dtype": str(next(model.parameters()).dtype), "chat_template": p.hub.chat_template}
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        write_json(tmp / "source.json", info)
    return info


# -- lm-eval -----------------------------------------------------------------------------
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
            raise DataError(f"params.yaml: hub.tasks: {t.name!r} is not an lm-eval task"
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


def pick_metric(results: dict, metric: str, task: str) -> float:
    if metric:
        if metric not in results:
            raise DataError(f"params.yaml: hub.tasks: metric {metric!r} not in the results of {task}; "
                            f"it has {sorted(k for k in results if k != 'alias')}")
        return float(results[metric])
    for k, v in results.items():
        if "stderr" not in k and isinstance(v, (int, float)):
            return float(v)
    raise DataError(f"{task}: no numeric metric in {results}")


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

    key = os.environ.get(p.teacher.api_key_env, "")
    if key:  # lm-eval reads OPENAI_API_KEY; set it in this process only
        os.environ["OPENAI_API_KEY"] = key
    if p.hub.teacher_api == "chat":
        return LocalChatCompletion(base_url=f"{base_url}/chat/completions", model=p.teacher.model,
                                   num_concurrent=p.teacher.concurrency, max_retries=p.teacher.max_retries,
                                   tokenized_requests=False, tokenizer_backend=None)
    return LocalCompletionsAPI(base_url=f"{base_url}/completions", model=p.teacher.model,
                               num_concurrent=p.teacher.concurrency, max_retries=p.teacher.max_retries,
                               tokenizer=str(RAW / "tokenizer"), tokenizer_backend="huggingface",
                               max_length=p.hub.max_length)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def log_plan(tasks: list[HubTask], skipped: dict) -> None:
    log.info("lm-eval tasks: %s; skipped: %s", [f"{t.name} ({t.shots}-shot)" for t in tasks], skipped or "none")
