"""Instrument checks: the mechanisms that the paper's argument assumes real LMs have, measured.

The paper argues that imitation copies a teacher's style but not its knowledge.  That argument
is about models that (1) store facts, more of them as they grow, (2) can extract what they
store when asked, (3) copy the subject of a question from their context, (4) know the
teacher's register before imitation, (5) converge when fine-tuned, (6) keep what pretraining
taught through light fine-tuning, and (7) have a skill whose loss would show.  A miniature
that lacks one of these can neither confirm nor refute a finding, so the report measures
each, with thresholds fixed in ``params.yaml`` (``checks``) before any finding was looked
at, and shows them before the findings.

Each check is a list of CI-aware conditions (:mod:`imitation_gap.analysis.verdict`): it
passes when every condition holds at the confidence bound against it.  "The larger sizes"
are every size in ``grid.sizes`` but the first (the smallest): the paper's argument is about
models that have a capability, and the smallest base stands in for GPT-2, which has little.
"""

from __future__ import annotations

import math

from ..core.io import lookup
from .verdict import FAILED, HELD, Condition, combine, difference, estimate, exact, ratio

PASS = {"held": "pass", "did not hold": "fail"}


def _get(run: dict | None, path: str):
    """The number at dotted ``path`` of a run's metrics (None if missing or not a number)."""
    d = lookup(run, path)
    return d if isinstance(d, (int, float)) and not isinstance(d, bool) else None


def values(runs: list[dict], path: str) -> list[float | None]:
    return [_get(r, path) for r in runs]


def copy_precision(run: dict) -> float | None:
    """Of the answers that name anyone, the share that name the person asked about."""
    s, o = _get(run, "style.names_subject_rate"), _get(run, "style.names_other_rate")
    if s is None or o is None:
        return None
    return s / (s + o) if s + o > 0 else None


