"""Training that diverged: a non-finite loss, gradient norm or weight, found before a model is saved.

The HF ``Trainer`` replaces a NaN or inf loss in its logs by the mean of the earlier ones
(``logging_nan_inf_filter``), so a run whose weights are all NaN still reports a plausible
``train_loss``; the gradient norms it logs, and the weights themselves, show it.
"""

from __future__ import annotations

import math

from .errors import DivergedError


def divergence(model, log_history: list[dict]) -> str | None:
    """What is not finite after training (the first logged loss or gradient norm, or weight tensors), or None."""
    for rec in log_history:
        for key in ("loss", "grad_norm", "train_loss"):
            v = rec.get(key)
            if isinstance(v, (int, float)) and not math.isfinite(v):
                return f"{key} {v} at step {rec.get('step', '?')}"
    import torch

    params = list(model.named_parameters())
    bad = [name for name, w in params if not bool(torch.isfinite(w.detach()).all())]
    if bad:
        return f"{len(bad)} of {len(params)} weight tensors hold NaN or inf (e.g. {bad[0]})"
    return None


def check_finite(model, log_history: list[dict], run: str, lr_key: str, lr: float) -> None:
    """Raise :class:`DivergedError` (one line, exit 2) if training ``run`` diverged; the caller writes no model."""
    why = divergence(model, log_history)
    if why:
        raise DivergedError(f"{run}: training diverged ({why}); no model was written. The likely cause is "
                            f"{lr_key} = {lr:g}, too high for this model: lower it (e.g. to {lr / 10:g}) and re-run")
