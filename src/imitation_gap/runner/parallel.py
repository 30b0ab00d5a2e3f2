"""`dvc repro` with independent stages side by side (`make run` uses it with 2 jobs).

``dvc repro`` runs the stages of a pipeline one after another.  Most of this study's
stages are independent of each other (every (size, kind, amount, seed) cell trains and
evaluates on its own), and each stage process spends ~10 s of one core importing torch,
transformers, TRL and MLflow, so on a 2-core machine one stage at a time leaves a core idle.

This runner asks DVC for the pipeline graph and for what changed (``dvc status``), then
runs every changed stage and everything downstream of it, each as its own
``dvc --wait-for-lock repro --single-item <stage>``, with up to ``--jobs`` at a time; a
stage starts only when every stage it depends on has finished.  (It calls DVC's CLI through
:mod:`imitation_gap.runner.dvcrun`, which reads a comment-free ``dvc.lock`` with libyaml: DVC rewrites
that file for every stage, and the default study's lock takes ruamel's pure-Python loader
~1.7 s.)  DVC's own locks keep this sound: a stage's command runs with the repository unlocked, its deps read-locked and its
outs write-locked (``.dvc/tmp/rwlock``), and ``dvc.lock`` is written under the repository
lock.  The result is what ``dvc repro`` gives (the same ``dvc.lock`` entries, run cache and
MLflow runs); ``dvc status`` is clean afterwards.

Each stage's output goes to ``.dvc/tmp/repro-logs/<stage>.log``; the console shows one
line per stage and a progress bar; ``summary.json`` beside the logs holds each stage's
wall and CPU seconds (``make bench`` reads it).  On a failure no new stage starts, the running ones
finish, and the failed stage's log tail is printed; what finished is kept, so running the
same command again resumes.

Run: ``python -m imitation_gap.runner.parallel --jobs 2`` (targets as for ``dvc repro``:
``python -m imitation_gap.runner.parallel -j 2 report``).  ``--jobs 1`` is plain serial order.
Torch threads per stage come from params (``pretrain.threads``, ``sft.threads``): keep
jobs x threads <= cores.

Stage commands start warm: the runner starts :mod:`imitation_gap.runner.warm`, one process that
imports torch, transformers, TRL, lm-eval and MLflow once, and each stage command forks
from it instead of importing them again (~10 s of CPU saved per stage; same outputs, byte
for byte).  ``--no-warm`` (or ``REPRO_WARM=0``) runs every command cold; a server already
named in ``$IMITATION_GAP_WARM`` is used instead of starting another.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core.cli import setup_logging
from ..core.handoff import CPU_ENV, ENV
from ..core.io import write_json
from . import warm
from .exclusive import RunnerBusy, only_runner

log = logging.getLogger("imitation_gap")

LOG_DIR = Path(".dvc/tmp/repro-logs")


@dataclass
class Plan:
    """Stages to run (dvc.yaml order), the upstream stages of each, and a priority."""

    order: list[str]
    needs: dict[str, set[str]]
    priority: dict[str, tuple] = field(default_factory=dict)


def plan(targets: list[str], force: bool = False) -> Plan:
    """What `dvc repro <targets>` would run: changed stages and their downstream, in order."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo() as repo:
        graph = repo.index.graph  # edges go from a stage to the stages it depends on
        stages = [s for s in repo.index.stages if s.cmd]  # data sources (data.dvc) have no command
        by_name = {s.addressing: s for s in stages}
        if targets:
            wanted: set = set()
            for t in targets:
                for s in repo.stage.collect(t):
                    wanted |= {s} | nx.descendants(graph, s)
        else:
            wanted = set(stages)
        names = {s.addressing for s in wanted if s.cmd}
        if force:
            changed = set(names)
        else:
            changed = set(repo.status(targets=targets or None, with_deps=True)) & names
        run = set(changed)
        for name in changed:  # everything downstream may change with it
            run |= {s.addressing for s in nx.ancestors(graph, by_name[name]) if s.addressing in names}
        order = [s.addressing for s in stages if s.addressing in run]
        needs = {n: {s.addressing for s in nx.descendants(graph, by_name[n]) if s.addressing in run}
                 for n in order}
    downstream = {n: 0 for n in order}
    for n in order:
        for u in needs[n]:
            downstream[u] += 1
    # stages that unblock the most work start first; ties keep dvc.yaml order
    prio = {n: (-downstream[n], i) for i, n in enumerate(order)}
    return Plan(order, needs, prio)


