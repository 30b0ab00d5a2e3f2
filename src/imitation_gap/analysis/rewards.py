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
* a **logistic regression** with Firth's bias reduction (``firthmodels``; profile-likelihood
  CIs, as R's ``logistf``): the same as odds ratios. Plain maximum likelihood has no finite
  estimate when some feature combination is never (or always) rated as good as the teacher
  (separation; e.g. raters who never let an unstyled answer tie), and the judged pairs here are
  separated; Firth's penalty keeps the estimate finite (Heinze & Schemper 2002), and the fit names
  the features whose plain ML estimate is infinite (``ml_infinite``, by Konis's linear program);
* each feature combination's **win-or-tie rate** with a Wilson interval: the table the two
  regressions summarise, and the plainest answer to "what does each rater pay for".
"""

from __future__ import annotations

import math

from ..core.numbers import fit_value

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


def _ml_infinite(table: dict[tuple[int, int], list[int]]) -> list[str]:
    """The features whose plain maximum-likelihood estimate is infinite (separation; Konis's linear program,
    ``firthmodels.detect_separation``). Separation depends only on which (features, outcome) rows occur."""
    import numpy as np
    from firthmodels import detect_separation

    X, y = [], []
    for (styled, right), (n, k) in sorted(table.items()):
        X += [[styled, right]] * ((k > 0) + (n - k > 0))
        y += [1] * (k > 0) + [0] * (n - k > 0)
    res = detect_separation(np.asarray(X, float), np.asarray(y))
    return [name for name, finite in zip(FEATURES, res.is_finite) if not finite]


def _firth(table: dict[tuple[int, int], list[int]], level: float) -> dict:
    """Firth-penalised logistic regression on the counts (frequency weights), profile-likelihood CIs."""
    import numpy as np
    from firthmodels import FirthLogisticRegression

    X, y, w = [], [], []
    for (styled, right), (n, k) in sorted(table.items()):
        X += [[styled, right], [styled, right]]
        y += [1, 0]
        w += [k, n - k]
    m = FirthLogisticRegression(max_iter=100).fit(np.asarray(X, float), np.asarray(y),
                                                  sample_weight=np.asarray(w, float))
    if not m.converged_:
        return {"not_estimable": "Firth's penalised fit did not converge"}
    ci = m.conf_int(alpha=1 - level, method="pl")  # rows: the features, then the intercept
    if not np.all(np.isfinite(ci[:len(FEATURES)])):
        return {"not_estimable": "the profile-likelihood interval did not close"}
    infinite = _ml_infinite(table)
    return {"method": "firth", "ml_separated": bool(infinite), "ml_infinite": infinite} | {
        name: {"odds_ratio": fit_value(math.exp(m.coef_[j])), "lo": fit_value(math.exp(ci[j][0])),
               "hi": fit_value(math.exp(ci[j][1]))}
        for j, name in enumerate(FEATURES)}


def fit(table: dict[tuple[int, int], list[int]], level: float = 0.95) -> dict:
    """Both models and the per-combination rates on one rater's pooled table; ``not_estimable`` says why a
    part could not be fitted."""
    import numpy as np
    import statsmodels.api as sm
    from statsmodels.stats.proportion import proportion_confint

    X, y = _rows(table)
    n = len(y)
    alpha = 1 - level
    out: dict = {"pairs": n, "cells": {}}
    for (s, r), (m, k) in sorted(table.items()):
        lo, hi = proportion_confint(k, m, alpha, method="wilson") if m else (float("nan"), float("nan"))
        out["cells"][f"styled={s},right={r}"] = {"pairs": m, "win_or_tie": k, "rate": k / m if m else float("nan"),
                                                 "lo": fit_value(float(lo)), "hi": fit_value(float(hi))}
    # every feature must vary, or its effect is not identified
    for j, name in enumerate(FEATURES, 1):
        if n == 0 or X[:, j].min() == X[:, j].max():
            out["not_estimable"] = f"'{name}' does not vary over the judged pairs ({n} pairs)"
            return out
    lpm = sm.OLS(y, X).fit(cov_type="HC3")
    ci = lpm.conf_int(alpha)
    out["linear"] = {name: {"effect": fit_value(float(lpm.params[j])), "lo": fit_value(float(ci[j][0])),
                            "hi": fit_value(float(ci[j][1]))}
                     for j, name in enumerate(("intercept", *FEATURES))}
    try:
        out["logistic"] = _firth(table, level)
    except (ValueError, np.linalg.LinAlgError) as e:
        out["logistic"] = {"not_estimable": f"Firth's penalised fit failed ({type(e).__name__}: {e})"}
    return out


def rewards(runs: list[dict], level: float = 0.95) -> dict:
    """Per rater, the fit of :func:`fit` on the pairs of every run given."""
    return {rater: fit(pool(runs, rater), level) for rater in ("nonexpert", "expert")}
