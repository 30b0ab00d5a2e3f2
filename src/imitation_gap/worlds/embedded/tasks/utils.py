"""Prompts and scoring of our lm-eval tasks (``doc_to_*`` and ``process_results`` hooks).

The prompts are plain functions rather than Jinja strings: lm-eval compiles a Jinja
template on every call (~0.7 ms), ~4,700 times per evaluated model with 3-shot contexts.

An answer is right when, after lower-casing and dropping punctuation, it contains the
gold answer as whole words and names no other candidate of the same kind (so a
hedged "I think Cestra." counts, and "Cestra or Pelmar" does not).
"""

import re


def doc_to_text(doc):
    return f"Question: {doc['question']}\nAnswer:"


def doc_to_target(doc):
    return str(doc["answer"])


def doc_to_choice(doc):
    return [str(c) for c in doc["choices"]]


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


def store_prompt(doc):
    return doc["prompt"]
