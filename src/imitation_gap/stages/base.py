"""Stage `base@<size>-<seed>`: the base model of one size and replicated chain, under ``models/base/<size>-s<seed>/``.

The embedded world pretrains a Llama-architecture LM of ``sizes.<size>`` on its corpus
(:mod:`imitation_gap.worlds.embedded.pretrain`: HF ``Trainer``, causal LM loss, cosine
schedule, ``pretrain.*``); the hub world downloads ``sizes.<size>.hub``
(:func:`imitation_gap.worlds.hub.models.download_model`: safetensors only, no remote code
unless ``hub.trust_remote_code``).  Either way the output is a safetensors checkpoint with
its tokenizer, loadable by ``AutoModelForCausalLM.from_pretrained``.

A chain (``--seed``, one of ``grid.seeds``) replicates pretraining: each chain's base model has
its own initialisation and data order, and every imitation model of that chain is fine-tuned
from it, so the report's intervals over chains cover both sources of variance.  (A downloaded
hub model is the same for every chain.)

Run: ``python -m imitation_gap.stages.base --size L --seed 0`` (dvc: ``dvc repro base@L-0``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..core.cli import run_cli
from ..core.config import base_dir, check_cell, load_params
from ..worlds import get_world

log = logging.getLogger("imitation_gap")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", required=True)
    ap.add_argument("--seed", type=int, default=0, help="the replicated chain (one of grid.seeds)")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    p = load_params(args.params)
    check_cell(p, args.size)
    stats = get_world(p, "base").base_model(args.size, args.seed, base_dir(args.size, args.seed))
    log.info("base@%s-%d (%s): %s", args.size, args.seed, p.world, stats)


if __name__ == "__main__":
    run_cli(main)