def log_path(stage: str) -> Path:
    return LOG_DIR / (re.sub(r"[^A-Za-z0-9@._-]+", "_", stage) + ".log")


def dvc_cmd(stage: str, force: bool) -> list[str]:
    """``dvc repro --single-item <stage>``, through :mod:`imitation_gap.runner.dvcrun` (DVC's CLI; the same
    dvc.lock, with a comment-free lock parsed by libyaml instead of ruamel's pure-Python loader)."""
    return [sys.executable, "-m", "imitation_gap.runner.dvcrun", "--wait-for-lock", "repro", "--single-item",
            *(["--force"] if force else []), stage]


def cpu_file(stage: str) -> Path:
    return log_path(stage).with_suffix(".cpu")


@contextlib.contextmanager
def warm_server(enabled: bool):
    """Start the warm server (:mod:`imitation_gap.runner.warm`); yield the environment for stage commands."""
    if not enabled:
        yield dict(os.environ) | {ENV: ""}
        return
    if os.environ.get(ENV) and os.path.exists(os.environ[ENV]):  # one is running already: use it
        log.info("stage commands start warm, from the server at %s", os.environ[ENV])
        yield dict(os.environ)
        return
    with warm.started(LOG_DIR / "warm.log") as srv:
        if srv.socket:
            log.info("stage commands start warm, from the server at %s", srv.socket)
        else:
            log.warning("the warm server did not start (see %s); stages run cold", srv.log)
        yield dict(os.environ) | srv.env()


def run(p: Plan, jobs: int, force: bool = False, keep_going: bool = False, env: dict | None = None) -> int:
    from tqdm import tqdm

    LOG_DIR.mkdir(parents=True, exist_ok=True)
    done: set[str] = set()
    failed: list[str] = []
    blocked: set[str] = set()
    running: dict[str, tuple[subprocess.Popen, float, object]] = {}
    pending = list(p.order)
    t_start = time.time()
    counts = {"ran": 0, "unchanged": 0}
    shown = ""
    times: dict[str, dict] = {}
    bar = tqdm(total=len(p.order), unit="stage", desc="dvc repro", dynamic_ncols=True, file=sys.stderr,
               mininterval=1.0)
    try:
        while pending or running:
            stop = failed and not keep_going
            ready = [] if stop else sorted((n for n in pending if p.needs[n] <= done), key=p.priority.get)
            while ready and len(running) < jobs:
                name = ready.pop(0)
                pending.remove(name)
                fh = open(log_path(name), "w")
                cpu_file(name).unlink(missing_ok=True)
                # own process group: an interrupt of this runner is passed on to it below
                proc = subprocess.Popen(dvc_cmd(name, force), stdout=fh, stderr=subprocess.STDOUT,
                                        start_new_session=True,
                                        env=(env or os.environ) | {CPU_ENV: str(cpu_file(name).resolve())})
                running[name] = (proc, time.time(), fh)
            now = ", ".join(running) or "-"
            if now != shown:  # the stages running now
                bar.set_postfix_str(now, refresh=True)
                shown = now
            if not running:
                if pending:  # nothing can start: failures upstream (or a stop)
                    blocked |= set(pending)
                    pending.clear()
                break
            time.sleep(0.2)
            for name, (proc, t0, fh) in list(running.items()):
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # CPU of dvc and the stage's command
                if pid == 0:
                    continue
                proc.returncode = os.waitstatus_to_exitcode(status)
                fh.close()
                del running[name]
                secs = time.time() - t0
                text = log_path(name).read_text(errors="replace")
                if proc.returncode == 0:
                    done.add(name)
                    state = "unchanged" if "didn't change, skipping" in text else "ran"
                    tqdm.write(f"{state:>9}  {name}  ({secs:.1f} s)", file=sys.stderr)
                else:
                    state = "failed"
                    failed.append(name)
                    tail = "\n".join(text.splitlines()[-30:])
                    tqdm.write(f"   FAILED  {name}  ({secs:.1f} s, exit {proc.returncode}); last lines of "
                               f"{log_path(name)}:\n{tail}", file=sys.stderr)
                    pending = [n for n in pending if not _downstream_of(p, n, name, blocked)]
                counts[state] = counts.get(state, 0) + 1
                # CPU of dvc and the stage's command, plus that of the command's warm child if it had one
                cpu = usage.ru_utime + usage.ru_stime
                with contextlib.suppress(OSError, ValueError):
                    cpu += sum(float(x) for x in cpu_file(name).read_text().split())
                    cpu_file(name).unlink()
                times[name] = {"state": state, "start_s": round(t0 - t_start, 2), "wall_s": round(secs, 2),
                               "cpu_s": round(cpu, 2)}
                bar.update(1)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: stop the running stages as Ctrl-C stops `dvc repro`
        stop_groups([proc for proc, _, _ in running.values()])
        for name in running:
            log.error("interrupted: %s stopped; run the same command again to resume", name)
        raise
    finally:
        bar.close()
    wall = time.time() - t_start
    mins = wall / 60
    write_json(LOG_DIR / "summary.json", {"jobs": jobs, "warm": bool(env and env.get(ENV)),
                                          "wall_s": round(wall, 2), "stages": times,
                                          "not_run": sorted(set(pending) | blocked)})
    log.info("parallel repro: %d stage(s) ran, %d unchanged, in %.1f min with %d job(s)",
             counts["ran"], counts["unchanged"], mins, jobs)
    if failed:
        left = sorted(set(pending) | blocked)
        log.error("failed: %s; not run: %d stage(s)%s. Fix the cause (see the logs in %s) and run the same "
                  "command again: finished stages are kept in dvc.lock.", ", ".join(failed), len(left),
                  f" ({', '.join(left[:5])}{', ...' if len(left) > 5 else ''})" if left else "", LOG_DIR)
        return 1
    return 0


