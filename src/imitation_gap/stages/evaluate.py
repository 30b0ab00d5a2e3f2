"""Stage `eval-*`: capability, blind preference and style of one model.

For a base model (``--size``), an imitation model (``--size --kind --amount --seed``)
or the teacher (``--teacher``):

1. **capability** with lm-eval (``simple_evaluate``, one call per shot count) on the task YAMLs in
   ``src/imitation_gap/worlds/embedded/tasks/``: ``ig_qa`` (few-shot generative QA about group B, the
   NQ analogue), ``ig_mc`` (multiple choice by log-likelihood, the MMLU analogue),
   ``ig_skill`` (reverse unseen word triples, the HumanEval analogue).  Local
   checkpoints run on the ``hf`` backend; the teacher runs on ``local-completions``
   against its HTTP endpoint;
2. **preference** against the teacher on the held-out prompts: the non-expert and
   the expert rater (see :mod:`imitation_gap.worlds.embedded.raters`) judge each pair twice, in
   both orders, through the judge endpoint; a win needs both orders to agree;
3. **style** of the answers: teacher-style rate, list use, authoritative tone,
   confident-and-wrong rate, length and its correlation with the teacher's.

With ``world: hub``: the lm-eval tasks of ``hub.tasks`` (the paper's 3-shot nq_open,
5-shot mmlu, 0-shot humaneval; code execution only with ``hub.allow_code_eval``), on
the ``hf`` or ``vllm`` backend; the teacher through its API; the preference prompts of
``hub.pref`` (the Koala test set) judged by ``hub.judge``.  Each task fills a role
(``qa``, ``mc``, ``skill``), so the report reads both worlds alike.

Besides the raw win rate, preference reports a length-controlled win rate (as in
AlpacaEval 2): a logistic fit of the outcome on the length difference to the teacher's
answer, read at equal length (:func:`length_controlled_win_rate`).

Outputs: ``metrics/runs/<run>.json`` (DVC metrics) and ``eval/<run>/`` (answers, raw
judgements, lm-eval samples).

Run: ``python -m imitation_gap.stages.evaluate --size L --kind broad --amount 8000 --seed 0``
(dvc: ``dvc repro eval-sft@L-broad-8000-0``; ``--size L``: ``eval-base@L``; ``--teacher``: ``eval-teacher``).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from ..core.cli import run_cli
from ..core.config import HubTask, Params, base_dir, check_cell, load_params, run_name
from ..core.errors import ConfigError, DataError, EndpointError
from ..core.inputs import require_checkpoint, require_json, require_jsonl
from ..core.io import atomic_dir, read_jsonl, write_json, write_jsonl
from ..core.numbers import fit_value
from ..core.paths import EVAL, RAW, RUNS, SFT_MODELS
from ..core.redact import holds_secret, redact
from ..core.text import tidy
from ..core.tracking import log_metrics, mlflow_run
from ..llm.client import LLMClient
from ..worlds import Endpoint, EvalWorld as World, endpoints, get_world
from ..worlds.common import JUDGE_TEMPLATE, VERDICT_RE

log = logging.getLogger("imitation_gap")


# -- capability (lm-eval) --------------------------------------------------------------
def capability(p: Params, world: World, lm, is_teacher: bool = False, plan: tuple | None = None) -> tuple[dict, dict, dict]:
    """Scores per role (qa, mc, skill), per-item samples, and the task of each role.

    Tasks with the same number of shots go to lm-eval in one ``simple_evaluate`` call (the
    embedded world's three tasks are all 3-shot: one call).  Each call also builds lm-eval's
    environment report (torch's ``collect_env`` runs ``pip list`` in a subprocess), about a
    second per call, so one call instead of three saves that twice per model; lm-eval still
    seeds each task's few-shot sampler with ``fewshot_random_seed``, so the samples are the same."""
    from lm_eval import simple_evaluate

    tm, tasks, skipped, options = plan or world.eval_plan(is_teacher)
    scores: dict = {role: None for role in skipped}
    samples, names = {}, {t.role: t.name for t in tasks} | {r: f"skipped: {why}" for r, why in skipped.items()}
    by_shots: dict[int, list[HubTask]] = {}
    for t in tasks:
        by_shots.setdefault(t.shots, []).append(t)
    for shots, group in by_shots.items():
        out = simple_evaluate(model=lm, tasks=[t.name for t in group], num_fewshot=shots, task_manager=tm,
                              log_samples=p.eval.log_samples, random_seed=p.seed, numpy_random_seed=p.seed,
                              torch_random_seed=p.seed, fewshot_random_seed=p.seed, bootstrap_iters=0, **options)
        for t in group:
            scores[t.role] = pick_metric(out["results"][t.name], t.metric, t.name, p.source)
            rows = []
            for sub in leaf_tasks(out, t.name):
                rows += [{"doc": s["doc"].get("question") or s["doc"].get("prompt"), "target": s["target"],
                          "response": s["filtered_resps"][0] if s["filtered_resps"] else None,
                          "acc": next((s[k] for k in (t.metric.split(",")[0], "acc", "exact_match") if k in s),
                                      None)}
                         for s in (out.get("samples") or {}).get(sub, [])]
            samples[t.role] = rows
    return scores, samples, names


def teacher_capability(p: Params, world: World, teacher: Endpoint, plan: tuple | None = None) -> tuple[dict, dict, dict]:
    """:func:`capability` of the teacher through its API: lm-eval's failures against the endpoint (it retries,
    then raises whatever its HTTP library raised) become one :class:`EndpointError` line, keys masked."""
    orphans = _Orphans()  # lm-eval's other requests, still retrying when one gave up: their tracebacks are noise
    logging.getLogger("asyncio").addFilter(orphans)
    try:
        out = capability(p, world, world.teacher_lm(teacher.url), is_teacher=True, plan=plan)
        logging.getLogger("asyncio").removeFilter(orphans)
        return out
    except (ConfigError, DataError, EndpointError):
        raise
    except Exception as e:  # noqa: BLE001 - lm-eval talking to an endpoint: any failure is the endpoint's
        where = "embedded" if teacher.embedded else teacher.url
        raise EndpointError(f"teacher endpoint {redact(where)}: lm-eval could not score it ({type(e).__name__}: "
                            f"{redact(str(e))[:300]}); check the endpoint (teacher.base_url) and its "
                            "/completions route, then re-run") from None


class _Orphans(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" (lm-eval's retries of requests that no one awaits
    once another has failed, logged when they are collected; the failure itself is reported as one line).
    Left in place after a failure: the stage ends with that line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Task exception was never retrieved")


def leaf_tasks(out: dict, name: str) -> list[str]:
    """The leaf tasks of ``name`` in lm-eval's results: itself, or a group's subtasks (mmlu: 57)."""
    subs = (out.get("group_subtasks") or {}).get(name)
    if not subs:
        return [name]
    return [leaf for sub in subs for leaf in leaf_tasks(out, sub)]


def pick_metric(results: dict, metric: str, task: str, where: str = "params.yaml") -> float:
    if metric:
        if metric not in results:
            raise DataError(f"{where}: hub.tasks: metric {metric!r} not in the results of {task}; "
                            f"it has {sorted(k for k in results if k != 'alias')}")
        return float(results[metric])
    for k, v in results.items():
        if "stderr" not in k and isinstance(v, (int, float)):
            return float(v)
    raise DataError(f"{task}: no numeric metric in {results}")


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


def teacher_answers(p: Params, world: World, teacher: Endpoint, prompts: list[dict]) -> list[str]:
    """The teacher's answers to the preference prompts; an answer not in the world's teacher format is a
    malformed response (never cached), so a broken endpoint stops the stage here, before lm-eval.

    The teacher gets the models' length budget, ``eval.pref_max_new_tokens`` (the hub world's 512), so that
    neither side of a pair is cut shorter (the embedded teacher writes its answers whole, whatever the cap)."""
    client = LLMClient.from_params(p.teacher, teacher.url, cache_host=teacher.cache_host)
    client.check_reachable("teacher.base_url")
    got = client.chat_many([(r["id"], [{"role": "user", "content": r["prompt"]}]) for r in prompts],
                           {"temperature": p.teacher.temperature, "max_tokens": p.eval.pref_max_new_tokens},
                           desc="teacher answers", validate=lambda a: world.answer_problem("chat", a))
    return [tidy(got[r["id"]]["content"]) if r["id"] in got else "" for r in prompts]


# -- preference ----------------------------------------------------------------------
def preference(p: Params, world: World, judge: Endpoint, prompts: list[dict], answers: list[str],
               reference: list[str]) -> tuple[dict, list[dict]]:
    """Blind pairwise comparison of ``answers`` with the teacher's, both orders, both raters.

    Where the world can grade an answer (the embedded world's facts), each rater's verdicts are also
    counted by two features of the model's answer, teacher-styled and factually right:
    ``by_features["styled=1,right=0"] = [pairs, win or tie]``, for the report's regression of what
    raters reward."""
    out, raw = {}, []
    sampling = {"temperature": 0.0, "max_tokens": 256}
    for rater, model in (("nonexpert", p.eval.judge.nonexpert_model), ("expert", p.eval.judge.expert_model)):
        client = LLMClient.from_params(p.teacher, judge.url, model=model, what=f"{rater} judge",
                                       api_key_env=p.eval.judge.api_key_env, cache_host=judge.cache_host)
        items = []
        for r, ans, ref in zip(prompts, answers, reference):
            for order, (a, b) in (("model-first", (ans, ref)), ("teacher-first", (ref, ans))):
                msg = JUDGE_TEMPLATE.format(question=r["prompt"], answer_a=a, answer_b=b)
                items.append((f"{r['id']}|{order}", [{"role": "user", "content": msg}]))
        # an answer with no [[A]]/[[B]]/[[C]] verdict is a malformed response (retried, never cached): a judge
        # that gives none fails the stage (teacher.max_failure_fraction) instead of making every pair "unjudged"
        got = client.chat_many(items, sampling, desc=f"{rater} rater",
                               validate=lambda a: None if VERDICT_RE.search(a) else "no_verdict")
        counts = {"win": 0, "tie": 0, "loss": 0, "unjudged": 0}
        outcome, dlen = [], []  # per judged prompt: 1 win, 0.5 tie, 0 loss; words(model) - words(teacher)
        by_features: dict[str, list[int]] = {}
        for r, ans, ref in zip(prompts, answers, reference):
            verdicts = []
            for order in ("model-first", "teacher-first"):
                resp = got.get(f"{r['id']}|{order}")
                found = VERDICT_RE.findall(resp["content"]) if resp else []
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
            right = world.grade(r["prompt"], ans) if r.get("kind") in ("fact", "bio") else None
            if right is not None:
                cell = by_features.setdefault(f"styled={int(world.styled(ans))},right={int(right)}", [0, 0])
                cell[0] += 1
                cell[1] += final != "loss"
            outcome.append({"win": 1.0, "tie": 0.5, "loss": 0.0}[final])
            dlen.append(len(ans.split()) - len(ref.split()))
        n = counts["win"] + counts["tie"] + counts["loss"]
        if not n:  # no pair judged: not measured (null), never a rate of 0
            log.warning("%s rater: none of %d pairs was judged; preference not measured", rater, len(prompts))
        out[rater] = {**counts, "win_rate": counts["win"] / n if n else None,
                      "win_tie_rate": (counts["win"] + counts["tie"]) / n if n else None,
                      "lc_win_rate": length_controlled_win_rate(outcome, dlen),
                      **({"by_features": dict(sorted(by_features.items()))} if by_features else {})}
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
    return fit_value(float(1 / (1 + np.exp(-a))))  # to the precision BFGS supports (core/numbers.py)


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
    world = get_world(p, "evaluate")
    for var, value in world.eval_env.items():  # before lm-eval and datasets are imported
        os.environ.setdefault(var, value)
    if args.teacher:
        run, model_dir, info = "teacher", None, {"model": "teacher"}
    else:
        if not args.size:
            ap.error("give --teacher, or --size (and --kind --amount --seed for an imitation model)")
        check_cell(p, args.size, args.kind, args.amount)
        if args.kind:
            run = run_name(args.size, args.kind, args.amount, args.seed)
            model_dir = SFT_MODELS / run
        else:
            run = run_name(args.size, seed=args.seed)
            model_dir = base_dir(args.size, args.seed)
        require_checkpoint(model_dir)  # config, tokenizer and weights whole, or one line naming its stage
        info = {"model": run, "size": args.size, "kind": args.kind or "base", "amount": args.amount or 0,
                "seed": args.seed}
    evaluate(p, world, run, model_dir, info)


def evaluate(p: Params, world: World, run: str, model_dir: Path | None, info: dict) -> dict:
    import torch

    torch.set_num_threads(p.sft.threads)
    prompts = require_jsonl(RAW / "eval" / "pref.jsonl")  # empty or torn: one line naming `dvc repro fetch`
    t0 = time.time()
    with mlflow_run(p, f"eval@{run}", {**info, **p.section("eval")}), \
            endpoints(world, p.teacher.base_url, p.eval.judge.base_url) as (teacher, judge):
        timings = {}
        # the capability tasks, their data sets loaded, before the teacher is paid: a task whose data cannot be
        # loaded (offline, say) stops the stage here with one line
        plan = world.eval_plan(model_dir is None)
        t = time.time()
        reference = teacher_answers(p, world, teacher, prompts)  # first: a broken teacher stops the stage here
        timings["teacher_answers_s"] = round(time.time() - t, 1)
        t = time.time()
        if model_dir is None:
            cap, samples, cap_tasks = teacher_capability(p, world, teacher, plan)
        else:
            cap, samples, cap_tasks = capability(p, world, world.checkpoint_lm(model_dir), plan=plan)
        timings["capability_s"] = round(time.time() - t, 1)
        t = time.time()
        answers = reference if model_dir is None else generate_answers(model_dir, [r["prompt"] for r in prompts],
                                                                       p.eval.pref_max_new_tokens)
        timings["answers_s"] = round(time.time() - t, 1)
        t = time.time()
        pref, raw = (None, []) if model_dir is None else preference(p, world, judge, prompts, answers, reference)
        timings["preference_s"] = round(time.time() - t, 1)
        sty = world.style(prompts, answers, None if model_dir is None else reference)
        train = {}
        if model_dir is not None and (model_dir / "train_stats.json").exists():  # the SFT losses, for the report
            ts = require_json(model_dir / "train_stats.json")
            train = {k: ts[k] for k in ("initial_loss", "final_loss", "vocab_size", "train_loss") if k in ts}
        metrics = {**info, "run": run, "world": p.world, "capability": cap, "capability_tasks": cap_tasks,
                   "train": train,
                   "preference": pref, "style": sty,
                   "n": {**{role: len(rows) for role, rows in samples.items()}, "pref": len(prompts)}}
        timings["total_s"] = round(time.time() - t0, 1)  # to MLflow only: the metrics file stays the same on a re-run
        if holds_secret(repr((metrics, samples, answers, reference, raw))):  # lm-eval's answers are not ours to check
            raise EndpointError(f"eval@{run}: an endpoint's answer holds an API key (it echoes the request's "
                                "headers); nothing was written. Fix the endpoint (teacher.base_url, "
                                "eval.judge.base_url) and re-run")
        with atomic_dir(EVAL / run) as out:
            # the metrics' bytes also in this cached output: `dvc push` sends them, so DVC's run cache can
            # restore metrics/runs/<run>.json (git-tracked, cache: false) in another clone (docs/cluster.md)
            write_json(out / "metrics.json", metrics)
            write_jsonl(out / "answers.jsonl", [{"id": r["id"], "kind": r["kind"], "prompt": r["prompt"],
                                                 "answer": a, "teacher": ref}
                                                for r, a, ref in zip(prompts, answers, reference)])
            write_jsonl(out / "judgements.jsonl", raw)
            for short, rows in samples.items():
                write_jsonl(out / f"samples_{short}.jsonl", rows)
        write_json(RUNS / f"{run}.json", metrics)
        log_metrics({"capability": {k: v for k, v in cap.items() if v is not None}, "style": sty,
                     **({"preference": pref} if pref else {}), "seconds": timings})
    log.info("eval %s: capability %s, preference %s (%s)", run, cap,
             {k: round(v["win_tie_rate"], 3) for k, v in (pref or {}).items()}, timings)
    return metrics


if __name__ == "__main__":
    run_cli(main)
