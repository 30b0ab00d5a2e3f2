"""F1-F5 of the paper as CI-aware rules on the grid (thresholds: ``report.findings`` in params.yaml).

Each finding is a claim, a rule written out in words, its conditions
(:class:`~imitation_gap.analysis.verdict.Condition`, estimated over the replicated chains) and
a verdict: held, did not hold, inconclusive, or not measured (why).  The rules read the largest
size ("big"), the smallest ("small"), the largest amount ("top") and the smallest ("low") of
the grid; a grid without what a rule compares marks it not measured.  Each finding also
carries the paper's own figure, so the report can put ours beside it.
"""

from __future__ import annotations

import statistics

from .checks import values
from .stats import TASKS
from .verdict import NOT_MEASURED, Condition, combine, difference, estimate


PAPER = {
    "F1": "~70% of imitation outputs rated as good as or better than ChatGPT's by crowd workers (Figure 1); "
          "GPT-4 as a judge agrees",
    "F2": "more ShareGPT-Mix data leaves MMLU and HumanEval near the base and lowers NQ: LLaMA-7B 17 -> 10 "
          "(Table 1, Figure 4)",
    "F3": "a larger base model (GPT-2 1.5B -> LLaMA 7B -> 13B) raises benchmark scores and human ratings "
          "(Figures 1 and 4)",
    "F4": "NQ of LLaMA-7B: 17 (base) -> 10 (+ShareGPT-Mix) -> 22 (+NQ-synthetic); ChatGPT 31 (Table 1)",
    "F5": "authoritative tone 57% -> 99%; list use 13% -> 81% (ChatGPT 83%) (Table 2)",
}


def capability(run: dict | None) -> float | None:
    """Mean of the benchmark analogues a run measured (a task the world skipped is left out)."""
    if not run:
        return None
    vals = [(run.get("capability") or {}).get(t) for t in TASKS]  # the benchmarks: NQ, MMLU and HumanEval analogues
    vals = [v for v in vals if isinstance(v, (int, float))]
    return statistics.fmean(vals) if vals else None