def stop_groups(procs: list[subprocess.Popen], grace: float = 20.0) -> None:
    """SIGINT to each stage's process group (as Ctrl-C), then SIGTERM, then SIGKILL to what is still running.

    A stage can miss the SIGINT: DVC ignores SIGINT while it runs a command, and a signal that lands
    between that and the command's start reaches no one."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        alive = [p for p in procs if p.poll() is None]
        if not alive:
            return
        for p in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, sig)
        deadline = time.time() + wait
        while time.time() < deadline and any(p.poll() is None for p in alive):
            time.sleep(0.1)


def _downstream_of(p: Plan, stage: str, failed: str, blocked: set[str]) -> bool:
    if failed in p.needs[stage]:
        blocked.add(stage)
        return True
    return False


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("targets", nargs="*", help="stages as for `dvc repro` (default: the whole pipeline)")
    ap.add_argument("-j", "--jobs", type=int, default=int(os.environ.get("REPRO_JOBS", "2")),
                    help="stages at a time (default 2, or $REPRO_JOBS)")
    ap.add_argument("-f", "--force", action="store_true", help="run every stage, changed or not")
    ap.add_argument("-k", "--keep-going", action="store_true",
                    help="after a failure, go on with the stages that do not depend on it")
    ap.add_argument("--no-warm", dest="warm", action="store_false",
                    default=os.environ.get("REPRO_WARM", "1") not in ("0", "false", "no"),
                    help="run each stage command cold, importing its libraries itself (or REPRO_WARM=0)")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error(f"--jobs must be at least 1 (got {args.jobs})")
    try:  # before anything else, before any log is touched
        with only_runner():
            _main(args)
    except RunnerBusy as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _main(args: argparse.Namespace) -> None:
    setup_logging()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops the stages as Ctrl-C does
    p = plan(args.targets, args.force)
    if not p.order:
        log.info("parallel repro: nothing to run; every stage is up to date (`dvc status` is clean)")
        return
    log.info("parallel repro: %d stage(s) to run, %d at a time; logs in %s", len(p.order), args.jobs, LOG_DIR)
    try:
        # the server's imports cost ~15 s of CPU once: worth it from a few Python stages on
        with warm_server(args.warm and len(p.order) >= 3) as env:
            code = run(p, args.jobs, args.force, args.keep_going, env)
    except KeyboardInterrupt:
        code = 130
    else:  # all CPU of this run: every dvc process, stage command, warm child and the warm server
        import resource

        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        with contextlib.suppress(OSError, ValueError):
            summary = json.loads((LOG_DIR / "summary.json").read_text())
            write_json(LOG_DIR / "summary.json",
                       summary | {"cpu_total_s": round(kids.ru_utime + kids.ru_stime, 2)})
    sys.exit(code)


if __name__ == "__main__":
    main()
