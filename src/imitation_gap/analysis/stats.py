"""Statistics of the report: confidence intervals, aggregation over seeds, gap closed, length-controlled win rate.

Confidence intervals: with two or more seeds, a Student-t interval over the seed means; with
one seed, a Wilson score interval over the items of that one run (for rates), which shows
item-sampling noise only.
"""

from __future__ import annotations

import logging
import math

from ..core.io import lookup
from .verdict import estimate

log = logging.getLogger("imitation_gap")

TASKS = ("qa", "mc", "skill")
STYLE = ("teacher_style_rate", "list_rate", "authoritative_rate", "confident_wrong_rate", "fact_accuracy",
         "mean_words", "length_corr_teacher", "names_subject_rate", "names_other_rate")


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval (``scipy.stats.t.interval``); (mean, nan, nan) for fewer than 2 values."""
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"t_interval: a non-finite value in {values}: it must never be averaged")
    e = estimate(values, level)  # the findings' interval (analysis/verdict.py): one implementation
    return e.mean, e.lo, e.hi


def wilson_interval(p: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a rate ``p`` over ``n`` items.

    Written out rather than ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``: that needs
    an integer count ``k``, and some rates here are not a count over the ``n`` items the report knows
    (``fact_accuracy`` is over the factual prompts only), so ``p * n`` need not be whole."""
    from scipy import stats

    if n <= 0:
        return float("nan"), float("nan")
    z = stats.norm.ppf(0.5 + level / 2)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return centre - half, centre + half


def summarize(values: list[float], n_items: int | None, is_rate: bool) -> dict:
    m, lo, hi = t_interval(values)
    method = "t-over-seeds"
    if len(values) < 2:
        if is_rate and n_items:
            lo, hi = wilson_interval(m, n_items)
            method = "wilson-over-items"
        else:
            method = "none (one run)"
    return {"mean": m, "lo": lo, "hi": hi, "n_seeds": len(values), "ci": method}


def finite(obj):
    """NaN (an undefined CI) as null, so the JSON is valid for every reader."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def metric_paths() -> list[tuple[str, str, bool]]:
    """(name, path in a metrics file, is a rate) of every metric the report aggregates."""
    out = [(f"capability.{t}", f"capability.{t}", True) for t in (*TASKS, "store")]
    out += [(f"preference.{r}", f"preference.{r}.win_tie_rate", True) for r in ("nonexpert", "expert")]
    out += [(f"style.{s}", f"style.{s}", s not in ("mean_words", "length_corr_teacher")) for s in STYLE]
    return out


def n_items(m: dict, name: str) -> int | None:
    n = m.get("n", {})
    if name.startswith("capability."):
        return n.get(name.split(".")[1])
    return n.get("pref")


def aggregate(runs: list[dict]) -> dict:
    """Every metric of :func:`metric_paths` over ``runs`` (one cell's seeds): mean and CI.  A metric for which
    any run holds a non-finite value (a diverged model) is left out, so the report shows it as not measured;
    it is never averaged."""
    out = {}
    for name, path, is_rate in metric_paths():
        vals = [v for v in (lookup(r, path) for r in runs) if isinstance(v, (int, float)) and not isinstance(v, bool)]
        bad = [r.get("run", "?") for r in runs if isinstance(lookup(r, path), float) and not math.isfinite(lookup(r, path))]
        if bad:
            log.warning("report: %s is not finite in %s; left out (not measured), never averaged", name,
                        ", ".join(map(str, bad)))
            continue
        if vals:
            out[name] = summarize(vals, n_items(runs[0], name), is_rate)
    return out


def gap_closed(model: float, base: float, teacher: float, min_gap: float = 0.0) -> float | None:
    """(model - base) / (teacher - base), as in the paper; None when the teacher is not at least ``min_gap``
    above the base (no gap to close: a base at 0.997 against a teacher at 1.00 made a change of -0.13 read -43)."""
    if teacher is None or base is None or model is None or teacher - base < max(min_gap, 1e-9):
        return None
    return (model - base) / (teacher - base)
