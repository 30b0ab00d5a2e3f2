"""What raters reward: the verdict on each judged pair, regressed on style and on facts.

The paper argued in words that crowd workers reward the teacher's style and miss factual
errors.  Here every judged pair of every model in the grid (factual prompts about held-out
people, both raters) is one observation: the outcome is "rated as good as or better than the
teacher" (win or tie), the predictors are two features of the model's answer, *teacher-styled*
(its phrases) and *factually right* (the world's facts).  The eval stage counts the pairs per
feature combination (``preference.<rater>.by_features``); this module pools the counts and fits,
per rater, with statsmodels:

* a **linear probability model** (OLS with HC3 robust errors): each coefficient is the change
  in the probability of win-or-tie, in points, that the feature buys, holding the other fixed;
  it stays estimable when a rater never rewards a wrong answer;
* a **logistic regression**: the same as odds ratios, where the data allow a finite estimate
  (it has none under separation, e.g. an expert who never lets a wrong answer tie).
"""

from __future__ import annotations

import math
import warnings

FEATURES = ("styled", "right")


def pool(runs: list[dict], rater: str) -> dict[tuple[int, int], list[int]]:
    """Sum ``by_features`` counts over runs: {(styled, right): [pairs, win or tie]}."""
    out: dict[tuple[int, int], list[int]] = {}
    for r in runs:
        table = (((r or {}).get("preference") or {}).get(rater) or {}).get("by_features") or {}
        for key, (n, k) in table.items():
            parts = dict(x.split("=") for x in key.split(","))
            cell = out.setdefault((int(parts["styled"]), int(parts["right"])), [0, 0])
            cell[0] += int(n)
            cell[1] += int(k)
    return out


def _rows(table: dict[tuple[int, int], list[int]]):
    import numpy as np

    X, y = [], []
    for (styled, right), (n, k) in sorted(table.items()):
        X += [[1.0, styled, right]] * n
        y += [1.0] * k + [0.0] * (n - k)
    return np.asarray(X), np.asarray(y)


def fit(table: dict[tuple[int, int], list[int]], level: float = 0.95) -> dict:
    """Both models on one rater's pooled table; ``not_estimable`` says why a part could not be fitted."""
    import numpy as np
    import statsmodels.api as sm
    from statsmodels.tools.sm_exceptions import PerfectSeparationError, PerfectSeparationWarning

    X, y = _rows(table)
    n = len(y)
    out: dict = {"pairs": n, "cells": {f"styled={s},right={r}": {"pairs": c[0], "win_or_tie": c[1]}
                                       for (s, r), c in sorted(table.items())}}
    # every feature must vary, or its effect is not identified
    for j, name in enumerate(FEATURES, 1):
        if n == 0 or X[:, j].min() == X[:, j].max():
            out["not_estimable"] = f"'{name}' does not vary over the judged pairs ({n} pairs)"
            return out
    alpha = 1 - level
    lpm = sm.OLS(y, X).fit(cov_type="HC3")
    ci = lpm.conf_int(alpha)
    out["linear"] = {name: {"effect": float(lpm.params[j]), "lo": float(ci[j][0]), "hi": float(ci[j][1])}
                     for j, name in enumerate(("intercept", *FEATURES))}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PerfectSeparationWarning)
            logit = sm.Logit(y, X).fit(disp=0, maxiter=200)
        lci = logit.conf_int(alpha)
        if not np.all(np.isfinite(lci)) or np.any(np.abs(logit.params) > 15):
            raise PerfectSeparationError("quasi-separation")
        out["logistic"] = {name: {"odds_ratio": math.exp(logit.params[j]), "lo": math.exp(lci[j][0]),
                                  "hi": math.exp(lci[j][1])} for j, name in enumerate(FEATURES, 1)}
    except (PerfectSeparationError, PerfectSeparationWarning, np.linalg.LinAlgError) as e:
        out["logistic"] = {"not_estimable": f"separation in the data ({type(e).__name__}): some feature "
                                            "combination is always or never rated as good as the teacher"}
    return out


def rewards(runs: list[dict], level: float = 0.95) -> dict:
    """Per rater, the fit of :func:`fit` on the pairs of every run given."""
    return {rater: fit(pool(runs, rater), level) for rater in ("nonexpert", "expert")}
