"""Memory of a model and a batch, estimated before they are built: a stage that cannot fit refuses in one line
with the numbers (a :class:`~imitation_gap.core.errors.ConfigError`), instead of the allocator failing
half-way (``sizes.S.hidden_size: 10000000`` asked for 17 GB at the first tensor).

The estimate is of training in float32 with AdamW: 16 bytes per parameter (weights, gradients, two
moments) plus the activations a step keeps for the backward pass (a generous per-token bound, the
attention matrices and the logits included).  It is meant to catch sizes that can never fit, so it
refuses only what exceeds the memory the machine has in all (not what is free right now).
"""

from __future__ import annotations

import os

from .errors import ConfigError

GIB = 2 ** 30


def machine_bytes() -> int:
    """This machine's physical memory (bytes)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2 ** 62  # unknown: never refuse


def llama_params(vocab: int, hidden: int, intermediate: int, layers: int, tied: bool = True) -> int:
    """Parameters of a Llama decoder (attention with as many key/value heads as heads)."""
    per_layer = 4 * hidden * hidden + 3 * hidden * intermediate + 2 * hidden
    return vocab * hidden * (1 if tied else 2) + layers * per_layer + hidden


def training_bytes(vocab: int, hidden: int, intermediate: int, layers: int, heads: int, batch: int,
                   seq: int) -> tuple[int, int]:
    """(bytes of weights and optimizer state, bytes of one step's activations), float32 with AdamW."""
    weights = 16 * llama_params(vocab, hidden, intermediate, layers)
    tokens = batch * seq
    per_layer = tokens * (16 * hidden + 3 * intermediate) + batch * heads * seq * seq * 2
    activations = 4 * (layers * per_layer + 3 * tokens * vocab)
    return weights, activations


def check_fits(what: str, weights: int, activations: int, fix: str) -> None:
    """Refuse (one line, the numbers and ``fix``) when ``weights + activations`` exceed this machine's memory."""
    have = machine_bytes()
    need = weights + activations
    if need > have:
        raise ConfigError(f"{what} needs ~{need / GIB:,.1f} GiB of memory ({weights / GIB:,.1f} GiB of weights and "
                          f"optimizer state, {activations / GIB:,.1f} GiB of activations per step), and this "
                          f"machine has {have / GIB:,.1f} GiB; {fix}")
