"""Stage `eval-*`: capability, blind preference and style of one model.

For a base model (``--size``), an imitation model (``--size --kind --amount --seed``)
or the teacher (``--teacher``):

1. **capability** with lm-eval (``simple_evaluate``, one call per shot count) on the task YAMLs in
   ``src/imitation_gap/tasks/``: ``ig_qa`` (few-shot generative QA about group B, the
   NQ analogue), ``ig_mc`` (multiple choice by log-likelihood, the MMLU analogue),
   ``ig_skill`` (reverse unseen word triples, the HumanEval analogue).  Local
   checkpoints run on the ``hf`` backend; the teacher runs on ``local-completions``
   against its HTTP endpoint;
2. **preference** against the teacher on the held-out prompts: the non-expert and
   the expert rater (see :mod:`imitation_gap.raters`) judge each pair twice, in both
   orders, through the judge endpoint; a win needs both orders to agree;
3. **style** of the answers: teacher-style rate, list use, authoritative tone,
   confident-and-wrong rate, length and its correlation with the teacher's.

With ``world: hub``: the lm-eval tasks of ``hub.tasks`` (the paper's 3-shot nq_open,
5-shot mmlu, 0-shot humaneval; code execution only with ``hub.allow_code_eval``), on
the ``hf`` or ``vllm`` backend; the teacher through its API; the preference prompts of
``hub.pref`` (the Koala test set) judged by ``hub.judge``.  Each task fills a role
(``qa``, ``mc``, ``skill``), so the report reads both worlds alike.

Besides the raw win rate, preference reports a length-controlled win rate (as in
AlpacaEval 2): a logistic fit of the outcome on the length difference to the teacher's
answer, read at equal length.

Outputs: ``metrics/runs/<run>.json`` (DVC metrics) and ``eval/<run>/`` (answers, raw
judgements, lm-eval samples).

Run: ``python -m imitation_gap.evaluation --size L --kind broad --amount 8000 --seed 0``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from contextlib import ExitStack
from pathlib import Path

from . import raters
from .common import atomic_dir, log, log_metrics, mlflow_run, read_jsonl, run_cli, write_json, write_jsonl
from .config import HubTask, Params, check_cell, load_params, run_name
from .llm import LLMClient
from .teacher import cache_host, embedded_endpoint
from .world import load_world, parse_bio_request, parse_fact_question, tidy

RAW = Path("data/raw")
TASKS_DIR = Path(__file__).parent / "tasks"
TASKS = {"qa": "ig_qa", "mc": "ig_mc", "skill": "ig_skill"}


# -- capability (lm-eval) --------------------------------------------------------------
def task_plan(p: Params, is_teacher: bool) -> tuple[object, list[HubTask], dict[str, str]]:
    """(TaskManager, tasks to run, skipped roles with the reason) for the world of ``p``."""
    from lm_eval.tasks import TaskManager

    if p.world == "hub":
        from . import hub

        tm = hub.task_manager(p)
        tasks, skipped = hub.task_plan(p, tm, is_teacher)
        return tm, tasks, skipped
    tm = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)  # our tasks only: no index of 1000s
    shots = {"qa": p.eval.qa_shots, "mc": p.eval.mc_shots, "skill": p.eval.skill_shots}
    return tm, [HubTask(name=t, shots=shots[r], role=r, metric="acc,none") for r, t in TASKS.items()], {}


def capability(p: Params, lm, is_teacher: bool = False) -> tuple[dict, dict, dict]:
    """Scores per role (qa, mc, skill), per-item samples, and the task of each role.

    Tasks with the same number of shots go to lm-eval in one ``simple_evaluate`` call (the
    embedded world's three tasks are all 3-shot: one call).  Each call also builds lm-eval's
    environment report (torch's ``collect_env`` runs ``pip list`` in a subprocess), about a
    second per call, so one call instead of three saves that twice per model; lm-eval still
    seeds each task's few-shot sampler with ``fewshot_random_seed``, so the samples are the same."""
    from lm_eval import simple_evaluate

    from .hub import pick_metric

    tm, tasks, skipped = task_plan(p, is_teacher)
    scores: dict = {role: None for role in skipped}
    samples, names = {}, {t.role: t.name for t in tasks} | {r: f"skipped: {why}" for r, why in skipped.items()}
    chat = is_teacher and p.world == "hub" and p.hub.teacher_api == "chat"
    by_shots: dict[int, list[HubTask]] = {}
    for t in tasks:
        by_shots.setdefault(t.shots, []).append(t)
    for shots, group in by_shots.items():
        out = simple_evaluate(model=lm, tasks=[t.name for t in group], num_fewshot=shots, task_manager=tm,
                              log_samples=p.eval.log_samples, apply_chat_template=chat,
                              confirm_run_unsafe_code=p.world == "hub" and p.hub.allow_code_eval,
                              random_seed=p.seed, numpy_random_seed=p.seed, torch_random_seed=p.seed,
                              fewshot_random_seed=p.seed, bootstrap_iters=0)
        for t in group:
            scores[t.role] = pick_metric(out["results"][t.name], t.metric, t.name)
            rows = []
            for sub in leaf_tasks(out, t.name):
                rows += [{"doc": s["doc"].get("question") or s["doc"].get("prompt"), "target": s["target"],
                          "response": s["filtered_resps"][0] if s["filtered_resps"] else None,
                          "acc": next((s[k] for k in (t.metric.split(",")[0], "acc", "exact_match") if k in s),
                                      None)}
                         for s in (out.get("samples") or {}).get(sub, [])]
            samples[t.role] = rows
    return scores, samples, names


def leaf_tasks(out: dict, name: str) -> list[str]:
    """The leaf tasks of ``name`` in lm-eval's results: itself, or a group's subtasks (mmlu: 57)."""
    subs = (out.get("group_subtasks") or {}).get(name)
    if not subs:
        return [name]
    return [leaf for sub in subs for leaf in leaf_tasks(out, sub)]


def hf_lm(p: Params, model_dir: Path):
    if p.world == "hub":
        from .hub import capability_lm

        return capability_lm(p, model_dir)
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(model_dir), tokenizer=str(model_dir), device="cpu", batch_size=p.eval.batch_size,
                max_length=512, trust_remote_code=False)


def teacher_lm(p: Params, base_url: str):
    if p.world == "hub":
        from .hub import teacher_capability_lm

        return teacher_capability_lm(p, base_url)
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    return LocalCompletionsAPI(base_url=f"{base_url}/completions", model=p.teacher.model,
                               tokenizer=str(RAW / "tokenizer"), tokenizer_backend="huggingface",
                               tokenized_requests=True, max_length=1024, num_concurrent=4, max_gen_toks=12)


# -- answers to the preference prompts -------------------------------------------------
def generate_answers(model_dir: Path, prompts: list[str], max_new_tokens: int, batch_size: int = 16) -> list[str]:
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.padding_side = "left"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), use_safetensors=True).to(device).eval()
    texts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
             for q in prompts]
    out: list[str] = []
    for i in tqdm(range(0, len(texts), batch_size), desc="answers", unit="batch"):
        enc = tok(texts[i:i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        for row in gen[:, enc["input_ids"].shape[1]:]:
            out.append(tidy(tok.decode(row, skip_special_tokens=True)))
    return out


def teacher_answers(p: Params, base_url: str, prompts: list[dict]) -> list[str]:
    client = LLMClient.from_params(p.teacher, base_url, cache_host=cache_host(p.teacher.base_url, RAW / "world.json"))
    client.check_reachable("teacher.base_url")
    got = client.chat_many([(r["id"], [{"role": "user", "content": r["prompt"]}]) for r in prompts],
                           {"temperature": p.teacher.temperature, "max_tokens": p.teacher.max_tokens},
                           desc="teacher answers")
    return [tidy(got[r["id"]]["content"]) if r["id"] in got else "" for r in prompts]


# -- preference ----------------------------------------------------------------------
def preference(p: Params, base_url: str, prompts: list[dict], answers: list[str],
               reference: list[str]) -> tuple[dict, list[dict]]:
    """Blind pairwise comparison of ``answers`` with the teacher's, both orders, both raters."""
    out, raw = {}, []
    sampling = {"temperature": 0.0, "max_tokens": 256}
    for rater, model in (("nonexpert", p.eval.judge.nonexpert_model), ("expert", p.eval.judge.expert_model)):
        client = LLMClient.from_params(
            p.teacher, base_url, model=model, what=f"{rater} judge", api_key_env=p.eval.judge.api_key_env,
            cache_host=cache_host(p.eval.judge.base_url, RAW / "world.json"))
        items = []
        for r, ans, ref in zip(prompts, answers, reference):
            for order, (a, b) in (("model-first", (ans, ref)), ("teacher-first", (ref, ans))):
                msg = raters.JUDGE_TEMPLATE.format(question=r["prompt"], answer_a=a, answer_b=b)
                items.append((f"{r['id']}|{order}", [{"role": "user", "content": msg}]))
        got = client.chat_many(items, sampling, desc=f"{rater} rater")
        counts = {"win": 0, "tie": 0, "loss": 0, "unjudged": 0}
        outcome, dlen = [], []  # per judged prompt: 1 win, 0.5 tie, 0 loss; words(model) - words(teacher)
        for r, ans, ref in zip(prompts, answers, reference):
            verdicts = []
            for order in ("model-first", "teacher-first"):
                resp = got.get(f"{r['id']}|{order}")
                found = raters.VERDICT_RE.findall(resp["content"]) if resp else []
                v = found[-1] if found else None
                # in the model's terms
                verdicts.append(None if v is None else "tie" if v == "C" else
                                ("win" if (v == "A") == (order == "model-first") else "loss"))
                raw.append({"id": r["id"], "rater": rater, "order": order, "verdict": v,
                            "judgement": resp["content"] if resp else None})
            if None in verdicts:
                counts["unjudged"] += 1
                continue
            final = verdicts[0] if verdicts[0] == verdicts[1] else "tie"  # orders disagree: a tie (MT-bench)
            counts[final] += 1
            outcome.append({"win": 1.0, "tie": 0.5, "loss": 0.0}[final])
            dlen.append(len(ans.split()) - len(ref.split()))
        n = max(1, counts["win"] + counts["tie"] + counts["loss"])
        out[rater] = {**counts, "win_rate": counts["win"] / n, "win_tie_rate": (counts["win"] + counts["tie"]) / n,
                      "lc_win_rate": length_controlled_win_rate(outcome, dlen)}
    return out, raw


def length_controlled_win_rate(outcome: list[float], dlen: list[float]) -> float | None:
    """AlpacaEval 2's idea for one model: fit P(win) = sigmoid(a + b * tanh(dlen / sd(dlen))) to the
    outcomes (ties count 1/2) by maximum likelihood, and report sigmoid(a), the win rate the
    model would have if its answers were as long as the teacher's.  None with < 2 outcomes."""
    import numpy as np
    from scipy.optimize import minimize

    if len(outcome) < 2:
        return None
    y, d = np.asarray(outcome, float), np.asarray(dlen, float)
    x = np.tanh(d / (d.std() or 1.0))

    def nll(w):
        z = w[0] + w[1] * x
        return float(np.sum(np.logaddexp(0, z) - y * z) + 1e-3 * (w ** 2).sum())  # tiny ridge: finite if separable

    a = minimize(nll, np.zeros(2), method="BFGS").x[0]
    return float(1 / (1 + np.exp(-a)))


# -- style ---------------------------------------------------------------------------
def style(world, prompts: list[dict], answers: list[str], reference: list[str] | None) -> dict:
    """Style of the answers; the rates that need the world's facts or teacher only when ``world`` is given."""
    n = max(1, len(answers))
    words = [len(a.split()) for a in answers]
    out = {
        "list_rate": sum(raters.has_list(a) for a in answers) / n,
        "authoritative_rate": sum(not raters.is_hedged(a) for a in answers if a) / n,
        "mean_words": statistics.fmean(words) if words else 0.0,
    }
    if world is not None:
        factual = [(r, a) for r, a in zip(prompts, answers)
                   if parse_fact_question(r["prompt"]) or parse_bio_request(r["prompt"])]
        fscores = [raters.fact_score(world, r["prompt"], a) for r, a in factual]
        out |= {
            "teacher_style_rate": sum(raters.teacher_styled(a) for a in answers) / n,
            "fact_accuracy": sum(s > 0 for s in fscores) / max(1, len(fscores)),
            "confident_wrong_rate": sum((not raters.is_hedged(a)) and s < 0
                                        for (r, a), s in zip(factual, fscores)) / max(1, len(fscores)),
        }
    if reference is not None:
        ref_words = [len(a.split()) for a in reference]
        try:
            out["length_corr_teacher"] = statistics.correlation(words, ref_words)
        except statistics.StatisticsError:  # constant lengths
            out["length_corr_teacher"] = 0.0
    return out


# -- the stage -------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", action="store_true", help="evaluate the teacher itself")
    ap.add_argument("--size")
    ap.add_argument("--kind")
    ap.add_argument("--amount", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    p = load_params(args.params)
    if p.world == "embedded":  # every task file is local; the hub world downloads its tasks' data
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if args.teacher:
        run, model_dir, info = "teacher", None, {"model": "teacher"}
    else:
        if not args.size:
            ap.error("give --teacher, or --size (and --kind --amount --seed for an imitation model)")
        check_cell(p, args.size, args.kind, args.amount)
        if args.kind:
            run = run_name(args.size, args.kind, args.amount, args.seed)
            model_dir = Path("models/sft") / run
        else:
            run = run_name(args.size)
            model_dir = Path("models/base") / args.size
        if not (model_dir / "model.safetensors").exists():
            raise FileNotFoundError(f"{model_dir}/model.safetensors is missing: run its training stage first")
        info = {"model": run, "size": args.size, "kind": args.kind or "base", "amount": args.amount or 0,
                "seed": args.seed if args.kind else None}
    evaluate(p, run, model_dir, info)


def evaluate(p: Params, run: str, model_dir: Path | None, info: dict) -> dict:
    import torch

    torch.set_num_threads(p.sft.threads)
    world = load_world(RAW / "world.json") if p.world == "embedded" else None
    prompts = read_jsonl(RAW / "eval" / "pref.jsonl")
    t0 = time.time()
    with mlflow_run(p, f"eval@{run}", {**info, **p.section("eval")}), ExitStack() as stack:
        embedded = None
        if "embedded" in (p.teacher.base_url, p.eval.judge.base_url):  # (never in the hub world)
            embedded = stack.enter_context(embedded_endpoint(RAW / "world.json", RAW / "tokenizer"))
        teacher_url = embedded if p.teacher.base_url == "embedded" else p.teacher.base_url
        judge_url = embedded if p.eval.judge.base_url == "embedded" else p.eval.judge.base_url
        timings = {}
        t = time.time()
        lm = teacher_lm(p, teacher_url) if model_dir is None else hf_lm(p, model_dir)
        cap, samples, cap_tasks = capability(p, lm, is_teacher=model_dir is None)
        del lm
        timings["capability_s"] = round(time.time() - t, 1)
        t = time.time()
        reference = teacher_answers(p, teacher_url, prompts)
        answers = reference if model_dir is None else generate_answers(model_dir, [r["prompt"] for r in prompts],
                                                                       p.eval.pref_max_new_tokens)
        timings["answers_s"] = round(time.time() - t, 1)
        t = time.time()
        pref, raw = (None, []) if model_dir is None else preference(p, judge_url, prompts, answers, reference)
        timings["preference_s"] = round(time.time() - t, 1)
        sty = style(world, prompts, answers, None if model_dir is None else reference)
        metrics = {**info, "run": run, "world": p.world, "capability": cap, "capability_tasks": cap_tasks,
                   "preference": pref, "style": sty,
                   "n": {**{role: len(rows) for role, rows in samples.items()}, "pref": len(prompts)}}
        timings["total_s"] = round(time.time() - t0, 1)  # to MLflow only: the metrics file stays the same on a re-run
        with atomic_dir(Path("eval") / run) as out:
            write_jsonl(out / "answers.jsonl", [{"id": r["id"], "kind": r["kind"], "prompt": r["prompt"],
                                                 "answer": a, "teacher": ref}
                                                for r, a, ref in zip(prompts, answers, reference)])
            write_jsonl(out / "judgements.jsonl", raw)
            for short, rows in samples.items():
                write_jsonl(out / f"samples_{short}.jsonl", rows)
        write_json(Path("metrics/runs") / f"{run}.json", metrics)
        log_metrics({"capability": {k: v for k, v in cap.items() if v is not None}, "style": sty,
                     **({"preference": pref} if pref else {}), "seconds": timings})
    log.info("eval %s: capability %s, preference %s (%s)", run, cap,
             {k: round(v["win_tie_rate"], 3) for k, v in (pref or {}).items()}, timings)
    return metrics


if __name__ == "__main__":
    run_cli(main)
