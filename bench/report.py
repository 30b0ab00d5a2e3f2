"""Render bench/results.json as BENCHMARKS.md: every figure comes from the one run in ``res``."""

from __future__ import annotations

from .common import median

# README "Measured" (an earlier run, not this bench's): quoted for comparison only
DEFAULT_STUDY = "3 seeds, `make run` with 2 jobs: see README, Measured"


def _f(x: float, d: int = 1) -> str:
    return f"{x:,.{d}f}"


def _rng(xs) -> str:
    """min–max of the repetitions, with as many decimals as the median beside it (2 below 10, 0 from 1,000)."""
    xs = list(xs)
    if len(xs) < 2:
        return "-"
    top = max(abs(x) for x in xs)
    d = 2 if top < 10 else 0 if top >= 1000 else 1
    return f"{min(xs):,.{d}f}–{max(xs):,.{d}f}"


def _table(head: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _other(m: dict) -> str:
    """CPU that processes other than the bench's took, and the hypervisor's steal, over the run and per part."""
    o = m.get("other_cpu")
    if not o:
        return "not measured (no /proc/stat)"
    parts = "; ".join(f"{k} {v['other_share']:.0%}" for k, v in (m.get("other_cpu_by_part") or {}).items() if v)
    return (f"{o['other_cpu_s']:.0f} CPU-s by other processes = {o['other_share']:.1%} of the cores over "
            f"{o['wall_s'] / 60:.1f} min" + (f" (by part: {parts})" if parts else "")
            + f"; steal {o['steal_share']:.1%} (from /proc/stat minus the bench's own CPU)")


def contended(m: dict, reps: int) -> bool:
    """Whether to flag the figures: other work took >= 10% of the cores (or steal did), the machine was busy
    when the bench started, or fewer repetitions than 3."""
    o = m.get("other_cpu") or {}
    return (o.get("other_share", 0) >= 0.10 or o.get("steal_share", 0) >= 0.10
            or m["loadavg_at_start"][0] >= 0.5 * (m.get("usable_cpus") or 1) or reps < 3)


def machine(res: dict) -> str:
    m = res["machine"]
    v = m["versions"]
    threads = res.get("train", {}).get("peak", {}).get("threads", "-")
    return "\n".join([
        "## Machine", "",
        _table(["", ""], [
            ["CPU", f"{m['cpu']} ({', '.join(m['cpu_flags']) or 'no AVX flags read'})"],
            ["cores", f"{m['usable_cpus']} usable of {m['logical_cpus']} logical"],
            ["torch threads", f"{threads} (params `pretrain.threads`, `sft.threads`; torch default here: "
                              f"{m['torch_threads_default']})"],
            ["load average", f"{m['loadavg_at_start'][0]} at the start (1 min; before the bench's own work)"],
            ["other work during the run", _other(m)],
            ["OS, Python", f"{m['platform']}, Python {m['python']}"],
            ["versions", ", ".join(f"{k} {x}" for k, x in v.items())],
        ]),
    ])


def training(res: dict) -> str:
    tr = res["train"]
    pk = tr["peak"]
    pre, sft = tr["pretrain"], tr["sft"]
    s = ["## 1. Training throughput", "",
         f"**Method.** Each measurement builds a fresh model of the size's config (Llama, fp32, "
         f"{pk['threads']} torch threads), runs {tr['warmup_steps']} untimed warm-up optimizer steps, then a fixed "
         f"number of timed steps ({', '.join(f'{k}: {v}' for k, v in tr['timed_steps'].items())}); tokens/s = "
         "tokens in the timed steps / their wall time, from a timestamp at the end of every step (so data loading, "
         f"logging and callbacks between steps count). Figures are medians of {res['reps']} repetitions "
         "(range in brackets where shown). *Project* = the stage's own code path: `base.make_trainer` (HF `Trainer`, "
         "MLflow logging on, as in the stage) and `sft.sft_config` (TRL `SFTTrainer` with "
         "the stage's own config). *Raw* = a minimal loop on the same config, batches, batch size and sequence length: "
         "`model(**batch).loss.backward(); AdamW.step(); zero_grad()`, nothing else (no LR schedule, no gradient "
         "clipping, no logging; for SFT it replays the SFTTrainer's own collated batches).",
         "",
         f"**Machine limit.** fp32 `torch.matmul` of two n×n matrices at {pk['threads']} threads, 2n³ FLOP each, "
         f"median of {pk['reps']}: " + ", ".join(f"n={n}: {_f(v / 1e9)} GFLOP/s" for n, v in pk["by_n"].items())
         + f". The peak used below is **{_f(pk['flops'] / 1e9)} GFLOP/s** (n={pk['n']})"
         + (f"; the whole machine ({pk['machine']['threads']} threads, n={pk['machine']['n']}) reaches "
            f"{_f(pk['machine']['flops'] / 1e9)} GFLOP/s, the ceiling of `make run`'s stages side by side"
            if "machine" in pk else "") + ".",
         "",
         "**FLOPs.** Achieved FLOP/s = tokens/s × (6·N + 12·layers·seq·hidden) per token, with N = non-embedding "
         "parameters + the output projection (vocab × hidden: tied to the input embedding, but its matmul is real "
         "work); the embedding lookup is not counted. For SFT, tokens are the padded tokens the model computes on, "
         "and seq is the mean padded length.", "",
         "### Pretraining (stage `base`: batch "
         f"{next(iter(pre.values()))['batch']} × {next(iter(pre.values()))['seq_len']} tokens, packed, no padding)", ""]
    rows = []
    for size, d in pre.items():
        fl = d["flops"]
        rows.append([size, _f(fl["N"] / 1e6, 2) + "M", _f(fl["per_token"] / 1e6, 1) + "M",
                     f"{_f(d['trainer_tps'], 0)} ({_rng(r['tokens_per_s'] for r in d['runs']['trainer'])})",
                     f"{_f(d['raw_tps'], 0)} ({_rng(r['tokens_per_s'] for r in d['runs']['raw'])})",
                     f"**{d['ratio']:.2f}**", f"**{d['pct_peak']:.0%}**", f"{d['raw_pct_peak']:.0%}"])
    s.append(_table(["size", "N", "FLOP/token", "project tok/s", "raw tok/s", "project/raw", "project % of peak",
                     "raw % of peak"], rows))
    sd = tr["sft_data"]
    s += ["", f"### SFT (stage `sft`: batch {next(iter(sft.values()))['batch']}, max length "
              f"{next(iter(sft.values()))['max_len']}, data: {sd['kind']} {sd['amount']} tokens)", ""]
    rows = []
    for size, d in sft.items():
        rows.append([size, _f(d["sfttrainer_tps"], 0), _f(d["raw_tps"], 0), f"**{d['ratio']:.2f}**",
                     f"{d['pct_peak']:.0%}", f"{d['sfttrainer_pad_share']:.0%}", _f(d["sfttrainer_real_tps"], 0),
                     _f(d["packed_real_tps"], 0), f"{d['packing_gain_real']:.2f}×", _f(d["init_s"], 1)])
    s.append(_table(["size", "SFTTrainer tok/s (padded)", "raw tok/s", "SFTTrainer/raw", "% of peak",
                     "pad share", "real tok/s", "real tok/s, packing=true", "packing gain", "SFTTrainer init s"],
                    rows))
    s += ["", "**Padding waste** over one epoch of the SFTTrainer's batches (its own collator, pads to the longest "
              "row of each batch):", ""]
    s.append(_table(["data", "rows", "tokens in batches", "pad share", "mean padded length",
                     "loss tokens / real tokens", "pad share, sampling=group_by_length"],
                    [[f"{k} {sd['amount']}", d["rows"], d["tokens"], f"{d['pad_share']:.0%}",
                      _f(d["mean_padded_len"]), f"{d['loss_token_share']:.0%}",
                      f"{d['grouped_pad_share']:.0%}" if "grouped_pad_share" in d else "-"]
                     for k, d in tr["padding"].items()]))
    sm = tr.get("sampling")
    if sm:
        r, g = sm["random"], sm["group_by_length"]
        s += ["", f"*Sampling* (`sft.sampling`): one epoch of the stage's SFTTrainer on {sm['kind']} {sm['amount']} "
                  f"({sm['steps']} steps, size {sm['size']}), median of {len(r['runs'])}:", ""]
        s.append(_table(["sft.sampling", "epoch s", "real tok/s", "pad share", "mean train loss"],
                        [[name, f"{d['seconds']:.2f} ({_rng(x['seconds'] for x in d['runs'])})",
                          _f(d["real_tokens_per_s"], 0), f"{d['pad_share']:.0%}", f"{d['train_loss']:.3f}"]
                         for name, d in (("random (default)", r), ("group_by_length", g))]))
        s += ["", f"`group_by_length` runs the epoch **{sm['speedup']:.2f}×** as fast. It is not the default: its "
                  "batches hold rows of one length, so the same rows make different batches and a different "
                  "optimisation (the mean training loss above differs; a batch of short rows counts as much as one "
                  "of long rows), and the study's numbers would move with it."]
    s += ["", "*Packing* (`sft.packing: true`, TRL's default `bfd` strategy) removes the padding, but TRL then "
              "feeds each batch as one padding-free row with `position_ids`; on CPU with SDPA attention that row is "
              "attended as a whole (block-diagonal mask over the full packed length), so the attention cost grows "
              "with the square of the packed row. The *packing gain* column is real tokens/s with packing over "
              "real tokens/s without (packing: " + str(len(next(iter(tr["sft"].values()))["runs"]["packed"]))
              + " repetition(s) per size, half the timed steps but at least 3: a packed step is ~10× longer)."]
    return "\n".join(s)


def client(res: dict) -> str:
    c = res["client"]
    rows = [[k, _f(v["rps"], 0), _rng(v["runs"])] for k, v in c["concurrency"].items()]
    rows.append(["cache hits (2nd pass)", _f(c["cache_hit_rps"], 0), _rng(c["cache_hit"])])
    return "\n".join([
        "## 2. Teacher client", "",
        f"**Method.** `LLMClient.chat_many` (the `imitate-dataset` and eval code path: asyncio + `AsyncOpenAI`, "
        f"retries, budget, fsynced disk cache) sends {c['n_requests']} distinct user turns of the imitation data "
        f"(sampling {c['sampling']}) to the embedded teacher server (`teacher.embedded_endpoint`, a "
        "`ThreadingHTTPServer` on 127.0.0.1 in the same process), with an empty temporary cache each time. "
        "requests/s = requests / wall time of the call, median of "
        f"{res['reps']}. The cache-hit pass repeats the same prompts after the highest concurrency: no request, "
        "every answer read from disk and checksummed.", "",
        _table(["concurrency", "requests/s", "range"], rows), "",
        "Client and server share one Python process (as in the stages), so past a few requests in flight the GIL, "
        "not the network, sets the ceiling.",
    ])


def evaluation(res: dict) -> str:
    e = res["eval"]
    med = e["median"]
    b = e["base_stage"]
    rows = [[k, _f(v, 2), _rng(e["parts"][k])] for k, v in med.items()]
    work = sum(v for k, v in med.items() if "fixed" not in k and not k.startswith("model load"))
    load = med.get("model load (HFLM)", 0.0)
    st = res.get("pipeline", {}).get("startup", {}).get("eval")
    s = ["## 3. Eval", "",
         f"**Method.** One model: base {b['size']} pretrained by the `base` stage for {b['steps']} steps (so that it "
         "stops its answers as a trained model does). In one process, each part of `imitation_gap.stages.evaluate` is "
         "timed with the project's own functions: `hf_lm` (model load), `capability` restricted to one task, "
         "`generate_answers` (which loads the model again), the teacher's answers through the client (empty "
         "cache), `preference` (both raters, both orders, through the embedded judge endpoint), `style`. The "
         "*fixed* part of an lm-eval task (task build, data loading, few-shot contexts: everything but the "
         "model's work on the documents) is the same call with `limit=1`. Medians of "
         f"{res['reps']}, seconds per model.", "",
         _table(["part", "seconds", "range"], rows), ""]
    line = (f"Per model: **{_f(work, 1)} s of work** (lm-eval tasks, answers, teacher, raters, style; the "
            f"lm-eval fixed parts are inside the task times), plus **{_f(load, 1)} s** model load")
    if st:
        line += f" and **{_f(st['wall'], 1)} s** of imports when the stage starts (section 4)"
    s.append(line + f"; the lm-eval fixed parts add up to {_f(e['lm_eval_fixed_s'], 1)} s.")
    s += ["", f"**lm-eval batch size** (`eval.batch_size`): the three tasks with {e['batch_limit']} documents each, "
              "model loaded outside the timing, median of " + f"{res['reps']}:", ""]
    base = e["batch"].get("32", next(iter(e["batch"].values())))["s"]
    s.append(_table(["batch size", "seconds", "range", "vs batch 32"],
                    [[k, _f(v["s"], 2), _rng(v["runs"]), f"{base / v['s']:.2f}× speed"] for k, v in sorted(e["batch"].items(), key=lambda kv: int(kv[0]))]))
    return "\n".join(s)


def _stage_kind(name: str) -> str:
    return name.split("@")[0]


def pipeline(res: dict) -> str:
    pl = res["pipeline"]
    st = pl["startup"]
    s = ["## 4. Pipeline", "",
         "**Start-up per stage process.** What each stage imports before its first line of work, in a fresh "
         f"`python -c` (this checkout's code), median of {res['reps']}: wall and CPU (user + sys) seconds.", "",
         _table(["imports of", "wall s", "CPU s"], [[k, _f(v["wall"], 2), _f(v["cpu"], 2)] for k, v in st.items()])]
    if "repro" not in pl:
        return "\n".join(s)
    rp = pl["repro"]
    g = pl["params"]["grid"]
    cells = len(g["sizes"]) * len(g["kinds"]) * len(g["amounts"]) * len(g["seeds"])
    s += ["", f"**`dvc repro` stage by stage** on a scaled-down grid in a temporary git + DVC repo ({cells} cells: "
              f"sizes {g['sizes']}, kinds {g['kinds']}, amounts {g['amounts']}, seeds {g['seeds']}; tiny models and "
              "world, see `TINY` in `bench/pipeline.py`), so each stage's time is nearly all fixed cost. A stage's "
              "time runs from DVC's `Running stage` line to the next one (so it includes DVC's hashing and lock "
              "file for it).", ""]
    rows = [[k, _f(v, 1)] for k, v in rp["stages"].items()]
    rows.append(["DVC before the first stage", _f(rp["before_first_stage"], 1)])
    rows.append(["**total**", f"**{_f(rp['total'], 1)}**"])
    s.append(_table(["stage", "wall s"], rows))
    lk = pl.get("lock")
    if lk:
        s += ["", f"**DVC's lock file at the default grid.** For every stage it runs, `dvc repro` reads `dvc.lock` "
                  f"(safe YAML) and then rewrites it whole through ruamel's round-trip parser and emitter (pure "
                  f"Python), holding the repository lock. On this checkout's `dvc.lock` (the 3-seed default study: "
                  f"{lk['stages']} stages, {lk['lines']:,} lines), in-process, median of {len(lk['runs'])}: read "
                  f"{_f(lk['safe_parse_s'], 2)} s, rewrite **{_f(lk['rewrite_s'], 2)} s**. Stages cannot overlap "
                  f"there, so {lk['stages']} stages × that ≈ **{_f(lk['stages'] * lk['rewrite_s'] / 60, 1)} min** of "
                  "the study is serial whatever `--jobs` is, and the cost per stage grows with the grid (the lock "
                  "has one entry per stage). `make run` calls DVC through `imitation_gap.runner.dvcrun`, which parses a "
                  "comment-free `dvc.lock` with the safe (libyaml) loader, and has DVC's own dumper write only the "
                  "entry that changed, splicing the other entries' text as read (the same bytes): rewrite "
                  f"**{_f(lk['fast_rewrite_s'], 2)} s**, ≈ "
                  f"{_f(lk['stages'] * lk['fast_rewrite_s'] / 60, 1)} min serial for the study."]
    s += ["", f"DVC alone: `dvc status` {_f(pl['status']['wall'], 2)} s and `dvc repro` with nothing to do "
              f"{_f(pl['noop_repro']['wall'], 2)} s (wall; {_f(pl['noop_repro']['cpu'], 2)} s CPU) on this "
              f"{len(rp['stages'])}-stage pipeline.", "",
          parallel_text(res), "",
          "**Re-runs** (`dvc exp run -S ...`, each from the committed baseline; stage commands warm, through a warm "
          "server named in `IMITATION_GAP_WARM` as the README shows):", ""]
    rows = []
    for label, d in pl["exp"].items():
        kinds: dict[str, int] = {}
        for k in d["stages"]:
            kinds[_stage_kind(k)] = kinds.get(_stage_kind(k), 0) + 1
        rows.append([label, " ".join(f"`{x}`" for x in d["set"]), len(d["stages"]),
                     ", ".join(f"{k} ×{n}" for k, n in kinds.items()), _f(d["total"], 1)])
    s.append(_table(["change", "-S", "stages run", "which", "wall s"], rows))
    s += ["", extrapolation(res)]
    return "\n".join(s)


def speedup(res: dict) -> float | None:
    """Serial `dvc repro` wall / the runner's wall, on the same tiny grid."""
    pl = res.get("pipeline", {})
    if "parallel" not in pl or "repro" not in pl:
        return None
    return pl["repro"]["total"] / pl["parallel"]["total"]


def parallel_text(res: dict) -> str:
    pl = res["pipeline"]
    if "parallel" not in pl:
        return ""
    par, rp = pl["parallel"], pl["repro"]
    cpu = sum(v["cpu_s"] for v in par["stages"].values())
    busy = cpu / (par["jobs"] * par["total"])
    warm = ("stage commands forked from the warm server (`imitation_gap.runner.warm`: torch, transformers, TRL, lm-eval "
            "and MLflow imported once)" if par.get("warm") else "stage commands cold")
    return (f"**`make run`** (`python -m imitation_gap.runner.parallel --jobs {par['jobs']}`: one "
            "`dvc repro --single-item` per stage, a stage starting when its upstream stages are done; "
            f"{warm}), the same grid with `--force`: **{_f(par['total'], 1)} s** against {_f(rp['total'], 1)} s "
            f"for `dvc repro`, **{speedup(res):.2f}× faster**. Its stages used {_f(cpu, 0)} CPU-seconds in all "
            f"(DVC, the stage command and its warm child), so the {par['jobs']} cores were busy {busy:.0%} of the "
            "wall time; the rest is the pipeline's shape (fetch first, report last, few independent stages on a "
            "grid this small).")


def fixed_costs(res: dict, warm: bool = False) -> dict[str, float]:
    """Median fixed cost of a stage of each kind on the tiny grid: wall s of the serial `dvc repro` (cold), or,
    with ``warm``, CPU s of the runner's stages (dvc + the command + its warm child)."""
    pl = res["pipeline"]
    over: dict[str, list[float]] = {}
    if warm:
        for k, v in pl["parallel"]["stages"].items():
            over.setdefault(_stage_kind(k), []).append(v["cpu_s"])
    else:
        for k, v in pl["repro"]["stages"].items():
            over.setdefault(_stage_kind(k), []).append(v)
    return {k: median(v) for k, v in over.items()}


def _grid(p=None):
    """The default study's grid and recipe, from params.yaml (what `make run` runs)."""
    if p is None:
        from imitation_gap.core.config import load_params

        p = load_params()
    return p


def model_default(res: dict, seeds: int | None = None, warm: bool = False, p=None) -> dict:
    """The extrapolation model: per-stage fixed cost (tiny pipeline) + work at the default sizes (sections 1, 3),
    for params.yaml's grid with ``seeds`` chains (default: its own). A chain pretrains and evaluates every size."""
    p = _grid(p)
    sizes, kinds, amounts = p.grid.sizes, len(p.grid.kinds), p.grid.amounts
    seeds = seeds or len(p.grid.seeds)
    pl, tr, ev = res["pipeline"], res["train"], res["eval"]
    o = fixed_costs(res, warm)
    cells = len(sizes) * kinds * len(amounts) * seeds
    bases = len(sizes) * seeds
    n_stages = 1 + bases + 1 + cells * 2 + 1 + bases + 1  # fetch, base, imitate-dataset, sft+eval, teacher, eval-base, report
    lk = pl.get("lock")
    # per stage: DVC's reads and rewrite of dvc.lock, scaled from the measured lock to this grid's stage count;
    # make run (warm) calls DVC through imitation_gap.runner.dvcrun (the safe parse before DVC's dump)
    rewrite = (lk.get("fast_rewrite_s", lk["rewrite_s"]) if warm else lk["rewrite_s"]) if lk else 0.0
    lock = (rewrite + 2 * lk["safe_parse_s"]) * n_stages / lk["stages"] if lk else 0.0
    o = {k: v + lock for k, v in o.items()}
    dvc0 = pl["repro"]["before_first_stage"]
    base_tokens = p.pretrain.steps * p.pretrain.batch_size * p.pretrain.seq_len
    base_work = {s: base_tokens / tr["pretrain"][s]["trainer_tps"] for s in sizes}
    sft_work = {(s, a): a * p.sft.epochs / tr["sft"][s]["sfttrainer_real_tps"] for s in sizes for a in amounts}
    eval_work = ev["total_s"] + ev["median"].get("model load (HFLM)", 0.0)
    t = {
        "dvc": dvc0,
        "fetch": o.get("fetch", 0) + res["setup"]["fetch_stage_s"],
        "imitate-dataset": o.get("imitate-dataset", 0) + res["setup"]["imitate_stage_s"],
        "base": seeds * sum(o.get("base", 0) + base_work[s] for s in sizes),
        "sft": seeds * kinds * sum(o.get("sft", 0) + sft_work[(s, a)] for s in sizes for a in amounts),
        "eval": (1 + bases + cells) * (o.get("eval-sft", 0) + eval_work),
        "report": o.get("report", 0),
    }
    return {"parts": t, "total": sum(t.values()), "cells": cells, "stages": n_stages, "overhead": o,
            "base_work": base_work, "eval_work": eval_work, "lock_per_stage": lock}


def make_run_estimate(res: dict, seeds: int | None = None) -> float | None:
    """`make run` on the default grid, s: the warm model's CPU spread over the runner's jobs (every core busy),
    and no less than the lock rewrites end to end."""
    pl = res.get("pipeline", {})
    if "parallel" not in pl:
        return None
    m = model_default(res, seeds, warm=True)
    lk = pl.get("lock")
    rewrite = lk.get("fast_rewrite_s", lk["rewrite_s"]) if lk else 0.0  # make run's DVC: imitation_gap.runner.dvcrun
    serial = m["stages"] * rewrite * m["stages"] / lk["stages"] if lk else 0.0  # rewrites cannot overlap
    return max(m["total"] / pl["parallel"]["jobs"], serial)


def extrapolation(res: dict) -> str:
    p = _grid()
    n = len(p.grid.seeds)
    m1, m3 = model_default(res, 1, p=p), model_default(res, n, p=p)
    o = m1["overhead"]
    g = p.grid
    s = [f"**Extrapolation to the default grid** (params.yaml: {len(g.sizes)} sizes × {len(g.kinds)} kinds × "
         f"{len(g.amounts)} amounts × chains; a chain pretrains every size). Model: total = DVC's "
         "start + Σ over stages of (fixed cost of a stage of that kind, from the tiny pipeline above) + (its work "
         f"at the default sizes): base = {p.pretrain.steps}·{p.pretrain.batch_size}·{p.pretrain.seq_len} tokens / "
         "the project's pretraining tokens/s (section 1); sft = "
         f"amount × {p.sft.epochs:g} epochs / the SFTTrainer's real tokens/s for that size (section 1; its data-set "
         "preparation is in the fixed cost); eval = the per-model work and model load of section 3 (measured on M; "
         "taken as the same for every size: small models' eval is dominated by per-token overhead, not FLOPs); fetch "
         "and imitate-dataset = those stages run at default params in this bench's setup. Fixed cost per stage "
         "(median, s, plus DVC's reads and rewrite of the default grid's `dvc.lock`, above): " + ", ".join(
             f"{k} {_f(v, 1)}" for k, v in o.items()) + ".", ""]
    rows = []
    for k in m1["parts"]:
        rows.append([k, _f(m1["parts"][k] / 60, 1), _f(m3["parts"][k] / 60, 1)])
    rows.append(["**total, `dvc repro` (min)**", f"**{_f(m1['total'] / 60, 1)}**", f"**{_f(m3['total'] / 60, 1)}**"])
    r1, r3 = make_run_estimate(res, 1), make_run_estimate(res, n)
    if r1:
        jobs = res["pipeline"]["parallel"]["jobs"]
        rows.append([f"**total, `make run` ({jobs} jobs, warm; all cores busy) (min)**",
                     f"**{_f(r1 / 60, 1)}**", f"**{_f(r3 / 60, 1)}**"])
    s.append(_table(["part", f"1 chain ({m1['cells']} cells), min", f"{n} chains ({m3['cells']} cells), min"], rows))
    if r1:
        ow = fixed_costs(res, warm=True)
        s += ["", "The `make run` row is the same model with each stage's fixed cost taken from the runner's run "
                  "above (CPU seconds per stage, median by kind: " + ", ".join(f"{k} {_f(v, 1)}" for k, v in ow.items())
              + f", plus the lock file's cost), divided by its {jobs} jobs, and at least the lock rewrites end to "
                "end. It assumes both cores busy throughout (the start and the end of the pipeline have fewer "
                "runnable stages), and it scales with this run's machine speed (section 1's peak); compare it with "
                "the measured run in the README."]
    per_chain = (m3["total"] - m1["total"]) / max(1, n - 1)
    s += ["", f"Growth (serial `dvc repro` model): **{_f(per_chain / 60, 1)} min per added chain** (it pretrains and "
              f"evaluates every size and fine-tunes and evaluates its {m1['cells']} cells), a little more with each "
              "chain, since every stage rewrites a `dvc.lock` that grows with the grid; model size enters through the "
              "work terms: pretraining "
              "takes " + ", ".join(f"{k} {_f(v, 0)} s" for k, v in m1["base_work"].items())
          + f" of work per chain. For comparison, the README's measured default run ({DEFAULT_STUDY})."]
    return "\n".join(s)


def targets(res: dict) -> str:
    rows = []
    tr = res.get("train")
    if tr:
        by_flops = sorted(tr["pretrain"], key=lambda k: tr["pretrain"][k]["flops"]["per_token"])  # smallest first (JSON sorts keys)
        sizes = by_flops[-2:]
        for size in sizes:
            r1, r2 = tr["pretrain"][size]["ratio"], tr["sft"][size]["ratio"]
            rows.append([f"Trainer ≥ 0.8× raw loop, {size}", f"pretrain {r1:.2f}×, SFT {r2:.2f}×",
                         "met" if min(r1, r2) >= 0.8 else ("pretrain met, SFT not" if r1 >= 0.8 else "not met")])
        big = by_flops[-1]
        pct = tr["pretrain"][big]["pct_peak"]
        rows.append([f"pretraining ≥ 40% of matmul peak, {big}", f"{pct:.0%}", "met" if pct >= 0.4 else "not met"])
    if res.get("pipeline", {}).get("repro") and tr and res.get("eval"):
        m3 = model_default(res)
        n = len(_grid().grid.seeds)
        rows.append([f"default study, {n} chains, ≤ 30 min: serial `dvc repro` (extrapolated, section 4)",
                     f"{_f(m3['total'] / 60, 1)} min", "met" if m3["total"] <= 1800 else "not met"])
        r3 = make_run_estimate(res)
        if r3:
            for limit, who in ((1800, "issue 8"), (1200, "issue 15")):
                rows.append([f"default study, {n} chains, ≤ {limit // 60} min ({who}): `make run`, 2 jobs, warm "
                             "(extrapolated, section 4; the README's measured run is the reference)",
                             f"{_f(r3 / 60, 1)} min", "met" if r3 <= limit else "not met"])
    if not rows:
        return ""
    return "\n".join(["## 5. Targets (issues 8 and 15)", "", _table(["target", "this run", "verdict"], rows)])


def render(res: dict) -> str:
    head = ["# Benchmarks", "",
            f"Written by `make bench` (`python -m bench`) on {res['started']} in "
            f"**{_f(res['total_s'] / 60, 1)} min**; every figure below comes from that one run (raw numbers: "
            "`bench/results.json`). Re-run it to refresh this file: figures move with the machine and its load.",
            ""]
    by_part = res["machine"].get("other_cpu_by_part") or {}
    if by_part:
        head[-2] += (" Time by part: " + ", ".join(f"{k} {v['wall_s'] / 60:.1f} min" for k, v in by_part.items() if v)
                     + " (the rest: the scratch world the first three share).")
    m = res["machine"]
    if contended(m, res["reps"]):
        head += [f"> **Taken under contention or with fewer repetitions than the design's 3** (load average "
                 f"{m['loadavg_at_start'][0]} at the start; other work: {_other(m)}; on "
                 f"{m.get('usable_cpus')} cores; {res['reps']} repetition(s)): the peak and the throughputs were "
                 "measured at different moments of a varying load, so ratios and % of peak are unreliable. Re-run "
                 "`make bench` on a quiet machine for the figures to quote.", ""]
    if res.get("quick"):
        head += ["> **--quick smoke run**: tiny sizes and 1 repetition. These are not benchmark figures.", ""]
    parts = [machine(res)]
    for key, fn in (("train", training), ("client", client), ("eval", evaluation), ("pipeline", pipeline)):
        if key in res:
            parts.append(fn(res))
    t = targets(res)
    if t:
        parts.append(t)
    parts.append(closing(res))
    return "\n".join(head) + "\n" + "\n\n".join(parts) + "\n"


def closing(res: dict) -> str:
    """The closing note: what the profile showed, what changed, where the targets land in this run."""
    s = ["## 6. Closing note: profile, changes, before and after", "",
         "The profiles (cProfile of the `base` stage process and of `SFTTrainer.train`, section 3 for eval, "
         "section 4 for the pipeline) are in `bench/README.md`. They showed the training loops already at the "
         "raw loop's speed, and the pipeline's time going to what every stage process pays before and after its "
         "work (imports of torch, transformers, TRL, lm-eval and MLflow; MLflow's store; DVC), one stage at a "
         "time on a 2-core machine: a single-threaded cost that leaves the second core idle.", "",
         "What changed: (1) `make run` runs two independent stages at a time (`imitation_gap.runner.parallel`: one "
         "`dvc --wait-for-lock repro --single-item` per stage, DVC's own locks; same `dvc.lock`, run cache and "
         "MLflow runs as `dvc repro`); (2) one torch thread per stage (`pretrain.threads`, `sft.threads`), so "
         "the two stages do not oversubscribe the cores; section 1's figures are at that one thread, against a "
         "one-thread matmul peak; (3) the default grid has 3 seeds, the report's CIs run over them; (4) stage "
         "commands start warm: the runner starts `imitation_gap.runner.warm`, which imports torch, transformers, TRL, "
         "lm-eval and MLflow once and forks a child per stage command (same outputs byte for byte; "
         "`--no-warm` / `REPRO_WARM=0` turns it off); (5) DVC reads `dvc.lock` with libyaml (`ruamel.yaml.clib`; "
         "ruamel.yaml 0.19 had dropped it, and its pure-Python parser took ~3 s of every `dvc` call on the "
         "154-stage lock); (6) the lm-eval tasks' prompts are Python functions, not Jinja strings that lm-eval "
         "compiled ~4,700 times per model; (7) `make run` calls DVC through `imitation_gap.runner.dvcrun`, which parses "
         "a comment-free `dvc.lock` with libyaml where DVC used ruamel's pure-Python round-trip loader for "
         "every stage's rewrite (section 4; the same bytes); (8) the eval stage makes one lm-eval call for its "
         "three tasks, not three (each call ran torch's environment report, `pip list` in a subprocess); "
         "(9) no timings in DVC outputs (fetch's `stats.json`, `train_stats.json`, the eval metrics), so a "
         "re-run that computes the same thing leaves every stage downstream up to date; (10) `dvcrun` dumps only "
         "the `dvc.lock` entry that changed and keeps the others' text (the same bytes as DVC's whole dump); "
         "(11) the Trainers' MLflow callback logs synchronously (the same rows), so a base or sft stage no longer "
         "waits up to 1 s for MLflow's async logging thread to poll its queue; (12) the warm server freezes its "
         "imported objects (`gc.freeze`), so a stage's full garbage collection (the Trainer runs one at its end) "
         "skips the libraries' ~760k objects (0.36 s each).", ""]
    rows = []
    pl = res.get("pipeline", {})
    if "parallel" in pl and "repro" in pl:
        rows.append(["tiny grid, whole pipeline: `dvc repro` → `make run` (2 jobs)",
                     f"{_f(pl['repro']['total'], 1)} s → {_f(pl['parallel']['total'], 1)} s",
                     f"{speedup(res):.2f}×"])
    tr = res.get("train")
    if tr:
        for size in tr["pretrain"]:
            rows.append([f"pretrain {size}: project / raw loop", f"{tr['pretrain'][size]['ratio']:.2f}×",
                         f"{tr['pretrain'][size]['pct_peak']:.0%} of peak"])
        for size in tr["sft"]:
            rows.append([f"SFT {size}: SFTTrainer / raw loop", f"{tr['sft'][size]['ratio']:.2f}×",
                         f"{tr['sft'][size]['pct_peak']:.0%} of peak"])
    if "parallel" in pl and "repro" in pl:
        cold, warm = fixed_costs(res), fixed_costs(res, warm=True)
        for k in ("sft", "eval-sft"):
            if k in cold and k in warm:
                rows.append([f"tiny grid, one `{k}` stage: serial cold (wall) → `make run` warm (CPU)",
                             f"{_f(cold[k], 1)} s → {_f(warm[k], 1)} s", f"{cold[k] / warm[k]:.1f}×"])
    st = pl.get("startup", {})
    for k in ("base", "sft", "eval"):
        if k in st:
            rows.append([f"start-up of a `{k}` stage process (imports)", f"{st[k]['wall']:.1f} s wall",
                         f"{st[k]['cpu']:.1f} s CPU"])
    if rows:
        s.append(_table(["figure (this run)", "value", ""], rows))
    s += ["", "What would move the numbers further (measured, not done; see `bench/README.md`): TRL's fused "
              "log-prob head in SFT, one model load per eval, and DVC reading `dvc.lock` twice per stage (once "
              "to load the stages, once to update it)."]
    return "\n".join(s)
