"""CI-aware verdicts: a rule's conditions judged at the confidence bounds, not at point means.

Every quantity a rule reads is estimated over the replicated chains (``grid.seeds``): one
value per chain, a mean and a Student-t interval (:func:`estimate`).  A comparison of two
quantities is estimated on their per-chain differences (:func:`difference`); chains are
paired by their seed, so a base model is compared with the imitation models fine-tuned from
it.  A :class:`Condition` ``estimate >= threshold`` (or ``<=``) then has one of four statuses:

* **held**: it holds at the bound that is against it (the lower bound for ``>=``);
* **did not hold**: it fails even at the bound in its favour (the upper bound for ``>=``);
* **inconclusive**: anything between, i.e. the interval straddles the threshold;
* **not measured**: too few chains (< 2) or a missing value; the reason is given.

A rule is the conjunction of its conditions (:func:`combine`): held if every condition held,
did not hold if any did not hold, not measured if any could not be measured, else
inconclusive.  Instrument checks use the same machinery and call "held" a pass.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

HELD, FAILED, INCONCLUSIVE, NOT_MEASURED = "held", "did not hold", "inconclusive", "not measured"


@dataclass(frozen=True)
class Estimate:
    """A quantity over chains: per-chain values, their mean and a two-sided t interval (nan if < 2)."""

    values: tuple[float, ...]
    mean: float
    lo: float
    hi: float
    level: float = 0.95
    why_missing: str = ""  # non-empty when the quantity could not be estimated
    exact: bool = False  # a number without sampling noise (a count in the corpus, a worst case): no CI needed

    @property
    def n(self) -> int:
        return len(self.values)

    def as_dict(self) -> dict:
        return {"mean": _num(self.mean), "lo": _num(self.lo), "hi": _num(self.hi), "n_chains": self.n,
                "values": [_num(v) for v in self.values]}


def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 6)


def missing(why: str, level: float = 0.95) -> Estimate:
    return Estimate((), math.nan, math.nan, math.nan, level, why)


def exact(value: float | None, what: str = "") -> Estimate:
    """A number without sampling noise: its own bounds."""
    if value is None or not math.isfinite(value):
        return missing(f"{what or 'a value'} is missing or not finite")
    v = float(value)
    return Estimate((v,), v, v, v, exact=True)


def estimate(values: list[float | None], level: float = 0.95, what: str = "") -> Estimate:
    """Mean and Student-t interval of per-chain ``values`` (scipy.stats.t); a None or non-finite value
    makes the estimate missing: a diverged run is never averaged."""
    from scipy import stats

    if not values:
        return missing(f"no runs of {what or 'this quantity'}", level)
    if any(v is None or not math.isfinite(v) for v in values):
        return missing(f"{what or 'a value'} is missing or not finite in some chain", level)
    vals = tuple(float(v) for v in values)
    m = statistics.fmean(vals)
    if len(vals) < 2:
        return Estimate(vals, m, math.nan, math.nan, level, "")
    sd = statistics.stdev(vals)
    if sd == 0:
        return Estimate(vals, m, m, m, level, "")
    lo, hi = stats.t.interval(level, len(vals) - 1, loc=m, scale=sd / math.sqrt(len(vals)))
    return Estimate(vals, m, float(lo), float(hi), level, "")


def difference(a: list[float | None], b: list[float | None], level: float = 0.95, what: str = "") -> Estimate:
    """The per-chain difference ``a - b`` (paired by chain), estimated as :func:`estimate` does."""
    if len(a) != len(b):
        return missing(f"{what}: {len(a)} chains against {len(b)}", level)
    if any(x is None for x in (*a, *b)):
        return missing(f"{what or 'a value'} is missing in some chain", level)
    return estimate([x - y for x, y in zip(a, b)], level, what)


def ratio(a: list[float | None], b: list[float | None], level: float = 0.95, what: str = "") -> Estimate:
    """The per-chain ratio ``a / b`` (paired by chain); missing where some ``b`` is 0."""
    if len(a) != len(b):
        return missing(f"{what}: {len(a)} chains against {len(b)}", level)
    if any(x is None for x in (*a, *b)) or any(y == 0 for y in b):
        return missing(f"{what or 'a ratio'} is undefined in some chain (missing value or zero denominator)", level)
    return estimate([x / y for x, y in zip(a, b)], level, what)


@dataclass
class Condition:
    """``estimate <op> threshold`` with ``op`` in ``>=``, ``<=``, ``>``, ``<``; ``text`` says it in words."""

    text: str
    est: Estimate
    op: str
    threshold: float
    status: str = field(init=False)
    why: str = field(init=False, default="")

    def __post_init__(self) -> None:
        if self.op not in (">=", "<=", ">", "<"):
            raise ValueError(f"unknown comparison {self.op!r}")
        e = self.est
        if e.why_missing:
            self.status, self.why = NOT_MEASURED, e.why_missing
            return
        if e.n < 2 and not e.exact:
            self.status, self.why = NOT_MEASURED, f"{e.n} chain: a CI needs at least 2 (grid.seeds)"
            return
        ok = {">=": lambda x: x >= self.threshold, ">": lambda x: x > self.threshold,
              "<=": lambda x: x <= self.threshold, "<": lambda x: x < self.threshold}[self.op]
        against, favour = (e.lo, e.hi) if self.op in (">=", ">") else (e.hi, e.lo)
        if ok(against):
            self.status = HELD
        elif not ok(favour):
            self.status = FAILED
        else:
            self.status = INCONCLUSIVE

    def as_dict(self) -> dict:
        return {"condition": self.text, "op": self.op, "threshold": _num(self.threshold), "status": self.status,
                **({"why": self.why} if self.why else {}), "estimate": self.est.as_dict()}


def combine(conditions: list[Condition]) -> tuple[str, str]:
    """(verdict, why) of a rule that needs every condition."""
    if not conditions:
        return NOT_MEASURED, "no condition could be formed (the grid lacks what the rule compares)"
    statuses = [c.status for c in conditions]
    if FAILED in statuses:
        return FAILED, "; ".join(c.text for c in conditions if c.status == FAILED)
    if NOT_MEASURED in statuses:
        return NOT_MEASURED, "; ".join(c.why for c in conditions if c.status == NOT_MEASURED)
    if INCONCLUSIVE in statuses:
        return INCONCLUSIVE, "the CI of " + "; ".join(c.text for c in conditions if c.status == INCONCLUSIVE) + \
            " straddles its threshold"
    return HELD, ""
