"""`python -m bench` (or `make bench`): measure, then write BENCHMARKS.md and bench/results.json.

    python -m bench                 # the full bench (< 20 min on 2 cores), run from the repo root
    python -m bench --quick         # a tiny smoke run (tests/test_bench.py): minutes -> seconds
    python -m bench --parts train,client --out /tmp/B.md --json /tmp/r.json
    python -m bench --render        # re-write BENCHMARKS.md from bench/results.json, measuring nothing
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

from . import common
from .common import ROOT, run as sh, say, scratch_world

PARTS = ("train", "client", "eval", "pipeline")

_TINY = yaml.safe_load((ROOT / "tests" / "tiny_params.yaml").read_text())  # the tests' tiny params
QUICK_WORLD = {  # --quick: the tests' tiny world, so that the smoke run takes seconds
    "grid": {"amounts": [2500]}, "fetch": _TINY["fetch"], "sizes": {"S": _TINY["sizes"]["S"]},
    "pretrain": {"batch_size": 8}, "sft": {"batch_size": 2},
}
EVAL_MODEL = {"size": "M", "steps": 60}  # the model the eval bench times: base M, pretrained 60 steps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes and 1 repetition: a smoke test, not numbers")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per figure (default 3; --quick 1)")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--json", default=str(ROOT / "bench" / "results.json"))
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory (its path is printed)")
    ap.add_argument("--render", action="store_true",
                    help="measure nothing: re-write --out from the results in --json (after a change to the "
                         "report's text or its extrapolation model; the figures stay those of that run)")
    args = ap.parse_args(argv)
    if args.render:
        from .report import render

        try:
            res = json.loads(Path(args.json).read_text())
        except (OSError, ValueError) as e:
            ap.error(f"--render needs the results of a bench run in --json ({args.json}): {e}. Run `make bench` "
                     "to measure them.")
        Path(args.out).write_text(render(res))
        say(f"bench: wrote {args.out} from {args.json} (measured {res.get('started', '?')})")
        return 0
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    bad = [x for x in parts if x not in PARTS]
    if bad:
        ap.error(f"unknown part(s) {bad}; choose from {PARTS}")
    reps = args.reps or (1 if args.quick else 3)
    os.environ.update({k: v for k, v in common.env().items()
                       if k in ("TOKENIZERS_PARALLELISM", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                                "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "DVC_NO_ANALYTICS")})
    t_start = time.perf_counter()
    started = dt.datetime.now(dt.timezone.utc)
    res: dict = {"started": started.isoformat(timespec="seconds"), "quick": args.quick, "reps": reps,
                 "parts": parts, "machine": common.machine()}
    cores = res["machine"]["usable_cpus"] or 1
    snaps = {"start": common.cpu_snapshot()}  # CPU that other work took while the bench ran, per part
    say(f"bench: parts {parts}, {reps} repetition(s){' (quick)' if args.quick else ''}")
    tmp = Path(tempfile.mkdtemp(prefix="ig-bench-"))
    try:
        from imitation_gap.core.config import load_params

        if any(x in parts for x in ("train", "client", "eval")):
            say("setup: scratch world (stages fetch and imitate-dataset, default params)")
            world = tmp / "world"
            over = QUICK_WORLD if args.quick else {}
            t = time.perf_counter()
            scratch_world(world, over, imitate=False)
            t_fetch = time.perf_counter() - t
            t = time.perf_counter()
            sh([sys.executable, "-m", "imitation_gap.stages.imitate_dataset"], world)
            res["setup"] = {"fetch_stage_s": t_fetch, "imitate_stage_s": time.perf_counter() - t}
            p = load_params(world / "params.yaml")
        snaps["train"] = common.cpu_snapshot()
        if "train" in parts:
            from . import train

            sizes = ["S"] if args.quick else list(p.grid.sizes)
            res["train"] = train.run(world, p, sizes, reps, quick=args.quick)
        snaps["client"] = common.cpu_snapshot()
        if "client" in parts:
            from . import client

            res["client"] = client.run(world, p, reps, n=24 if args.quick else 160, quick=args.quick)
        snaps["eval"] = common.cpu_snapshot()
        if "eval" in parts:
            from . import evalbench

            size = "S" if args.quick else EVAL_MODEL["size"]
            steps = 4 if args.quick else EVAL_MODEL["steps"]
            say(f"eval: pretrain the model to evaluate (stage base@{size}-0, {steps} steps)")
            import yaml

            raw = yaml.safe_load((world / "params.yaml").read_text())
            raw["pretrain"]["steps"] = steps
            (world / "params_eval.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
            t = time.perf_counter()
            sh([sys.executable, "-m", "imitation_gap.stages.base", "--size", size, "--params", "params_eval.yaml"], world)
            wall = time.perf_counter() - t
            pe = load_params(world / "params_eval.yaml")
            res["eval"] = evalbench.run(world, pe, world / "models/base" / f"{size}-s0", reps,
                                        batch_sizes=(8, 32) if args.quick else evalbench.BATCH_SIZES,
                                        batch_limit=4 if args.quick else 40)
            res["eval"]["base_stage"] = {"size": size, "steps": steps, "wall_s": wall}
        snaps["pipeline"] = common.cpu_snapshot()
        if "pipeline" in parts:
            from . import pipeline

            res["pipeline"] = pipeline.run(tmp / "pipeline", reps, quick=args.quick)
    finally:
        if args.keep:
            say(f"bench: scratch directory kept: {tmp}")
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    res["total_s"] = time.perf_counter() - t_start
    res["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    snaps["end"] = common.cpu_snapshot()
    names = list(snaps)
    res["machine"]["other_cpu"] = common.other_cpu(snaps["start"], snaps["end"], cores)
    res["machine"]["other_cpu_by_part"] = {  # from the snapshot before each part to the next one
        n: common.other_cpu(snaps[n], snaps[names[i + 1]], cores) for i, n in enumerate(names[1:-1], 1)
        if n in parts}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    # in the order measured (not sorted): `--render` then writes the tables in the same order
    Path(args.json).write_text(json.dumps(res, indent=1, default=str) + "\n")
    from .report import render

    Path(args.out).write_text(render(res))
    say(f"bench: done in {res['total_s'] / 60:.1f} min: wrote {args.out} and {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