def findings(data: dict, f, level: float, f5_metrics: tuple[str, str]) -> list[dict]:
    """F1-F5 as ``{id, claim, rule, verdict, why, conditions, paper}``; ``f``: params ``report.findings``;
    ``f5_metrics``: the world's metric of the teacher's style and of facts (``World.f5_metrics``)."""
    sizes, amounts = data["sizes"], sorted(data["amounts"])
    base, cells, teacher = data["base"], data["cells"], data.get("teacher") or {}
    kinds = {k for (_, k, _) in cells}
    out = []
    if not sizes or not amounts:
        return out
    big, small, top, low = sizes[-1], sizes[0], amounts[-1], amounts[0]

    def cell(s, k, a):
        return cells.get((s, k, a), [])

    def cap(runs):
        return [capability(r) for r in runs]

    def add(fid, claim, rule, conds, why_not=""):
        if why_not:
            verdict, why = NOT_MEASURED, why_not
        else:
            verdict, why = combine(conds)
        out.append({"id": fid, "claim": claim, "rule": rule, "verdict": verdict, "why": why,
                    "conditions": [c.as_dict() for c in conds], "paper": PAPER[fid]})

    def diff(a, b, what):
        return difference(a, b, level, what)

    broad = "broad" in kinds
    if broad:
        runs = cell(big, "broad", top)
        ne = values(runs, "preference.nonexpert.win_tie_rate")
        ex = values(runs, "preference.expert.win_tie_rate")
        add("F1", "Crowd-style raters rate most imitation outputs as good as the teacher's; an expert, who checks "
                  "facts, does not.",
            f"non-expert win+tie rate of {big}+broad@{top} >= {f.f1_nonexpert_min}, and at least {f.f1_gap_min} "
            "above the expert's",
            [Condition(f"non-expert win+tie of {big}+broad@{top} >= {f.f1_nonexpert_min}",
                       estimate(ne, level, "non-expert win+tie"), ">=", f.f1_nonexpert_min),
             Condition(f"non-expert - expert win+tie of {big}+broad@{top} >= {f.f1_gap_min}",
                       diff(ne, ex, "rater gap"), ">=", f.f1_gap_min)])

        conds = [Condition(f"{s}: capability at broad@{top} - at broad@{low} <= {f.f2_max_gain}",
                           diff(cap(cell(s, "broad", top)), cap(cell(s, "broad", low)), f"{s} capability gain"),
                           "<=", f.f2_max_gain) for s in sizes]
        add("F2", "More broad imitation data does not raise benchmark scores (and may lower them).",
            f"for every size, mean(QA, MC, skill) at {top} tokens minus at {low} tokens <= +{f.f2_max_gain}",
            conds, "" if len(amounts) > 1 else "one amount in grid.amounts: nothing to compare")

        conds = [Condition(f"base capability {big} - {small} > {f.f3_min_gain}",
                           diff(cap(base[big]), cap(base[small]), "base capability by size"), ">", f.f3_min_gain),
                 Condition(f"non-expert win+tie {big}+broad@{top} - {small}+broad@{top} >= {f.f3_min_gain}",
                           diff(values(cell(big, "broad", top), "preference.nonexpert.win_tie_rate"),
                                values(cell(small, "broad", top), "preference.nonexpert.win_tie_rate"),
                                "ratings by size"), ">=", f.f3_min_gain)]
        add("F3", "A larger base model raises both benchmark scores and ratings.",
            f"base mean(QA, MC, skill) of {big} > {small}'s, and non-expert win+tie of {big}+broad@{top} >= "
            f"{small}+broad@{top}'s", conds, "" if len(sizes) > 1 else "one size in grid.sizes: nothing to compare")

    if "local" in kinds:
        qa_local = values(cell(big, "local", top), "capability.qa")
        conds = [Condition(f"QA of {big}+local@{top} - {big} base > {f.f4_min_gain}",
                           diff(qa_local, values(base[big], "capability.qa"), "local gain"), ">", f.f4_min_gain)]
        if broad:
            conds.append(Condition(f"QA of {big}+local@{top} - {big}+broad@{top} > {f.f4_min_gain}",
                                   diff(qa_local, values(cell(big, "broad", top), "capability.qa"), "local vs broad"),
                                   ">", f.f4_min_gain))
        add("F4", "Local imitation (task-specific data) raises its own task.",
            f"QA of {big}+local@{top} > {big} base" + (f", and > {big}+broad@{top}" if broad else ""), conds)

    if broad:
        runs = cell(big, "broad", top)
        st_key, fa_key = f5_metrics
        t_style, t_fact = _teacher(teacher, st_key), _teacher(teacher, fa_key)
        conds = []
        why = ""
        if t_style is None or t_fact is None:
            why = "the teacher's score is missing"
        else:
            conds = [Condition(f"{_words(st_key)} of {big}+broad@{top} >= {f.f5_style_share} x the teacher's "
                               f"({t_style:.2f})", estimate(values(runs, st_key), level, "style"), ">=",
                               f.f5_style_share * t_style),
                     Condition(f"teacher's {_words(fa_key)} ({t_fact:.2f}) - {big}+broad@{top}'s >= {f.f5_fact_gap}",
                               estimate([None if v is None else t_fact - v for v in values(runs, fa_key)], level,
                                        "fact gap"), ">=", f.f5_fact_gap)]
        add("F5", "Style converges to the teacher's while factuality does not.",
            f"{_words(st_key)} of {big}+broad@{top} >= {f.f5_style_share} x the teacher's, and its {_words(fa_key)} "
            f">= {f.f5_fact_gap} below the teacher's", conds, why)
    return out


def _teacher(teacher: dict, path: str) -> float | None:
    v = values([teacher], path)[0]
    return v


def _words(key: str) -> str:
    return key.split(".")[1].replace("_", " ")
