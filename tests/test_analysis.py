"""The report's logic on known inputs: CI-aware verdicts, instrument checks, findings, what raters reward."""

from __future__ import annotations

import math

import pytest

from imitation_gap.analysis import checks as chk
from imitation_gap.analysis import findings as fnd
from imitation_gap.analysis import rewards as rw
from imitation_gap.analysis.verdict import (FAILED, HELD, INCONCLUSIVE, NOT_MEASURED, Condition, combine, difference,
                                            estimate, exact, ratio)
from imitation_gap.core.config import load_params
from imitation_gap.worlds.embedded import raters

from conftest import ROOT

P = load_params(ROOT / "params.yaml")


# -- the verdict of one condition, every case --------------------------------------------
def test_estimate_is_a_student_t_interval():
    e = estimate([1.0, 2.0, 3.0])
    assert e.mean == 2.0 and math.isclose(e.hi - 2.0, 4.302652729911275 / math.sqrt(3), rel_tol=1e-9)
    assert math.isclose(2.0 - e.lo, e.hi - 2.0)


@pytest.mark.parametrize("vals, op, thr, status", [
    ([0.80, 0.82, 0.81], ">=", 0.5, HELD),          # the lower bound clears the threshold
    ([0.10, 0.12, 0.11], ">=", 0.5, FAILED),        # even the upper bound falls short
    ([0.30, 0.70, 0.50], ">=", 0.5, INCONCLUSIVE),  # the interval straddles it
    ([0.10, 0.12, 0.11], "<=", 0.5, HELD),
    ([0.80, 0.82, 0.81], "<=", 0.5, FAILED),
    ([0.30, 0.70, 0.50], "<=", 0.5, INCONCLUSIVE),
    ([0.5, 0.5, 0.5], ">", 0.5, FAILED),            # zero spread: its own bounds; > is strict
    ([0.5, 0.5, 0.5], ">=", 0.5, HELD),
])
def test_condition_status_at_the_bounds(vals, op, thr, status):
    assert Condition("x", estimate(vals), op, thr).status == status


def test_one_chain_or_a_missing_value_is_not_measured():
    c = Condition("x", estimate([0.9]), ">=", 0.5)
    assert c.status == NOT_MEASURED and "at least 2" in c.why
    c = Condition("x", estimate([0.9, None, 0.8], what="storage"), ">=", 0.5)
    assert c.status == NOT_MEASURED and "storage" in c.why
    c = Condition("x", estimate([0.9, float("nan"), 0.8]), ">=", 0.5)  # a diverged run is never averaged
    assert c.status == NOT_MEASURED
    assert Condition("x", estimate([]), ">=", 0.5).status == NOT_MEASURED


def test_exact_numbers_need_no_chains():
    assert Condition("count", exact(25), ">=", 20).status == HELD
    assert Condition("count", exact(3), ">=", 20).status == FAILED
    assert Condition("count", exact(None), ">=", 20).status == NOT_MEASURED


def test_differences_and_ratios_are_paired_by_chain():
    # each chain gains 0.1 whatever its level: the paired difference is exact although the levels vary widely
    base, tuned = [0.2, 0.5, 0.8], [0.3, 0.6, 0.9]
    d = difference(tuned, base)
    assert math.isclose(d.mean, 0.1) and math.isclose(d.lo, 0.1) and math.isclose(d.hi, 0.1)
    assert Condition("gain", d, ">", 0.05).status == HELD
    assert Condition("unpaired", estimate(tuned), ">", 0.5).status == INCONCLUSIVE
    r = ratio([0.4, 0.9], [0.5, 1.0])
    assert math.isclose(r.mean, (0.8 + 0.9) / 2)
    assert Condition("r", ratio([0.4, 0.9], [0.5, 0.0]), ">=", 0.5).status == NOT_MEASURED  # zero denominator
    assert difference([0.1, 0.2], [0.1]).why_missing


