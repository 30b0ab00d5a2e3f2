"""Stage `fetch`: everything the later stages read, under ``data/raw/``.

The embedded world generates itself from ``seed`` and ``fetch.*``
(:mod:`imitation_gap.worlds.embedded.corpus`):

* ``world.json``: every person, their group (A/B/C) and facts;
* ``corpus.jsonl``: the pretraining "web": biographies of everyone in several
  phrasings, QA pairs about group C (some hedged), word-reversal examples;
* ``eval/*.jsonl``: the capability tasks about group B (QA, multiple choice), the skill
  task, their few-shot pools, and the preference-eval prompts;
* ``tokenizer/``: a word-level tokenizer with a chat template, loadable by
  ``AutoTokenizer.from_pretrained``.

The hub world downloads the data sets of ``hub.*`` (:mod:`imitation_gap.worlds.hub.sources`):
the ShareGPT-Mix pool, the NQ seeds, the Koala prompts, the decontamination questions and
the token-counting tokenizer.

Run: ``python -m imitation_gap.stages.fetch`` (dvc: ``dvc repro fetch``).
"""

from __future__ import annotations

import argparse
import logging

from ..core.cli import run_cli
from ..core.config import load_params
from ..worlds import get_world

log = logging.getLogger("imitation_gap")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    p = load_params(args.params)
    stats = get_world(p, "fetch").fetch()
    log.info("fetch (%s): %s", p.world, stats)


if __name__ == "__main__":
    run_cli(main)
