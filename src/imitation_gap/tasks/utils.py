"""Scoring of the generative tasks (lm-eval ``process_results`` hooks).

An answer is right when, after lower-casing and dropping punctuation, it contains the
gold answer as whole words and names no other candidate of the same kind (so a
hedged "I think Cestra." counts, and "Cestra or Pelmar" does not).
"""

import re


def _norm(text):
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _says(pred, value):
    return f" {_norm(value)} " in f" {pred} "


def process_qa(doc, results):
    pred = _norm(results[0])
    right = _says(pred, doc["answer"]) and not any(
        _says(pred, c) for c in doc["candidates"] if c != doc["answer"])
    return {"acc": float(right)}


def process_skill(doc, results):
    pred = _norm(results[0])
    gold = _norm(doc["answer"])
    right = _says(pred, gold) and len(pred.split()) <= len(gold.split()) + 4
    return {"acc": float(right)}
