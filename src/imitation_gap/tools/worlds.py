"""The default study on other worlds: the robustness appendix (``docs/robustness.md``).

A finding that holds only on the default world's seed is tuned, not reproduced.  This runs
the whole default grid again on worlds the study was not developed on: another ``seed``
(other people, other facts, another corpus) with the people counts of every group scaled
(``--scales``: 0.5 = half as many people, 1.5 = half again as many), each in a scratch clone
of this repository at ``HEAD`` with `make run`'s runner, then writes every world's instrument
checks and findings, with their numbers, side by side.

Run (each world takes about as long as ``make run``)::

    python -m imitation_gap.tools.worlds --worlds 1:0.5 2:1.5 --out docs/robustness.md

``--keep DIR`` keeps the scratch clones (their ``REPORT.md``, metrics and models) under DIR;
``--render-only --keep DIR`` writes the appendix again from clones kept there, without running.
The default world's column comes from this checkout's ``metrics/summary.json`` (and its wall
time is ``make run``'s, in the README), read each time the appendix is written, so results
committed while the other worlds run still make it in.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from ..core.cli import setup_logging
from ..core.io import write_text_atomic

log = logging.getLogger("imitation_gap")
GROUPS = ("n_people_a", "n_people_b", "n_people_c")


def world_params(params: dict, seed: int, scale: float) -> dict:
    """``params`` with another world seed and every group's people count scaled (eval sizes kept within reach)."""
    p = json.loads(json.dumps(params))
    p["seed"] = seed
    f = p["fetch"]
    for g in GROUPS:
        f[g] = max(2, round(f[g] * scale))
    facts_b = 5 * f["n_people_b"]  # five attributes per held-out person
    f["n_eval_qa"] = min(f["n_eval_qa"], facts_b)
    f["n_eval_mc"] = min(f["n_eval_mc"], facts_b)
    return p


def run_world(root: Path, seed: int, scale: float, jobs: int, work: Path, keep: bool = True) -> dict:
    """Clone ``root`` at HEAD into ``work``, set the world, run the pipeline; return its summary and wall time."""
    subprocess.run(["git", "clone", "-q", str(root), str(work)], check=True)
    params = yaml.safe_load((work / "params.yaml").read_text())
    (work / "params.yaml").write_text(yaml.safe_dump(world_params(params, seed, scale), sort_keys=False))
    env = dict(os.environ)
    env.pop("DVC_ROOT", None)
    env["PYTHONPATH"] = str(work / "src")  # the clone's code, not the checkout the venv's editable install names
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")  # this env's dvc and python
    subprocess.run(["dvc", "pull", "-q", "data.dvc"], cwd=work, check=True, env=env)
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "imitation_gap.runner.parallel", "--jobs", str(jobs)], cwd=work, env=env)
    wall = time.time() - t0
    if r.returncode:
        raise SystemExit(f"the world seed={seed} scale={scale} failed (exit {r.returncode}); its logs are in "
                         f"{work}/.dvc/tmp/repro-logs/" + ("" if keep else " (removed when this command ends: "
                                                            "run it with --keep DIR to keep them)"))
    return kept_world(work, seed, scale) | {"wall_s": round(wall)}


def _run_wall(work: Path) -> float | None:
    """Wall seconds of the last pipeline run in ``work`` (the runner's summary), or None."""
    f = work / ".dvc" / "tmp" / "repro-logs" / "summary.json"
    try:
        return json.loads(f.read_text()).get("wall_s")
    except (OSError, ValueError):
        return None


def kept_world(work: Path, seed: int, scale: float) -> dict:
    """A world's column from a clone that ``run_world`` left under ``--keep``."""
    summary = work / "metrics" / "summary.json"
    if not summary.exists():
        raise SystemExit(f"{summary} does not exist: run this world first (without --render-only), with --keep "
                         f"{work.parent}")
    fetch = yaml.safe_load((work / "params.yaml").read_text())["fetch"]
    return {"seed": seed, "scale": scale, "wall_s": _run_wall(work), "people": {g: fetch[g] for g in GROUPS},
            "summary": json.loads(summary.read_text())}


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True).stdout.strip()


def default_world(root: Path) -> dict | None:
    """The default world's column: this checkout's committed results, or None if it has none."""
    if not (root / "metrics" / "summary.json").exists():
        return None
    params = yaml.safe_load((root / "params.yaml").read_text())
    return {"name": f"default (seed {params['seed']})", "wall_s": None, "wall": "`make run`'s, in the README",
            "commit": _git(root, "log", "-1", "--format=%h", "--", "metrics/summary.json"),
            "summary": json.loads((root / "metrics" / "summary.json").read_text()),
            "people": {g: params["fetch"][g] for g in GROUPS}}