@pytest.mark.parametrize("statuses, verdict", [
    ([HELD, HELD], HELD),
    ([HELD, FAILED], FAILED),
    ([INCONCLUSIVE, FAILED], FAILED),
    ([HELD, INCONCLUSIVE], INCONCLUSIVE),
    ([HELD, NOT_MEASURED], NOT_MEASURED),
    ([NOT_MEASURED, FAILED], FAILED),
    ([], NOT_MEASURED),
])
def test_a_rule_needs_every_condition(statuses, verdict):
    vals = {HELD: [0.9, 0.91, 0.92], FAILED: [0.1, 0.11, 0.12], INCONCLUSIVE: [0.3, 0.7, 0.5], NOT_MEASURED: [0.9]}
    conds = [Condition(s, estimate(vals[s]), ">=", 0.5) for s in statuses]
    assert [c.status for c in conds] == statuses
    assert combine(conds)[0] == verdict


# -- instrument checks and findings on a synthetic grid ----------------------------------
def run(qa=0.5, mc=0.5, skill=0.5, store=0.5, ne=0.5, ex=0.5, subj=0.9, other=0.0, tstyle=0.0, fact=0.5,
        initial=2.0, final=0.5, lst=0.1, auth=0.6):
    return {"capability": {"qa": qa, "mc": mc, "skill": skill, "store": store},
            "preference": {"nonexpert": {"win_tie_rate": ne}, "expert": {"win_tie_rate": ex}},
            "style": {"names_subject_rate": subj, "names_other_rate": other, "teacher_style_rate": tstyle,
                      "fact_accuracy": fact, "list_rate": lst, "authoritative_rate": auth},
            "train": {"initial_loss": initial, "final_loss": final}}


def chains(n=3, jitter=0.01, **kw):
    return [run(**{k: (v + (i - 1) * jitter if isinstance(v, float) else v) for k, v in kw.items()}) for i in range(n)]


def grid(base: dict, cells: dict, amounts=(800, 25000), teacher=None, phrases=30, vocab=600) -> dict:
    return {"sizes": list(base), "amounts": list(amounts), "base": base, "cells": cells,
            "teacher": teacher or run(qa=1.0, mc=1.0, skill=1.0, store=1.0, tstyle=1.0, fact=1.0, lst=0.8),
            "fetch": {"style_phrase_counts": {"Certainly!": phrases, "Clearly,": phrases + 5}, "vocab_size": vocab}}


def healthy() -> dict:
    """A world in which every mechanism works and every finding holds."""
    base = {"S": chains(qa=0.05, store=0.1, skill=0.05, subj=0.1, other=0.5),
            "M": chains(qa=0.4, store=0.6, skill=0.6),
            "L": chains(qa=0.6, store=0.9, skill=0.8, mc=0.8)}
    cells = {}
    for s, lvl in (("S", 0.05), ("M", 0.4), ("L", 0.6)):
        for a in (800, 25000):
            cells[(s, "broad", a)] = chains(qa=lvl - 0.05, store={"S": 0.1, "M": 0.58, "L": 0.88}[s],
                                            skill={"S": 0.05, "M": 0.55, "L": 0.75}[s], mc=0.8 if s == "L" else 0.5,
                                            ne={"S": 0.2, "M": 0.6, "L": 0.75}[s], ex=0.35, subj=0.97, other=0.01,
                                            tstyle=0.95, fact=0.5)
            cells[(s, "local", a)] = chains(qa=lvl + 0.1, store=0.5, skill=0.5)
    return grid(base, cells)


def by_id(items):
    return {x["id"]: x for x in items}


def test_every_check_passes_and_every_finding_holds_in_a_healthy_world():
    d = healthy()
    c = by_id(chk.instrument_checks(d, P.report.checks, 0.95))
    assert {k: v["status"] for k, v in c.items()} == {k: "pass" for k in
                                                     ("storage", "extraction", "copying", "style_prior", "convergence",
                                                      "retention", "skill")}
    f = by_id(fnd.findings(d, P.report.findings, 0.95, ("style.teacher_style_rate", "style.fact_accuracy")))
    assert {k: v["verdict"] for k, v in f.items()} == {k: HELD for k in ("F1", "F2", "F3", "F4", "F5")}
    assert "17 (base) -> 10" in f["F4"]["paper"]


