"""The paper's findings F1-F5, each a written rule applied to the aggregated metrics (see :func:`findings`)."""

from __future__ import annotations

import statistics

from ..core.config import Params
from .stats import TASKS


def findings(p: Params, agg: dict, f5_metrics: tuple[str, str]) -> list[dict]:
    """F1-F5 of the paper, each with the rule that decides its verdict, applied to this run.

    ``f5_metrics``: the metric that shows the teacher's style and the one that shows facts, in this
    world (:attr:`imitation_gap.worlds.World.f5_metrics`)."""
    sizes, amounts = p.grid.sizes, sorted(p.grid.amounts)
    big, small, top, low = sizes[-1], sizes[0], amounts[-1], amounts[0]
    T, B, C = agg["teacher"], agg["base"], agg["cells"]

    def m(d, k):
        v = d.get(k)
        return v["mean"] if v else None

    def cap(d):  # mean capability over the tasks this world measured (a skipped task is left out)
        vals = [m(d, f"capability.{t}") for t in TASKS]
        vals = [v for v in vals if v is not None]
        return statistics.fmean(vals) if vals else None

    out = []
    has = {k: any(c[1] == k for c in C) for k in ("broad", "local")}

    if has["broad"]:
        cell = C[(big, "broad", top)]
        ne, ex = m(cell, "preference.nonexpert"), m(cell, "preference.expert")
        held = ne is not None and ex is not None and ne >= 0.5 and ne - ex >= 0.1
        out.append({"id": "F1", "claim": "Crowd-style raters rate most imitation outputs as good as the teacher's; "
                                         "an expert, who checks facts, does not.",
                    "rule": f"non-expert win+tie rate of {big}+broad@{top} >= 0.5 and at least 0.1 above the expert's",
                    "numbers": {"nonexpert_win_tie": cell.get("preference.nonexpert"),
                                "expert_win_tie": cell.get("preference.expert")},
                    "verdict": "held" if held else "did not hold"})

        deltas = {}
        for s in sizes:
            lo_cap, hi_cap = cap(C[(s, "broad", low)]), cap(C[(s, "broad", top)])
            deltas[s] = None if lo_cap is None or hi_cap is None else hi_cap - lo_cap
        held = len(amounts) > 1 and all(d is not None and d <= 0.02 for d in deltas.values())
        out.append({"id": "F2", "claim": "More broad imitation data does not raise benchmark scores "
                                         "(and may lower them).",
                    "rule": f"for every size, mean(QA, MC, skill) at {top} tokens minus at {low} tokens <= +0.02",
                    "numbers": {"delta_capability_by_size": deltas},
                    "verdict": "held" if held else ("inconclusive (one amount)" if len(amounts) < 2 else
                                                    "did not hold")})

        base_cap = {s: cap(B[s]) for s in sizes}
        pref = {s: m(C[(s, "broad", top)], "preference.nonexpert") for s in sizes}
        held = (len(sizes) > 1 and None not in (base_cap[big], base_cap[small], pref[big], pref[small])
                and base_cap[big] > base_cap[small] and pref[big] >= pref[small])
        out.append({"id": "F3", "claim": "A larger base model raises both benchmark scores and ratings.",
                    "rule": f"base mean(QA, MC, skill) of {big} > {small}, and non-expert win+tie of "
                            f"{big}+broad@{top} >= {small}'s",
                    "numbers": {"base_capability": base_cap, "nonexpert_win_tie_broad": pref},
                    "verdict": "held" if held else "did not hold"})

    if has["local"]:
        qa = {"base": m(B[big], "capability.qa"), "local": m(C[(big, "local", top)], "capability.qa"),
              "teacher": m(T, "capability.qa")}
        if has["broad"]:
            qa["broad"] = m(C[(big, "broad", top)], "capability.qa")
        held = None not in (qa["local"], qa["base"]) and qa["local"] > qa["base"] and \
            qa["local"] > (qa.get("broad") if qa.get("broad") is not None else -1)
        out.append({"id": "F4", "claim": "Local imitation (task-specific data) raises its own task.",
                    "rule": f"QA of {big}+local@{top} > {big} base, and > {big}+broad@{top}",
                    "numbers": {"qa": qa}, "verdict": "held" if held else "did not hold"})

    if has["broad"]:
        cell = C[(big, "broad", top)]
        st_key, fa_key = f5_metrics
        style = {k.split(".")[1]: {"base": m(B[big], k), "imitation": m(cell, k), "teacher": m(T, k)}
                 for k in (st_key, "style.authoritative_rate", fa_key)}
        st, fa = style[st_key.split(".")[1]], style[fa_key.split(".")[1]]
        measured = None not in (st["imitation"], st["teacher"], fa["imitation"], fa["teacher"])
        held = measured and st["imitation"] >= 0.8 * st["teacher"] and fa["teacher"] - fa["imitation"] >= 0.3
        out.append({"id": "F5", "claim": "Style converges to the teacher's while factuality does not.",
                    "rule": f"{st_key.split('.')[1].replace('_', ' ')} of {big}+broad@{top} >= 0.8 x the teacher's, "
                            f"and its {fa_key.split('.')[1].replace('_', ' ')} >= 0.3 below the teacher's",
                    "numbers": style, "verdict": "held" if held else "did not hold" if measured else
                    "not measured (the teacher's score is missing)"})
    return out