def machine() -> str:
    """The CPU model and core count: chains are deterministic per machine type, not across types."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def _num(e: dict | None) -> str:
    if not e or e.get("mean") is None:
        return "n/a"
    if e.get("lo") is None:
        return f"{e['mean']:.2f}"
    return f"{e['mean']:.2f} [{e['lo']:.2f}, {e['hi']:.2f}]"


def render(worlds: list[dict], provenance: str = "") -> str:
    """The appendix: one column per world, every check and finding with its numbers."""
    head = ["world"] + [w["name"] for w in worlds]
    L = ["# Robustness: the default study on other worlds", "",
         "Written by `python -m imitation_gap.tools.worlds` (see its docstring). Each column is the whole default "
         "grid of `params.yaml`, run from scratch in a clone of the commit it names, on a world of another seed and "
         "with every group's people count scaled; the default world's column is `metrics/summary.json` (its "
         "commit: the one that committed it). A check "
         "passes, and a finding holds, when every one of its conditions holds at the CI bound against it "
         "(REPORT.md explains the rules).", ""] + ([provenance, ""] if provenance else []) + [
         "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    L.append("| people (A, B, C) | " + " | ".join(
        ", ".join(str(w["people"][g]) for g in GROUPS) if w.get("people") else "default" for w in worlds) + " |")
    L.append("| commit | " + " | ".join(f"`{w['commit']}`" if w.get("commit") else "-" for w in worlds) + " |")
    L.append("| wall time of the run | " + " | ".join(f"{w['wall_s'] / 60:.1f} min" if w.get("wall_s") else
                                                     w.get("wall", "-") for w in worlds) + " |")
    ids = list(worlds[0]["summary"].get("instruments", {}))
    for cid in ids:
        L.append(f"| check: {cid} | " + " | ".join(f"**{w['summary'].get('instruments', {}).get(cid, 'n/a')}**"
                                                 for w in worlds) + " |")
    L.append("| checks passed | " + " | ".join(
        f"**{sum(v == 'pass' for v in w['summary'].get('instruments', {}).values())}** of "
        f"{len(w['summary'].get('instruments', {}))}" for w in worlds) + " |")
    for fid in worlds[0]["summary"].get("findings", {}):
        L.append(f"| {fid} | " + " | ".join(f"**{w['summary'].get('findings', {}).get(fid, 'n/a')}**"
                                          for w in worlds) + " |")
    L += ["", "## Every condition, per world", ""]
    for w in worlds:
        L += [f"### {w['name']}", ""]
        for item in w["summary"].get("checks_detail", []) + w["summary"].get("findings_detail", []):
            name = item.get("title") or f"{item['id']}: {item.get('claim', '')}"
            L.append(f"- **{name}**: {item.get('status') or item.get('verdict')}")
            for c in item.get("conditions", []):
                L.append(f"  - {c['condition']}: {_num(c['estimate'])} -> {c['status']}")
        L.append("")
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worlds", nargs="+", default=["1:0.5", "2:1.5"],
                    help="SEED:SCALE pairs: a world seed and the factor on every group's people count")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default="docs/robustness.md")
    ap.add_argument("--keep", default="", help="keep the scratch clones under this directory")
    ap.add_argument("--render-only", action="store_true",
                    help="do not run: write the appendix from the clones kept under --keep")
    args = ap.parse_args(argv)
    setup_logging()
    if args.render_only and not args.keep:
        ap.error("--render-only needs --keep DIR, the directory the worlds were kept in")
    root = Path.cwd()
    specs = []
    for spec in args.worlds:
        try:
            seed, scale = int(spec.split(":")[0]), float(spec.split(":")[1])
            if scale <= 0:
                raise ValueError
            specs.append((seed, scale))
        except (ValueError, IndexError):
            ap.error(f"--worlds: {spec!r} is not SEED:SCALE (e.g. 1:0.5, an integer seed and a positive factor)")
    base = Path(args.keep or tempfile.mkdtemp(prefix="ig-worlds-"))
    base.mkdir(parents=True, exist_ok=True)
    others: list[dict] = []

    def write() -> None:
        prov = (f"This appendix was written on {machine()}. Chains are deterministic per machine type, not across "
                f"types: another CPU draws other chains.")
        default = default_world(root)  # read now, not at the start: results committed meanwhile count
        write_text_atomic(root / args.out, render(([default] if default else []) + others, prov))

    try:
        for seed, scale in specs:
            work = base / f"seed{seed}-x{scale:g}"
            if args.render_only:
                w = kept_world(work, seed, scale)
            else:
                log.info("world seed=%d, people x%g", seed, scale)
                w = run_world(root, seed, scale, args.jobs, work, keep=bool(args.keep))
            w["name"] = f"seed {seed}, people x{scale:g}"
            w["commit"] = _git(work, "rev-parse", "--short", "HEAD")
            others.append(w)
            write()  # after each world: nothing lost if a later one fails
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
