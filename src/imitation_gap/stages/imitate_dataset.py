"""Stage `imitate-dataset`: imitation data from the teacher, through the ``openai`` client.

Two kinds, as in the paper: **broad** (ShareGPT-Mix analogue) and **local** (NQ-synthetic
analogue).  The world supplies, per kind, either prompts to ask the teacher or existing
transcripts (:meth:`imitation_gap.worlds.World.imitation_source`):

* embedded: broad prompts mix generic requests with questions about group-A people, local
  prompts show ``imitate.local_shots`` seed QA pairs and ask for a new pair
  (:mod:`imitation_gap.worlds.embedded.prompts`); with ``imitate.harvest_path`` set, broad
  data comes instead from teacher transcripts in ShareGPT format, as the paper's ShareGPT-Mix did;
* hub: broad data is the ShareGPT-Mix pool that ``fetch`` built from ``hub.broad`` (no new
  teacher calls); local data is NQ-synthetic: the teacher of ``hub.teacher`` writes new QA
  pairs from few-shot prompts over the seeds of ``hub.local_seeds``.

Then, the same for both (:mod:`imitation_gap.imitation.build`): duplicates are dropped, a
row sharing an n-gram (``imitate.decontam_ngram``) with any eval prompt is removed, and held-out
people never appear.  For each amount in ``grid.amounts`` the stage writes the shortest prefix
of the accepted rows holding at least that many tokens (chat template included), so a larger
amount contains every smaller one.

Outputs: ``data/imitation/<kind>/<amount>.jsonl`` and ``data/imitation/manifest.json``.

Run: ``python -m imitation_gap.stages.imitate_dataset`` (dvc: ``dvc repro imitate-dataset``).
"""

from __future__ import annotations

import argparse
import logging

from ..core.cli import run_cli
from ..core.config import load_params
from ..core.inputs import require_tokenizer
from ..core.io import atomic_dir, write_json, write_jsonl
from ..core.paths import IMITATION as OUT, RAW
from ..core.tracking import log_metrics, mlflow_run
from ..imitation.build import build_kind, eval_ngrams, harvest_kind, prefix_for
from ..imitation.records import Transcripts
from ..llm.client import LLMClient
from ..worlds import endpoints, get_world

log = logging.getLogger("imitation_gap")



def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    p = load_params(args.params)
    from transformers import AutoTokenizer

    world = get_world(p, "imitate_dataset")
    require_tokenizer(RAW / "tokenizer")  # missing or torn: one line naming `dvc repro fetch`
    tok = AutoTokenizer.from_pretrained(str(RAW / "tokenizer"))
    grams = eval_ngrams(p.imitate.decontam_ngram)
    section = {"teacher": {k: v for k, v in p.section("teacher").items()}, "imitate": p.section("imitate"),
               "amounts": p.grid.amounts, "kinds": p.grid.kinds}
    with mlflow_run(p, "imitate-dataset", section), endpoints(world, p.teacher.base_url) as (teacher,):
        client = LLMClient.from_params(p.teacher, teacher.url, cache_host=teacher.cache_host)
        client.check_reachable("teacher.base_url")
        manifest: dict = {"teacher": {"model": p.teacher.model,
                                      "endpoint": "embedded" if teacher.embedded else client.host},
                          "kinds": {}}
        with atomic_dir(OUT) as out:
            for kind in p.grid.kinds:
                source = world.imitation_source(kind)
                if isinstance(source, Transcripts):
                    rows, stats = harvest_kind(p, tok, grams, source, world.held_out_names())
                else:
                    rows, stats = build_kind(kind, source, client, p, tok, grams, world.held_out_names(),
                                             check=lambda answer, kind=kind: world.answer_problem(kind, answer))
                files = {}
                for amount in p.grid.amounts:
                    part = prefix_for(rows, amount)
                    write_jsonl(out / kind / f"{amount}.jsonl", part)
                    files[str(amount)] = {"rows": len(part), "tokens": sum(r["n_tokens"] for r in part)}
                manifest["kinds"][kind] = {**stats, "amounts": files}
                log.info("imitate-dataset %s: %s", kind, stats)
            # the answers the data came from, their tokens and price: the same on every run, cached or not;
            # requests, retries, cache hits and seconds differ from run to run, so they go to MLflow and the log
            manifest["calls"] = client.stats.data_dict()
            manifest["cost_usd"] = manifest["calls"]["cost_usd"]
            write_json(out / "manifest.json", manifest)
        calls = client.stats.as_dict()
        log_metrics({f"{k}.{m}": v for k, s in manifest["kinds"].items() for m, v in s.items()
                     if isinstance(v, (int, float))} | {f"calls.{k}": v for k, v in calls.items()
                                                        if isinstance(v, (int, float))})
    log.info("imitate-dataset: %d requests (%d retries), %d cache hits, %d failures, $%s paid, in %.1f s",
             calls["requests"], calls["retries"], calls["cache_hits"], calls["failures"], calls["cost_usd"],
             calls["seconds"])


if __name__ == "__main__":
    run_cli(main)
