"""The report's text: ``REPORT.md`` (tables, findings, figures, side-by-side examples) and its headline numbers."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.config import Params, run_name
from ..core.io import read_jsonl
from ..worlds import ReportWorld as World
from .stats import STYLE, TASKS

TASK_NAMES = {"qa": "QA (NQ analogue)", "mc": "multiple choice (MMLU analogue)", "skill": "skill (HumanEval analogue)"}


def fmt(s: dict | None, digits: int = 2) -> str:
    if not s:
        return "n/a"
    m, lo, hi = s["mean"], s["lo"], s["hi"]
    if lo != lo:  # nan
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def headline(p: Params, agg: dict) -> dict:
    """A few numbers per model for `dvc exp show`: QA, MC, skill, non-expert and expert win+tie."""
    keys = {"qa": "capability.qa", "mc": "capability.mc", "skill": "capability.skill",
            "pref_nonexpert": "preference.nonexpert", "pref_expert": "preference.expert"}
    models = {"teacher": agg["teacher"]} | {f"{s}-base": agg["base"][s] for s in p.grid.sizes} | \
        {f"{s}-{k}-{a}": v for (s, k, a), v in agg["cells"].items()}
    return {m: {short: round(v[k]["mean"], 4) for short, k in keys.items() if k in v} for m, v in models.items()}


def task_title(agg: dict, role: str) -> str:
    """'QA (NQ analogue)' in the embedded world; the lm-eval task in the hub world ('qa: nq_open')."""
    name = agg.get("tasks", {}).get(role)
    return TASK_NAMES[role] if name in (None, f"ig_{role}") else f"{role}: {name}"


def label(cell) -> str:
    s, k, a = cell
    return f"{s}+{k}@{a}"


def examples(p: Params, world: World, n: int = 4) -> list[dict]:
    """Side-by-side answers to a few held-out prompts: teacher, base, imitation models.

    Embedded: factual prompts, marked right or wrong by the world's facts; hub: the first
    preference prompts, unmarked (no one holds the facts of open prompts)."""
    big, top = p.grid.sizes[-1], max(p.grid.amounts)
    systems = {"teacher": "teacher", f"{big} base": run_name(big, seed=p.grid.seeds[0])}
    for k in p.grid.kinds:
        systems[f"{big}+{k}@{top}"] = run_name(big, k, top, p.grid.seeds[0])
    answers = {name: {r["id"]: r for r in read_jsonl(Path("eval") / run / "answers.jsonl")}
               for name, run in systems.items() if (Path("eval") / run / "answers.jsonl").exists()}
    teacher = answers.get("teacher", {})
    ids = [i for i, r in teacher.items() if r["kind"] == world.example_kind][:n]
    out = []
    for i in ids:
        q = teacher[i]["prompt"]
        row = {"prompt": q, "answers": {}}
        for name, ans in answers.items():
            a = ans[i]["answer"] if i in ans else ""
            row["answers"][name] = {"text": a, "correct": world.grade(q, a)}
        out.append(row)
    return out


def _est(e: dict | None, digits: int = 2) -> str:
    if not e or e.get("mean") is None:
        return "n/a"
    if e.get("lo") is None:
        return f"{e['mean']:.{digits}f}"
    return f"{e['mean']:.{digits}f} [{e['lo']:.{digits}f}, {e['hi']:.{digits}f}]"


MARK = {"held": "held", "did not hold": "DID NOT HOLD", "inconclusive": "inconclusive", "not measured": "not measured"}


def _conditions(conds: list[dict]) -> list[str]:
    return [f"  - {c['condition']}: {_est(c['estimate'], 3)} -> **{MARK.get(c['status'], c['status'])}**"
            + (f" ({c['why']})" if c.get("why") else "") for c in conds]


def paper_beside(p: Params, agg: dict) -> list[str]:
    """The paper's headline numbers next to ours (largest size, largest amount)."""
    T, B, C = agg["teacher"], agg["base"], agg["cells"]
    big, top = p.grid.sizes[-1], max(p.grid.amounts)
    broad, local = C.get((big, "broad", top), {}), C.get((big, "local", top), {})

    def pct(d, k):
        v = d.get(k)
        return "n/a" if not v else f"{100 * v['mean']:.0f}"

    return ["| what | the paper | ours |", "|---|---|---|",
            f"| QA (NQ): base / +broad / +local; teacher | 17 / 10 / 22; ChatGPT 31 (LLaMA-7B, Table 1) | "
            f"{pct(B[big], 'capability.qa')} / {pct(broad, 'capability.qa')} / {pct(local, 'capability.qa')}; "
            f"teacher {pct(T, 'capability.qa')} ({big}, {top} tokens) |",
            f"| rated as good as or better than the teacher (crowd workers) | ~70% | "
            f"{pct(broad, 'preference.nonexpert')}% non-expert, {pct(broad, 'preference.expert')}% expert "
            f"({big}+broad@{top}) |",
            f"| authoritative tone: base -> imitation | 57% -> 99% | {pct(B[big], 'style.authoritative_rate')}% -> "
            f"{pct(broad, 'style.authoritative_rate')}% |",
            f"| list use: base -> imitation (teacher) | 13% -> 81% (83%) | {pct(B[big], 'style.list_rate')}% -> "
            f"{pct(broad, 'style.list_rate')}% ({pct(T, 'style.list_rate')}%) |"]


