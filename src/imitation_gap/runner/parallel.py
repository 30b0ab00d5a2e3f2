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

if __name__ == "__main__":  # Ctrl-C while the runner imports its modules (its first seconds): exit 130, quietly
    import signal as _signal
    import sys as _sys

    _signal.signal(_signal.SIGINT, lambda *_: _sys.exit(130))

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field

from ..core.cli import setup_logging
from ..core.handoff import ENV
from ..core.io import write_json
from . import resources, warm
from .backends import LOG_DIR, LocalBackend, dvc_cmd, log_path, stop_groups  # noqa: F401 (the runner's API)
from .resources import GpuPool, Needs
from .exclusive import RunnerBusy, dvc_busy, only_runner

log = logging.getLogger("imitation_gap")


@dataclass
class Plan:
    """Stages to run (dvc.yaml order), the upstream stages of each, and a priority."""

    order: list[str]
    needs: dict[str, set[str]]
    priority: dict[str, tuple] = field(default_factory=dict)
    locks: dict[str, set[str]] = field(default_factory=dict)  # each lock file: the stages its dvc.yaml defines


def plan(targets: list[str], force: bool = False) -> Plan:
    """What `dvc repro <targets>` would run: changed stages and their downstream, in order."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo() as repo:
        graph = repo.index.graph  # edges go from a stage to the stages it depends on
        stages = [s for s in repo.index.stages if s.cmd]  # data sources (data.dvc) have no command
        by_name = {s.addressing: s for s in stages}
        locks: dict[str, set[str]] = {}
        for s in repo.index.stages:
            lockfile = getattr(getattr(s, "dvcfile", None), "_lockfile", None)
            if lockfile is not None:
                locks.setdefault(lockfile.path, set()).add(s.name)
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
    return Plan(order, needs, prio, locks)


def prune_lock(locks: dict[str, set[str]]) -> list[str]:
    """Drop the entries of stages that their dvc.yaml no longer defines from each dvc.lock; return their names.

    DVC keeps an entry in dvc.lock for every stage it ever ran, also after the stage left dvc.yaml
    (a grid that no longer holds an amount, a renamed stage: treeverse/dvc#5293). Such entries are
    never read again, but every stage that runs re-reads and re-writes the whole file, so they cost
    time on each one (the committed lock had grown to 244 entries for 130 stages). The rest of the
    file is written by DVC's own dumper, under DVC's repository lock, atomically (runner/dvcrun.py).
    """
    import yaml
    from dvc.repo import Repo
    from dvc.utils.serialize import modify_yaml

    from . import dvcrun

    stale_all: list[str] = []
    for path, defined in locks.items():
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as f:
            stages = (yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}).get("stages") or {}
        if not set(stages) - defined:
            continue
        dvcrun.atomic_dumps()
        dvcrun.fast_lock_loader()
        with Repo() as repo, repo.lock, modify_yaml(path) as data:
            stale = [name for name in data.get("stages") or {} if name not in defined]
            for name in stale:
                del data["stages"][name]
        stale_all += stale
        log.info("%s: dropped %d entr%s of stages that dvc.yaml no longer defines (%s%s)", os.path.relpath(path),
                 len(stale), "y" if len(stale) == 1 else "ies", ", ".join(stale[:3]), ", ..." if len(stale) > 3 else "")
    return stale_all


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


REFERENCE = "bench/stage_times.json"  # each stage's wall time in the committed run (make run), for the ETA


class Eta:
    """Time left, from what each stage costs.  A pretraining stage costs ~30 evaluation stages, so stages per
    second, as a plain progress bar counts them, says hours while minutes are left.

    A stage's cost is its wall time in the last run here (``.dvc/tmp/repro-logs/summary.json``); else its
    time in the committed run (``bench/stage_times.json``) times how much slower or faster this machine has
    been on the stages finished so far; else the median of the finished stages of its family (the same
    stage on other chains: ``sft@L-broad-800-*``), then of its kind (``sft``).  While some stage's cost is
    unknown the estimate is a lower bound and says so."""

    def __init__(self, history: dict[str, float] | None = None, reference: dict[str, float] | None = None):
        self.history = dict(history or {})
        self.reference = dict(reference or {})
        self.took: dict[str, float] = {}

    @staticmethod
    def load(path) -> dict[str, float]:
        """Wall seconds of the stages that ran in a run's ``summary.json`` (or ``bench/stage_times.json``), or {}."""
        try:
            stages = json.loads(open(path).read()).get("stages", {})
        except (OSError, ValueError, AttributeError):
            return {}
        return {n: float(t["wall_s"]) for n, t in stages.items()
                if isinstance(t, dict) and t.get("state", "ran") == "ran" and "wall_s" in t}

    def done(self, name: str, secs: float) -> None:
        self.took[name] = secs

    def speed(self) -> float:
        """This run's time / the reference's, over the stages both ran (1 before any)."""
        ratios = [t / self.reference[n] for n, t in self.took.items() if self.reference.get(n)]
        return statistics.median(ratios) if ratios else 1.0

    def cost(self, name: str) -> float | None:
        """Expected wall seconds of a stage, or None if nothing is known of it."""
        if name in self.history:
            return self.history[name]
        if name in self.reference:
            return self.reference[name] * self.speed()
        for key in (lambda n: re.sub(r"-\d+$", "", n), lambda n: n.split("@")[0]):
            same = [t for n, t in self.took.items() if key(n) == key(name)]
            if same:
                return statistics.median(same)
        return None

    def left_s(self, pending: list[str], running: dict[str, float], jobs: int) -> tuple[float, bool]:
        """(seconds left with ``jobs`` stages at a time, whether every stage's cost is known); ``running``:
        each running stage's seconds so far."""
        costs = [self.cost(n) for n in pending] + [None if self.cost(n) is None else max(self.cost(n) - t, 0.0)
                                                   for n, t in running.items()]
        known = [c for c in costs if c is not None]
        return sum(known) / max(1, min(jobs, len(costs))), len(known) == len(costs)


def _fmt_left(left: tuple[float, bool]) -> str:
    secs, sure = left
    if not sure:
        return f">= {secs / 60:.0f} min left" if secs >= 60 else ""
    return f"~{secs / 60:.0f} min left" if secs >= 90 else f"~{secs:.0f} s left"


def run(p: Plan, jobs: int, force: bool = False, keep_going: bool = False, env: dict | None = None,
        backend=None, needs: dict[str, Needs] | None = None, gpus: GpuPool | None = None,
        cpus: int | None = None) -> int:
    """Run the plan: a stage starts once its upstream stages are done, with at most ``jobs`` at a time,
    never more GPUs than ``gpus`` holds (each stage its own, in CUDA_VISIBLE_DEVICES) nor more CPU
    threads than ``cpus`` (a stage that alone needs more still runs, alone)."""
    from tqdm import tqdm

    backend = backend or LocalBackend(force)
    needs = needs or {}
    gpus = gpus if gpus is not None else GpuPool([])
    cpus = cpus or os.cpu_count() or 1
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    done: set[str] = set()
    failed: list[str] = []
    blocked: set[str] = set()
    running: dict[str, tuple] = {}  # name -> (job, its GPUs, its CPU threads)
    pending = list(p.order)
    t_start = time.time()
    counts = {"ran": 0, "unchanged": 0}
    shown = ""
    times: dict[str, dict] = {}
    eta = Eta(Eta.load(LOG_DIR / "summary.json"), Eta.load(REFERENCE))
    bar = tqdm(total=len(p.order), unit="stage", desc="dvc repro", dynamic_ncols=True, file=sys.stderr,
               mininterval=1.0, bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} stages "
                                           "[{elapsed}{postfix}]")
    last_eta = 0.0
    try:
        while pending or running:
            stop = failed and not keep_going
            ready = [] if stop else sorted((n for n in pending if p.needs[n] <= done), key=p.priority.get)
            for name in ready:  # in priority order; one that does not fit now waits, the next may fit
                if len(running) >= jobs:
                    break
                need = needs.get(name, Needs())
                used = sum(c for _, _, c in running.values())
                if running and used + need.cpus > cpus:
                    continue
                got = gpus.take(need.gpus)
                if got is None:
                    continue
                pending.remove(name)
                job = backend.start(name, (env or dict(os.environ)) | gpus.env(got))
                running[name] = (job, got, need.cpus)
            now = ", ".join(running) or "-"
            if now != shown or time.time() - last_eta > 5:  # the stages running now, and the time left
                left = _fmt_left(eta.left_s(pending, {n: time.time() - r[0].t0 for n, r in running.items()}, jobs))
                bar.set_postfix_str(f"{left}, {now}" if left else now, refresh=True)
                shown, last_eta = now, time.time()
            if not running:
                if pending:  # nothing can start: failures upstream (or a stop)
                    blocked |= set(pending)
                    pending.clear()
                break
            time.sleep(0.2)
            for name, (job, got, _) in list(running.items()):
                res = backend.poll(job)
                if res is None:
                    continue
                code, cpu = res
                del running[name]
                gpus.give_back(got)
                secs = time.time() - job.t0
                text = log_path(name).read_text(errors="replace")
                if code == 0:
                    done.add(name)
                    state = "unchanged" if "didn't change, skipping" in text else "ran"
                    if state == "ran":
                        eta.done(name, secs)
                    tqdm.write(f"{state:>9}  {name}  ({secs:.1f} s)", file=sys.stderr)
                else:
                    state = "failed"
                    failed.append(name)
                    tail = "\n".join(text.splitlines()[-30:])
                    tqdm.write(f"   FAILED  {name}  ({secs:.1f} s, exit {code}); last lines of "
                               f"{log_path(name)}:\n{tail}", file=sys.stderr)
                    pending = [n for n in pending if not _downstream_of(p, n, name, blocked)]
                counts[state] = counts.get(state, 0) + 1
                times[name] = {"state": state, "start_s": round(job.t0 - t_start, 2), "wall_s": round(secs, 2),
                               "cpu_s": round(cpu, 2), **({"gpus": ",".join(got)} if gpus else {}),
                               **job.extra.get("summary", {})}
                bar.update(1)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: stop the running stages as Ctrl-C stops `dvc repro`
        backend.stop([job for job, _, _ in running.values()])
        for name in running:
            log.error("interrupted: %s stopped; run the same command again to resume", name)
        raise
    finally:
        bar.close()
    wall = time.time() - t_start
    mins = wall / 60
    write_json(LOG_DIR / "summary.json", {"jobs": jobs, "warm": bool(env and env.get(ENV)), "backend": backend.name,
                                          "gpus": gpus.ids, "wall_s": round(wall, 2), "stages": times,
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


def _downstream_of(p: Plan, stage: str, failed: str, blocked: set[str]) -> bool:
    if failed in p.needs[stage]:
        blocked.add(stage)
        return True
    return False


LOCK_FILE = "dvc.lock"
LOCK_RECOVERY = ("`git checkout dvc.lock` (or `rm dvc.lock` if it was never committed), then run this again: DVC's "
                 "run cache brings back every stage that finished, without running it again")


def lock_problem(path: str = LOCK_FILE) -> str | None:
    """Why ``dvc.lock`` cannot be read (empty, torn by an interrupted plain ``dvc repro``, not a lock), or None."""
    import yaml

    if not os.path.exists(path):
        return None
    size = os.path.getsize(path)
    if size == 0:
        return f"{path} is empty (0 bytes)"
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        mark = getattr(e, "problem_mark", None)
        return f"{path} is torn ({size} bytes; not valid YAML{f' at line {mark.line + 1}' if mark else ''})"
    stages = data.get("stages") if isinstance(data, dict) else None
    if not isinstance(stages, dict):
        return f"{path} is torn or not a DVC lock file ({size} bytes; no 'stages' mapping)"
    with open(path, "rb") as f:
        f.seek(size - 1)
        ends_whole = f.read(1) == b"\n"  # DVC's dump ends with a newline; a write cut at a random byte rarely does
    names = list(stages)
    for name in names:
        if not _whole_entry(stages[name], last=name == names[-1]):
            return f"{path} is torn ({size} bytes; the entry of stage {name!r} stops half-way)"
    if not ends_whole:
        return f"{path} is torn ({size} bytes; it stops in the middle of a line)"
    return None


def _whole_entry(entry, last: bool) -> bool:
    """A lock entry as DVC writes it: its command, deps and outs each with a path and a hash.  A lock cut
    inside an entry still parses, but that entry (the last one) lacks its outs, which DVC writes last, or
    the hash of an item."""
    if not isinstance(entry, dict) or not isinstance(entry.get("cmd"), (str, list)):
        return False
    if last and not entry.get("outs"):
        return False
    items = [*(entry.get("deps") or []), *(entry.get("outs") or [])]
    return all(isinstance(i, dict) and "path" in i and any(k in i for k in ("md5", "etag", "checksum", "version_id"))
               for i in items)


def main(argv: list[str] | None = None) -> None:
    if __name__ == "__main__" or argv is None:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # from here Ctrl-C stops what runs, then exits 130
    try:
        _entry(argv)
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        sys.exit(130)


def _entry(argv: list[str] | None) -> None:
    from dvc.lock import LockError

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("targets", nargs="*", help="stages as for `dvc repro` (default: the whole pipeline)")
    ap.add_argument("-j", "--jobs", type=int, default=None,
                    help="stages at a time (default 2, or $REPRO_JOBS; with --backend ray: as many as Ray places)")
    ap.add_argument("-f", "--force", action="store_true", help="run every stage, changed or not")
    ap.add_argument("-k", "--keep-going", action="store_true",
                    help="after a failure, go on with the stages that do not depend on it")
    ap.add_argument("--no-warm", dest="warm", action="store_false",
                    default=os.environ.get("REPRO_WARM", "1") not in ("0", "false", "no"),
                    help="run each stage command cold, importing its libraries itself (or REPRO_WARM=0)")
    ap.add_argument("--gpus", default=None,
                    help="GPU ids to hand out, e.g. 0,1,2,3 ('none': CPU only); default: $CUDA_VISIBLE_DEVICES, "
                         "else those nvidia-smi lists. Each stage gets its own (runner/resources.py)")
    ap.add_argument("--cpus", type=int, default=None,
                    help="CPU threads to share among the running stages (default: this machine's cores)")
    ap.add_argument("--backend", choices=["local", "ray"], default=os.environ.get("REPRO_BACKEND", "local"),
                    help="local: subprocesses here (default); ray: each stage a Ray task (docs/cluster.md)")
    ap.add_argument("--address", default=None,
                    help="Ray cluster address (default: $RAY_ADDRESS, else 'auto': a cluster started on this machine)")
    ap.add_argument("--workspace", choices=["shared", "clone"], default="shared",
                    help="ray: 'shared' = every node sees this repository at the same path (a shared filesystem); "
                         "'clone' = no shared filesystem: workers clone this commit from --git-remote and "
                         "exchange data through the DVC remote")
    ap.add_argument("--git-remote", default="origin",
                    help="ray --workspace clone: the git remote (name or URL) the workers clone from (default origin)")
    args = ap.parse_args(argv)
    args.explicit_jobs = args.jobs is not None
    if args.jobs is None:
        args.jobs = int(os.environ.get("REPRO_JOBS", "2"))
    if args.jobs < 1:
        ap.error(f"--jobs must be at least 1 (got {args.jobs})")
    try:  # before anything else, before any log is touched
        with only_runner():
            busy = dvc_busy()
            if busy:
                print(f"error: another DVC command is running in this repository ({busy}); wait for it to finish, "
                      "or stop it with Ctrl-C, then run this again", file=sys.stderr)
                sys.exit(2)
            torn = lock_problem()
            if torn:
                print(f"error: {torn}: an interrupted plain `dvc repro` can leave it so (DVC writes it in place); "
                      f"recover with {LOCK_RECOVERY}", file=sys.stderr)
                sys.exit(2)
            _main(args)
    except RunnerBusy as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except LockError:  # a DVC command started after the check above
        print(f"error: another DVC command holds this repository's lock ({dvc_busy() or 'gone now'}); wait for it "
              "to finish, then run this again", file=sys.stderr)
        sys.exit(2)


def _main(args: argparse.Namespace) -> None:
    setup_logging()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops the stages as Ctrl-C does
    p = plan(args.targets, args.force)
    prune_lock(p.locks)  # before the stages run: each of them re-writes the whole lock
    if not p.order:
        log.info("parallel repro: nothing to run; every stage is up to date (`dvc status` is clean)")
        return
    params = resources.load()
    needs = {n: resources.needs(n, params) for n in p.order}
    if args.backend == "ray":
        from . import ray_backend

        ray_jobs = args.jobs if args.explicit_jobs else len(p.order)  # Ray queues what does not fit its nodes
        log.info("parallel repro: %d stage(s) to run on Ray (%s workspace); logs in %s", len(p.order),
                 args.workspace, LOG_DIR)
        try:
            with ray_backend.connected(args.address, args.workspace, args.git_remote, args.force, needs) as be:
                code = run(p, ray_jobs, args.force, args.keep_going, dict(os.environ) | {ENV: ""}, backend=be,
                           needs=needs, cpus=10**9)
        except KeyboardInterrupt:
            code = 130
        except ray_backend.RayRunError as e:
            log.error("%s", e)
            code = 2
        sys.exit(code)
    pool = GpuPool(resources.visible_gpus(args.gpus))
    if not pool:
        needs = {n: Needs(0, nd.cpus) for n, nd in needs.items()}  # no GPU here: every stage on the CPU, as before
    for n, nd in needs.items():
        if not pool.fits(nd.gpus):
            print(f"error: stage {n} needs {nd.gpus} GPUs and this runner has {len(pool.ids)} "
                  f"({','.join(pool.ids)}); give it more with --gpus, or lower sft.num_processes / "
                  "hub.vllm.tensor_parallel_size", file=sys.stderr)
            sys.exit(2)
    log.info("parallel repro: %d stage(s) to run, %d at a time%s; logs in %s", len(p.order), args.jobs,
             f", GPUs {','.join(pool.ids)}" if pool else "", LOG_DIR)
    try:
        # the server's imports cost ~15 s of CPU once: worth it from a few Python stages on
        with warm_server(args.warm and len(p.order) >= 3) as env:
            code = run(p, args.jobs, args.force, args.keep_going, env, needs=needs, gpus=pool, cpus=args.cpus)
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
