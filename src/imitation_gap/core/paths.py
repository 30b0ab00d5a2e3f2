"""Where the pipeline's data lives, relative to the repository root (every stage runs there; ``dvc.yaml``
lists the same paths as each stage's deps and outs)."""

from __future__ import annotations

from pathlib import Path

INPUTS = Path("data/inputs")  # hand-made inputs (data.dvc)
RAW = Path("data/raw")  # stage fetch: world, corpus, eval sets, tokenizer (embedded); data sets (hub)
IMITATION = Path("data/imitation")  # stage imitate-dataset: <kind>/<amount>.jsonl and manifest.json
MANIFEST = IMITATION / "manifest.json"
BASE_MODELS = Path("models/base")  # stage base: <size>-s<chain>/
SFT_MODELS = Path("models/sft")  # stage sft: <size>-<kind>-<amount>-s<chain>/
EVAL = Path("eval")  # eval stages: <run>/ (answers, judgements, samples)
RUNS = Path("metrics/runs")  # eval stages: <run>.json