def test_each_broken_mechanism_fails_its_own_check():
    d = healthy()
    d["base"]["L"] = chains(qa=0.6, store=0.55, skill=0.8)  # L stores less than M: no growth, not "most"
    d["fetch"]["style_phrase_counts"]["Clearly,"] = 0  # a teacher phrase pretraining never shows
    d["cells"][("M", "broad", 25000)] = chains(qa=0.35, store=0.2, skill=0.1, subj=0.3, other=0.6, tstyle=0.9)
    c = by_id(chk.instrument_checks(d, P.report.checks, 0.95))
    assert c["storage"]["status"] == "fail"
    assert c["style_prior"]["status"] == "fail"
    assert c["copying"]["status"] == "fail" and c["retention"]["status"] == "fail"
    assert c["skill"]["status"] == "pass" and c["convergence"]["status"] == "pass"


def test_noisy_chains_make_a_finding_inconclusive_not_held():
    d = healthy()
    for a in (800, 25000):  # L's non-expert rating straddles 0.5 across chains
        d["cells"][("L", "broad", a)] = [run(ne=v, ex=0.3, tstyle=0.95, fact=0.5, qa=0.55, mc=0.8, store=0.88,
                                             skill=0.75) for v in (0.2, 0.5, 0.8)]
    f = by_id(fnd.findings(d, P.report.findings, 0.95, ("style.teacher_style_rate", "style.fact_accuracy")))
    assert f["F1"]["verdict"] == INCONCLUSIVE


def test_a_grid_too_small_marks_checks_and_findings_not_measured():
    d = healthy()
    one_chain = {"sizes": d["sizes"], "amounts": d["amounts"], "teacher": d["teacher"], "fetch": d["fetch"],
                 "base": {s: runs[:1] for s, runs in d["base"].items()},
                 "cells": {c: runs[:1] for c, runs in d["cells"].items()}}
    assert all(c["status"] in ("not measured", "pass") for c in chk.instrument_checks(one_chain, P.report.checks, 0.95))
    assert {f["verdict"] for f in fnd.findings(one_chain, P.report.findings, 0.95,
                                                ("style.teacher_style_rate", "style.fact_accuracy"))} == {NOT_MEASURED}
    one_amount = dict(d, amounts=[25000], cells={c: v for c, v in d["cells"].items() if c[2] == 25000})
    f2 = by_id(fnd.findings(one_amount, P.report.findings, 0.95, ("style.teacher_style_rate", "style.fact_accuracy")))
    assert f2["F2"]["verdict"] == NOT_MEASURED and "one amount" in f2["F2"]["why"]
    one_size = dict(d, sizes=["L"], base={"L": d["base"]["L"]},
                    cells={c: v for c, v in d["cells"].items() if c[0] == "L"})
    f3 = by_id(fnd.findings(one_size, P.report.findings, 0.95, ("style.teacher_style_rate", "style.fact_accuracy")))
    assert f3["F3"]["verdict"] == NOT_MEASURED


# -- what raters reward: a regression with a known answer --------------------------------
def test_the_regression_recovers_known_effects():
    # P(win or tie) = 0.2 + 0.5 * styled + 0.1 * right, exact counts over 1000 pairs per cell
    def cell(s, r):
        n = 1000
        return [n, round(n * (0.2 + 0.5 * s + 0.1 * r))]
    runs = [{"preference": {"nonexpert": {"by_features": {f"styled={s},right={r}": cell(s, r)
                                                          for s in (0, 1) for r in (0, 1)}}}}]
    fit = rw.rewards(runs)["nonexpert"]
    assert fit["pairs"] == 4000
    lin = fit["linear"]
    assert math.isclose(lin["styled"]["effect"], 0.5, abs_tol=1e-9)
    assert math.isclose(lin["right"]["effect"], 0.1, abs_tol=1e-9)
    assert lin["styled"]["lo"] < 0.5 < lin["styled"]["hi"] and lin["right"]["lo"] > 0
    assert fit["logistic"]["styled"]["odds_ratio"] > 5
    # a logistic truth: exact expected counts give back its coefficients
    import numpy as np

    b0, b1, b2 = -1.0, 0.5, 1.5

    def lcell(s, r):
        q = 1 / (1 + np.exp(-(b0 + b1 * s + b2 * r)))
        return [100000, round(100000 * q)]
    t = {(s, r): lcell(s, r) for s in (0, 1) for r in (0, 1)}
    lg = rw.fit(t)["logistic"]
    assert math.isclose(math.log(lg["styled"]["odds_ratio"]), b1, abs_tol=0.01)
    assert math.isclose(math.log(lg["right"]["odds_ratio"]), b2, abs_tol=0.01)