def instrument_checks(data: dict, c, level: float) -> list[dict]:
    """Every check as ``{id, title, mechanism, status, why, conditions}``.

    ``data``: ``base`` {size: [metrics per chain]}, ``cells`` {(size, kind, amount): [per chain]},
    ``fetch`` (data/raw/stats.json), ``sizes`` (grid order), ``amounts``; ``c``: params ``checks``."""
    sizes, base, cells = data["sizes"], data["base"], data["cells"]
    large = sizes[1:]
    top = max(data["amounts"]) if data["amounts"] else None
    kinds = sorted({k for (_, k, _) in cells})
    out = []

    def check(cid: str, title: str, mechanism: str, conds: list[Condition], why_none: str = "") -> None:
        status, why = combine(conds) if conds else ("not measured", why_none)
        out.append({"id": cid, "title": title, "mechanism": mechanism,
                    "status": PASS.get(status, status), "why": why, "conditions": [x.as_dict() for x in conds]})

    def est(vals, what):
        return estimate(vals, level, what)

    # 1. storage grows with size, and the largest base stores most facts
    conds = []
    if sizes:
        conds.append(Condition(f"knowledge probe of {sizes[-1]} base >= {c.storage_min_largest}",
                               est(values(base[sizes[-1]], "capability.store"), f"{sizes[-1]} storage"),
                               ">=", c.storage_min_largest))
    for small, big in zip(sizes, sizes[1:]):
        conds.append(Condition(f"knowledge probe: {big} base - {small} base > 0",
                               difference(values(base[big], "capability.store"),
                                          values(base[small], "capability.store"), level, "storage"), ">", 0.0))
    check("storage", "Storage grows with size",
          "a knowledge probe on held-out people (complete a biography sentence) rises with size, and the largest "
          "base stores most facts", conds)

    # 2. extraction: base few-shot QA is a fair share of what the base stores
    conds = [Condition(f"{s} base: QA / knowledge probe >= {c.extraction_min_share}",
                       ratio(values(base[s], "capability.qa"), values(base[s], "capability.store"), level,
                             f"{s} extraction"), ">=", c.extraction_min_share) for s in large]
    check("extraction", "Stored facts can be extracted",
          "few-shot QA on held-out people answers a fair share of what the base stores", conds,
          "needs two sizes or more")

    # 3. copying: the base names the asked subject; imitation models almost always, and rarely anyone else
    conds = [Condition(f"{s} base: of answers naming someone, share naming the person asked >= {c.copy_base_min}",
                       est([copy_precision(r) for r in base[s]], f"{s} base copying"), ">=", c.copy_base_min)
             for s in large]
    if "broad" in kinds and top is not None:
        for s in large:
            runs = cells.get((s, "broad", top), [])
            conds.append(Condition(f"{s}+broad@{top}: names the person asked >= {c.copy_imitation_min}",
                                   est(values(runs, "style.names_subject_rate"), "copying"), ">=",
                                   c.copy_imitation_min))
            conds.append(Condition(f"{s}+broad@{top}: names someone else <= {c.copy_imitation_max_other}",
                                   est(values(runs, "style.names_other_rate"), "naming others"), "<=",
                                   c.copy_imitation_max_other))
    check("copying", "Names are copied from the question",
          "asked about a person in chat, a model writes that person's name, not a memorised one", conds,
          "needs two sizes or more")

    # 4. the teacher's style is known before SFT
    conds = []
    counts = (data.get("fetch") or {}).get("style_phrase_counts") or {}
    if counts:
        least = min(counts, key=counts.get)
        conds.append(Condition(f"every teacher phrase occurs in pretraining >= {c.style_min_phrase_count} times "
                               f"(least: {least!r})", exact(counts[least]), ">=", c.style_min_phrase_count))
    vocab = (data.get("fetch") or {}).get("vocab_size")
    initial = [v for runs in cells.values() for v in values(runs, "train.initial_loss")]
    if vocab and initial:
        worst = max((v for v in initial if v is not None), default=math.nan)
        conds.append(Condition(f"first SFT loss of every imitation run < ln(vocabulary) = {math.log(vocab):.2f} "
                               f"(worst: {worst:.2f})", exact(None if None in initial else worst, "a first SFT loss"),
                               "<", math.log(vocab)))
    check("style_prior", "The style is known before SFT",
          "the teacher's phrases and the chat format occur in pretraining text, so imitation starts from a model "
          "that knows them (the paper's base was already 57% authoritative)", conds,
          "needs data/raw/stats.json and SFT losses")

    # 5. SFT converges
    conds = []
    if top is not None:
        for k in kinds:
            for s in sizes:
                conds.append(Condition(f"{s}+{k}@{top}: training loss after SFT <= {c.sft_max_final_loss}",
                                       est(values(cells.get((s, k, top), []), "train.final_loss"), "final loss"),
                                       "<=", c.sft_max_final_loss))
        if "broad" in kinds:
            for s in large:
                conds.append(Condition(f"{s}+broad@{top}: teacher-style rate (real phrases) >= {c.sft_min_style}",
                                       est(values(cells.get((s, "broad", top), []), "style.teacher_style_rate"),
                                           "style"), ">=", c.sft_min_style))
    check("convergence", "SFT converges",
          "fine-tuning fits the imitation data and takes on the teacher's register, judged by its phrases", conds,
          "needs imitation runs")

    # 6. retention: after the largest broad amount, storage and skill stay close to the base's
    conds = []
    if "broad" in kinds and top is not None:
        for s in large:
            runs = cells.get((s, "broad", top), [])
            for task, name in (("store", "knowledge probe"), ("skill", "skill")):
                conds.append(Condition(f"{s}+broad@{top}: {name} / base's >= {c.retention_min_share}",
                                       ratio(values(runs, f"capability.{task}"), values(base[s], f"capability.{task}"),
                                             level, f"{s} {name} retention"), ">=", c.retention_min_share))
    check("retention", "Light imitation leaves what pretraining taught",
          "after the largest broad amount, the knowledge probe and the skill stay near the base's (the paper's "
          "Figure 4: MMLU and HumanEval near the base model's)", conds, "needs broad imitation runs")

    # 7. a live skill task
    conds = [Condition(f"{s} base skill >= {c.skill_min_base}", est(values(base[s], "capability.skill"),
                                                                     f"{s} skill"), ">=", c.skill_min_base)
             for s in large]
    check("skill", "The skill task is live",
          "the base solves enough of the skill task (no facts needed) for a drop to be measurable", conds,
          "needs two sizes or more")
    return out


__all__ = ["instrument_checks", "copy_precision", "HELD", "FAILED"]
