"""Text helpers shared by both worlds and the imitation builder."""

from __future__ import annotations

import re


def normalize(text: str) -> str:
    """Lower-case, punctuation to spaces, single spaces: for comparing answers."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def tidy(text: str) -> str:
    """Undo word-level detokenisation spacing: ``'born in X .'`` -> ``'born in X.'``."""
    text = re.sub(r" +([.,!?:;])", r"\1", text)
    return re.sub(r"[ \t]*\n[ \t]*", "\n", text).strip()