CELLS = (("styled=0,right=0", "wrong, plain"), ("styled=0,right=1", "right, plain"),
         ("styled=1,right=0", "wrong, teacher-styled"), ("styled=1,right=1", "right, teacher-styled"))


RATER_NAMES = {"nonexpert": "non-expert", "expert": "expert"}


def _odds(x: float) -> str:
    """An odds ratio to 3 significant digits, without exponents: 0.123, 7.36, 2,527."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def rewards_table(paid: dict) -> list[str]:
    """The regressions, then the rates they summarise, then what they say in words."""
    L = ["| rater | judged pairs | style buys (points of win-or-tie) | facts buy (points) | style: odds ratio | "
         "facts: odds ratio |", "|---|---|---|---|---|---|"]
    separated = []
    for rater, fit in paid.items():
        if "not_estimable" in fit:
            L.append(f"| {rater} | {fit['pairs']} | not estimable: {fit['not_estimable']} | | | |")
            continue
        lin, lg = fit["linear"], fit.get("logistic", {})
        if lg.get("ml_infinite"):
            what = " and ".join({"styled": "style", "right": "facts"}.get(f, f) for f in lg["ml_infinite"])
            separated.append(f"{what} for the {RATER_NAMES.get(rater, rater)} rater")

        def pts(x):
            return f"{100 * x['effect']:+.0f} [{100 * x['lo']:+.0f}, {100 * x['hi']:+.0f}]"

        def odds(name):
            if "not_estimable" in lg:
                return f"not estimable ({lg['not_estimable']})"
            x = lg[name]
            return f"{_odds(x['odds_ratio'])} [{_odds(x['lo'])}, {_odds(x['hi'])}]"

        L.append(f"| {rater} | {fit['pairs']} | {pts(lin['styled'])} | {pts(lin['right'])} | {odds('styled')} | "
                 f"{odds('right')} |")
    if separated:
        L += ["", f"Odds ratios are Firth-penalised: plain maximum likelihood has no finite estimate of "
                  f"{'; of '.join(separated)} (separation: some kind of answer is never rated as good as the "
                  "teacher's). Firth's penalty keeps the estimate finite, and its profile-likelihood interval says "
                  "how large it can be."]
    rows = [(r, f) for r, f in paid.items() if f.get("cells")]
    if not rows:
        return L
    L += ["", "Win-or-tie rate against the teacher by kind of answer (the table both models summarise; Wilson "
              "intervals):", "", "| rater | " + " | ".join(t for _, t in CELLS) + " |", "|---|---|---|---|---|"]

    def rate(f, key):
        c = f["cells"].get(key)
        if not c or not c["pairs"]:
            return "-"
        return f"{100 * c['rate']:.0f}% [{100 * c['lo']:.0f}, {100 * c['hi']:.0f}] of {c['pairs']}"

    for rater, f in rows:
        L.append(f"| {rater} | " + " | ".join(rate(f, k) for k, _ in CELLS) + " |")

    def r(f, key):
        c = f["cells"].get(key)
        return f"{100 * c['rate']:.0f}%" if c and c["pairs"] else "-"

    said = [f"the {RATER_NAMES.get(rater, rater)} rater rates a wrong answer as good as the teacher's "
            f"{r(f, CELLS[0][0])} of the time when it is plain and {r(f, CELLS[2][0])} when it is teacher-styled, "
            f"a right one {r(f, CELLS[1][0])} and {r(f, CELLS[3][0])}" for rater, f in rows]
    L += ["", "In words: " + "; ".join(said) + "."]
    return L


def render(p: Params, agg: dict, gaps: dict, checks: list[dict], finds: list[dict], paid: dict, figs: list[str],
           exs: list[dict]) -> str:
    T, B, C = agg["teacher"], agg["base"], agg["cells"]
    level = f"{100 * p.report.level:g}%"
    ci_note = (f"{level} CI: Student-t over the {len(p.grid.seeds)} replicated chains (each chain pretrains every size "
               "and fine-tunes every imitation model from it)" if len(p.grid.seeds) > 1 else
               f"one chain: {level} Wilson interval over the items of that run (item noise only; add chains with "
               "`dvc exp run -S 'grid.seeds=[0,1,2]'` for a CI over training runs, which checks and findings need)")
    L = ["# imitation-gap: report", "",
         "Generated by `dvc repro` (stage `report`) from the runs in `metrics/runs/`. "
         f"Grid: sizes {p.grid.sizes}, kinds {p.grid.kinds}, amounts {p.grid.amounts} tokens, chains {p.grid.seeds}.",
         f"Numbers are `mean [{level} CI]`; {ci_note}.", "",
         "## Instrument checks", "",
         "Before any finding: does this miniature have the mechanisms that the paper's argument assumes real LMs "
         "have? Each check passes when every one of its conditions holds at the CI bound against it. The thresholds "
         "(`report.checks` in params.yaml) were fixed before any finding was looked at.", "",
         "| check | mechanism | status |", "|---|---|---|"]
    for c in checks:
        L.append(f"| {c['title']} | {c['mechanism']} | **{c['status']}** |")
    L += ["", "<details><summary>Each condition, with its estimate</summary>", ""]
    for c in checks:
        L.append(f"- **{c['title']}** ({c['status']}{': ' + c['why'] if c.get('why') else ''})")
        L += _conditions(c["conditions"])
    L += ["", "</details>", "", "## Findings", "",
          "Each finding is a rule on the grid with thresholds fixed in advance (`report.findings` in params.yaml). "
          f"A condition **held** when it holds at the {level} CI bound against it, **did not hold** when it fails "
          "even at the bound in its favour, and is **inconclusive** in between; a finding holds when every condition "
          "held, and did not hold when any did not hold. Comparisons are estimated on per-chain differences.", "",
          "| | claim | rule | verdict |", "|---|---|---|---|"]
    for f in finds:
        L.append(f"| {f['id']} | {f['claim']} | {f['rule']} | **{f['verdict']}** |")
    L += [""]
    for f in finds:
        L.append(f"- **{f['id']}: {f['verdict']}**{' (' + f['why'] + ')' if f.get('why') else ''}. "
                 f"The paper: {f['paper']}.")
        L += _conditions(f["conditions"])
    L += ["", "### The paper beside us", ""] + paper_beside(p, agg)
    L += ["", "## What raters reward", "",
          "Every judged pair of every model in the grid about a held-out person's facts, pooled: is the model's answer "
          "rated as good as or better than the teacher's (win or tie), by whether it is teacher-styled (the teacher's "
          "phrases) and whether it is factually right (the world's facts)? A linear probability model (OLS, HC3 "
          "errors) gives each feature's effect in points of win-or-tie, a logistic regression (Firth's bias "
          f"reduction) the same as odds ratios; {level} CIs.", ""] + rewards_table(paid) + [""]
    L += ["## Capability and preference, every model", "",
          "Tasks: " + "; ".join(task_title(agg, t) for t in TASKS) + ".", "",
          "Capability is lm-eval accuracy on held-out (group B) people; preference is the win+tie rate against the "
          "teacher on held-out prompts, judged blind in both orders. Gap closed = (model - base) / (teacher - base); n/a where the teacher is less "
          f"than {p.report.gap_min:g} above the base (`report.gap_min`): there is no gap to close.",
          "",
          "| model | QA | MC | skill | knowledge probe | non-expert win+tie | expert win+tie | gap closed QA | "
          "gap closed MC | gap closed skill |", "|---|---|---|---|---|---|---|---|---|---|"]

    def gfmt(x):
        return "n/a" if x is None else f"{x:+.2f}"

    L.append("| teacher | " + " | ".join(fmt(T.get(f"capability.{t}")) for t in (*TASKS, "store")) +
             " | - | - | - | - | - |")
    for s in p.grid.sizes:
        L.append(f"| {s} base | " + " | ".join(fmt(B[s].get(f"capability.{t}")) for t in (*TASKS, "store")) + " | " +
                 fmt(B[s].get("preference.nonexpert")) + " | " + fmt(B[s].get("preference.expert")) +
                 " | 0 | 0 | 0 |")
    for c, v in C.items():
        L.append(f"| {label(c)} | " + " | ".join(fmt(v.get(f"capability.{t}")) for t in (*TASKS, "store")) + " | " +
                 fmt(v.get("preference.nonexpert")) + " | " + fmt(v.get("preference.expert")) + " | " +
                 " | ".join(gfmt(gaps[label(c)][t]) for t in TASKS) + " |")
    L += ["", "## QA accuracy: base, +broad, +local (Table 1 analogue)", "",
          "| size | base | + broad | + local | teacher |", "|---|---|---|---|---|"]
    top = max(p.grid.amounts)
    for s in p.grid.sizes:
        cells = [fmt(C[(s, k, top)].get("capability.qa")) if (s, k, top) in C else "n/a" for k in ("broad", "local")]
        L.append(f"| {s} | {fmt(B[s].get('capability.qa'))} | {cells[0]} | {cells[1]} | "
                 f"{fmt(T.get('capability.qa'))} |")
    L += ["", f"(imitation at {top} tokens)", "", "## Style (Table 2 analogue)", "",
          "| model | teacher-style | lists | authoritative | confident & wrong | fact accuracy | words | "
          "length corr. with teacher | names the person asked | names someone else |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    rows = [("teacher", T)] + [(f"{s} base", B[s]) for s in p.grid.sizes] + [(label(c), v) for c, v in C.items()]
    for name, v in rows:
        L.append(f"| {name} | " + " | ".join(fmt(v.get(f"style.{k}")) for k in STYLE) + " |")
    L += ["", "## Figures", ""] + [f"![{f}](plots/{f})" for f in figs]
    L += ["", "## Side by side: held-out factual prompts", "",
          "Correctness is the expert rater's (the facts of the world); style is plain to see.", ""]
    for e in exs:
        L.append(f"**{e['prompt']}**")
        L.append("")
        for name, a in e["answers"].items():
            mark = "" if a["correct"] is None else " (right)" if a["correct"] else " (wrong)"
            L.append(f"- *{name}*{mark}: {a['text']!r}")
        L.append("")
    return "\n".join(L) + "\n"
