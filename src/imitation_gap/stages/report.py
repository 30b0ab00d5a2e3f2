"""Stage `report`: the paper's tables, figures and findings from every run of the grid.

Reads ``metrics/runs/*.json`` for the cells of the current ``grid`` (stale files of
cells no longer in the grid are ignored) and writes:

* ``metrics/summary.json``: per cell, the mean over chains of every metric with a 95%
  confidence interval, the "gap closed" per task, the instrument checks (``instruments``),
  the findings' CI-aware verdicts, and what the raters reward (``rater_rewards``);
* ``REPORT.md``: the instrument checks first, then the F1-F5 findings with their written
  rules, our numbers and the paper's beside them, what raters reward, tables, figures;
* ``plots/*.png`` (matplotlib) and ``plots/*.csv`` (for ``dvc plots``).

To MLflow it logs ``REPORT.md``, the figures under ``plots/`` and one model card per
model under ``model_cards/`` (see :mod:`imitation_gap.analysis.cards`).  The statistics,
finding rules, figures and text are :mod:`imitation_gap.analysis`; this stage reads the runs,
applies them, and writes the outputs.

Confidence intervals: with two or more chains (``grid.seeds``), a Student-t interval over the
chains; with one, a Wilson score interval over the items of that one run (for rates), which
shows item-sampling noise only (every table says which), and the checks and findings are
"not measured": a verdict needs the variance of whole chains.  Rules and thresholds:
``report`` in params.yaml; the logic: :mod:`imitation_gap.analysis.verdict`.

Run: ``python -m imitation_gap.stages.report`` (dvc: ``dvc repro report``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..analysis.cards import log_model_cards
from ..analysis.checks import instrument_checks
from ..analysis.findings import findings
from ..analysis.rewards import rewards
from ..analysis.plots import PLOTS, plot
from ..analysis.render import examples, headline, label, render
from ..analysis.stats import TASKS, aggregate, finite, gap_closed
from ..core.cli import run_cli
from ..core.config import Params, load_params, run_name
from ..core.inputs import require_json
from ..core.io import write_json, write_text_atomic
from ..core.paths import RAW, RUNS
from ..core.tracking import log_metrics, mlflow_run
from ..worlds import get_world

log = logging.getLogger("imitation_gap")



def _read_json(path: Path) -> dict:
    return require_json(path) if path.exists() else {}


def load(p: Params) -> dict:
    def read(run):
        f = RUNS / f"{run}.json"
        if not f.exists():
            raise FileNotFoundError(f"{f} is missing: run `dvc repro` (the eval stage of {run})")
        return require_json(f)  # truncated or empty: one line naming the eval stage that rebuilds it

    data = {"teacher": read("teacher"), "cells": {},
            "base": {s: [read(run_name(s, seed=c)) for c in p.grid.seeds] for s in p.grid.sizes}}
    for s in p.grid.sizes:
        for k in p.grid.kinds:
            for a in p.grid.amounts:
                data["cells"][(s, k, a)] = [read(run_name(s, k, a, seed)) for seed in p.grid.seeds]
    return data


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    p = load_params(args.params)
    with mlflow_run(p, "report", {"grid": p.section("grid")}):
        summary = build(p)
        log_metrics({"headline": summary["headline"]})
        import mlflow

        mlflow.log_artifact("REPORT.md")
        mlflow.log_artifacts(str(PLOTS), artifact_path="plots")
        cards = log_model_cards(p, get_world(p, "report"))  # model_cards/<run>.json and .md: params, data manifest, metrics
        log.info("report: logged %d model cards to MLflow", len(cards))
    log.info("report: findings %s", summary["findings"])


def build(p: Params) -> dict:
    """Aggregate, plot and write the report; return the summary."""
    data = load(p)
    agg = {"teacher": aggregate([data["teacher"]]), "tasks": data["teacher"].get("capability_tasks", {}),
           "base": {s: aggregate(runs) for s, runs in data["base"].items()},
           "cells": {c: aggregate(runs) for c, runs in data["cells"].items()}}
    gaps = {}
    for (s, k, a), v in agg["cells"].items():
        gaps[label((s, k, a))] = {t: gap_closed(v.get(f"capability.{t}", {}).get("mean"),
                                                agg["base"][s].get(f"capability.{t}", {}).get("mean"),
                                                agg["teacher"].get(f"capability.{t}", {}).get("mean"),
                                                p.report.gap_min)
                                  for t in TASKS}
    world = get_world(p, "report")
    chains = {"sizes": p.grid.sizes, "amounts": p.grid.amounts, "teacher": data["teacher"], "base": data["base"],
              "cells": data["cells"], "fetch": _read_json(RAW / "stats.json")}
    r = p.report
    checks = instrument_checks(chains, r.checks, r.level)
    finds = findings(chains, r.findings, r.level, world.f5_metrics)
    every_run = [m for runs in data["base"].values() for m in runs] + \
        [m for runs in data["cells"].values() for m in runs]
    paid = rewards(every_run, r.level)
    figs = plot(p, agg, paid)
    exs = examples(p, world)
    summary = {"grid": {"sizes": p.grid.sizes, "kinds": p.grid.kinds, "amounts": p.grid.amounts,
                        "seeds": p.grid.seeds},
               "teacher": agg["teacher"], "base": agg["base"],
               "cells": {label(c): v for c, v in agg["cells"].items()}, "gap_closed": gaps,
               "instruments": {c["id"]: c["status"] for c in checks},
               "findings": {f["id"]: f["verdict"] for f in finds},
               "checks_detail": checks, "findings_detail": finds, "rater_rewards": paid,
               "headline": headline(p, agg)}
    write_json("metrics/summary.json", finite(summary))
    # the same bytes in the cached plots/: `dvc push` sends them, so the run cache can restore the git-tracked
    # metrics/summary.json (cache: false) in another clone, as for eval/<run>/metrics.json (docs/cluster.md)
    write_json("plots/summary.json", finite(summary))
    write_text_atomic("REPORT.md", render(p, agg, gaps, checks, finds, paid, figs, exs))
    return summary


if __name__ == "__main__":
    run_cli(main)