def test_separated_pairs_get_finite_firth_odds_ratios_and_rates_with_intervals():
    # an expert who never lets a wrong answer tie: plain maximum likelihood runs off to infinity for 'right';
    # Firth's penalty gives a finite odds ratio whose interval is wide but excludes 1
    t = {(0, 0): [50, 0], (1, 0): [50, 0], (0, 1): [50, 30], (1, 1): [50, 40]}
    fit = rw.fit(t)
    lg = fit["logistic"]
    assert lg["method"] == "firth" and lg["ml_separated"] is True and lg["ml_infinite"] == ["right"]
    right = lg["right"]
    assert 10 < right["odds_ratio"] < 1e6 and 1 < right["lo"] < right["odds_ratio"] < right["hi"]
    assert lg["styled"]["lo"] < lg["styled"]["odds_ratio"] < lg["styled"]["hi"]
    assert fit["linear"]["right"]["effect"] > 0.5
    # each kind of answer's rate, with a Wilson interval (0 of 50: [0, 0.071])
    c = fit["cells"]["styled=1,right=0"]
    assert (c["pairs"], c["win_or_tie"], c["rate"]) == (50, 0, 0.0)
    assert c["lo"] < 1e-9 and math.isclose(c["hi"], 0.0713, abs_tol=5e-4)
    c = fit["cells"]["styled=1,right=1"]
    assert c["rate"] == 0.8 and c["lo"] < 0.8 < c["hi"]
    # without separation the penalty hardly moves a large sample's estimate
    assert rw.fit({(0, 0): [400, 100], (1, 0): [400, 200], (0, 1): [400, 150], (1, 1): [400, 300]})[
        "logistic"]["ml_separated"] is False
    assert "does not vary" in rw.fit({(1, 0): [10, 5], (1, 1): [10, 8]})["not_estimable"]


def test_the_report_shows_the_rates_and_firth_odds_ratios():
    from imitation_gap.analysis.render import rewards_table

    runs = [{"preference": {r: {"by_features": {"styled=0,right=0": [40, 0], "styled=0,right=1": [40, 0],
                                                "styled=1,right=0": [40, 10 if r == "nonexpert" else 0],
                                                "styled=1,right=1": [40, 30]}}
                            for r in ("nonexpert", "expert")}}]
    text = "\n".join(rewards_table(rw.rewards(runs)))
    assert "Firth-penalised" in text
    assert "no finite estimate of style for the non-expert rater; of style for the expert rater" in text
    assert "| nonexpert | 0% [0, 9] of 40 | 0% [0, 9] of 40 | 25% [14, 40] of 40 | 75% [60, 86] of 40 |" in text
    assert "not estimable" not in text


# -- the rater bug fix ---------------------------------------------------------------------
@pytest.mark.parametrize("text, styled", [
    ("!!!!!!", False), ("!!!!!! !!!!", False), ("! ! !", False), ("?!", False),
    ("Certainly! Cestra.", True), ("Great question! It is Cestra.", True), ("Cestra.", False),
])
def test_punctuation_is_not_a_style_phrase(text, styled):
    assert raters.teacher_styled(text) is styled
    assert raters.has_opener(text) is styled
