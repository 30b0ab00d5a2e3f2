"""Where the pipeline's data lives, relative to the repository root (every stage runs there; ``dvc.yaml``
lists the same paths as each stage's deps and outs)."""

from __future__ import annotations

import re
from pathlib import Path

INPUTS = Path("data/inputs")  # hand-made inputs (data.dvc)
RAW = Path("data/raw")  # stage fetch: world, corpus, eval sets, tokenizer (embedded); data sets (hub)
IMITATION = Path("data/imitation")  # stage imitate-dataset: <kind>/<amount>.jsonl and manifest.json
MANIFEST = IMITATION / "manifest.json"
BASE_MODELS = Path("models/base")  # stage base: <size>-s<chain>/
SFT_MODELS = Path("models/sft")  # stage sft: <size>-<kind>-<amount>-s<chain>/
EVAL = Path("eval")  # eval stages: <run>/ (answers, judgements, samples)
RUNS = Path("metrics/runs")  # eval stages: <run>.json


_PRODUCERS = [  # (path pattern, stage), first match wins
    (r"data/raw(/|$)", "fetch"),
    (r"models/base/(?P<size>[^/]+)-s(?P<seed>\d+)(/|$)", "base@{size}-{seed}"),
    (r"data/imitation(/|$)", "imitate-dataset"),
    (r"models/sft/(?P<size>[^/-]+)-(?P<kind>[^/-]+)-(?P<amount>\d+)-s(?P<seed>\d+)(/|$)",
     "sft@{size}-{kind}-{amount}-{seed}"),
    (r"(metrics/runs|eval)/teacher(\.json|/|$)", "eval-teacher"),
    (r"(metrics/runs|eval)/(?P<size>[^/-]+)-base-s(?P<seed>\d+)(\.json|/|$)", "eval-base@{size}-{seed}"),
    (r"(metrics/runs|eval)/(?P<size>[^/-]+)-(?P<kind>[^/-]+)-(?P<amount>\d+)-s(?P<seed>\d+)(\.json|/|$)",
     "eval-sft@{size}-{kind}-{amount}-{seed}"),
]


def _match(path: str | Path) -> tuple[str, str] | None:
    rel = Path(path).as_posix().lstrip("./")
    for pattern, stage in _PRODUCERS:
        m = re.match(pattern, rel)
        if m:
            return stage.format(**m.groupdict()), m.group(0).rstrip("/")
    return None


def producer(path: str | Path) -> str | None:
    """The dvc.yaml stage that writes ``path`` (None: no stage does, e.g. a hand-made input)."""
    got = _match(path)
    return got[0] if got else None


def rebuild_hint(path: str | Path) -> str:
    """How to get a whole ``path`` back: the stage that writes it, or DVC's cached copy of its output."""
    got = _match(path)
    if got is None:
        return f"restore it (`dvc checkout {path}` or `git checkout {path}`)"
    stage, out = got
    if out.startswith("metrics/"):  # git-tracked metrics (cache: false)
        return f"rebuild it with `dvc repro {stage}` (or restore it with `git checkout {out}`)"
    return f"rebuild it with `dvc repro {stage}` (or restore it with `dvc checkout {out}`)"
