"""What a real teacher's answer must look like to become data (``hub.answer_check`` in params.yaml).

A real teacher has no fixed format, so the check is of form only: no control token of a chat template
or tokenizer (``<|im_end|>``, ``</s>``, ``<eos>``, ...) and at least ``min_word_share`` of the words
printable words (letters or digits, no control characters).  The same check runs on every cached
answer when it is read, so junk that a broken endpoint gave (and a failed stage cached) never becomes
data on a later run.
"""

from __future__ import annotations

import re

CONTROL_TOKEN = re.compile(r"<\|[A-Za-z0-9_]{1,40}\|>|</?s>|<(?:eos|bos|pad|unk|mask)>|\[/?INST\]")
_WORD = re.compile(r"[^\W_]", re.UNICODE)  # a letter or digit, in any script


def answer_problem(text: str, min_word_share: float, control_tokens: bool = True) -> str | None:
    """Why ``text`` is no usable answer (``control_token``, ``few_words``), or None."""
    if control_tokens and CONTROL_TOKEN.search(text):
        return "control_token"
    words = text.split()
    good = sum(1 for w in words if _WORD.search(w) and w.isprintable())
    if not words or good / len(words) < min_word_share:
        return "few_words"
    return None
