"""Numbers from numerical fits, to the precision their method supports.

An optimiser's or a linear solver's last bits depend on the CPU's BLAS kernels and instruction paths: the same
models and data on another CPU family gave the same report but a length-controlled win rate and regression
bounds that differed in the 15th digit.  Written to 6 significant digits (:data:`FIT_DIGITS`), a fit's
outputs are the same bytes on any machine that trains the same models, except for a value that lies within
one part in 10^15 of a rounding boundary.
"""

from __future__ import annotations

import math

FIT_DIGITS = 6


def fit_value(x: float | None, digits: int = FIT_DIGITS) -> float | None:
    """``x`` rounded to ``digits`` significant digits (None, 0, inf and nan as they are)."""
    if x is None or x == 0 or not math.isfinite(x):
        return x
    return float(f"{x:.{digits - 1}e}")
