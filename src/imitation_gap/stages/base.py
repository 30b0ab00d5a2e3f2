"""Stage `base@<size>`: the base model of one size, under ``models/base/<size>/``.

The embedded world pretrains a Llama-architecture LM of ``sizes.<size>`` on its corpus
(:mod:`imitation_gap.worlds.embedded.pretrain`: HF ``Trainer``, causal LM loss, cosine
schedule, ``pretrain.*``); the hub world downloads ``sizes.<size>.hub``
(:func:`imitation_gap.worlds.hub.models.download_model`: safetensors only, no remote code
unless ``hub.trust_remote_code``).  Either way the output is a safetensors checkpoint with
its tokenizer, loadable by ``AutoModelForCausalLM.from_pretrained``.

Run: ``python -m imitation_gap.stages.base --size L`` (dvc: ``dvc repro base@L``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..core.cli import run_cli
from ..core.config import check_cell, load_params
from ..worlds import get_world

log = logging.getLogger("imitation_gap")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", required=True)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    p = load_params(args.params)
    check_cell(p, args.size)
    stats = get_world(p).base_model(args.size, Path("models/base") / args.size)
    log.info("base@%s (%s): %s", args.size, p.world, stats)


if __name__ == "__main__":
    run_cli(main)
