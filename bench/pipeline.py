"""Pipeline: `dvc repro` stage by stage on a scaled-down grid, re-run costs, start-up overhead.

Method: a temporary git + DVC copy of this repository (as ``tests/conftest.py`` builds
one) with tiny models and data (the ``TINY`` params below), so that every stage's wall
time is almost all fixed cost: process start-up (imports), MLflow, DVC's own work
(hashing, lock file, checkout).  A stage's time is the time between DVC's
"Running stage" lines (the last stage: until `dvc repro` exits).  Then the same grid with
`make run`'s runner (``python -m imitation_gap.runner.parallel --jobs 2 --force``: two stages at a
time, stage commands forked from the warm server), and `dvc exp run -S` with one changed eval
param, one more seed and one more amount, each from the committed baseline and timed whole,
with the stages it ran (stage commands warm too: a warm server named in
``IMITATION_GAP_WARM``, as the README shows for `dvc exp run`).  Start-up: each stage's imports in a fresh `python -c`, and DVC's no-op
(`dvc status`, `dvc repro` with everything up to date).
"""

from __future__ import annotations

import json
import re
import resource
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from imitation_gap.core.io import deep_update

from .common import ROOT, env, median, params_with, say
from .common import run as sh

# the tests' tiny params (tests/tiny_params.yaml), with one size
TINY = deep_update(yaml.safe_load((ROOT / "tests" / "tiny_params.yaml").read_text()), {"grid": {"sizes": ["S"]}})

# What each stage imports before it does any work (its module, then what its functions import).
IMPORTS = {
    "python (bare)": "pass",
    "imitation_gap.core (cli + config)": "import imitation_gap.core.cli, imitation_gap.core.config",
    "mlflow": "import mlflow",
    "base": ("import imitation_gap.stages.base, imitation_gap.worlds.embedded.pretrain, torch, mlflow, datasets; from transformers import AutoTokenizer, "
             "DataCollatorForLanguageModeling, LlamaForCausalLM, Trainer, TrainingArguments"),
    "sft": ("import imitation_gap.stages.sft, torch, mlflow, datasets; from transformers import AutoModelForCausalLM, "
            "AutoTokenizer; from trl import SFTConfig, SFTTrainer"),
    "eval": ("import imitation_gap.stages.evaluate, torch, mlflow, openai; from lm_eval import simple_evaluate; "
             "from lm_eval.models.huggingface import HFLM; from transformers import AutoModelForCausalLM"),
}


def _timed_cmd(cmd, cwd: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of a command (CPU = user + sys of the child: less sensitive to other load)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, shell=isinstance(cmd, str))
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise RuntimeError(f"{cmd}: {r.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def startup(reps: int, keys=None) -> dict:
    out = {}
    for name, code in IMPORTS.items():
        if keys and name not in keys:
            continue
        runs = [_timed_cmd([sys.executable, "-c", code], ROOT) for _ in range(reps)]
        out[name] = {"wall": median(w for w, _ in runs), "cpu": median(c for _, c in runs),
                     "runs": [list(r) for r in runs]}
        say(f"pipeline: start-up {name}: {out[name]['wall']:.2f} s wall, {out[name]['cpu']:.2f} s CPU")
    return out


def make_repo(dest: Path, overrides: dict) -> Path:
    """A git + DVC copy of this checkout's tracked files with the given params (cf. tests/conftest.py)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        src = ROOT / f
        if not src.is_file() or f.startswith(("metrics/", "eval/", "plots/", "bench/", "tests/")) \
                or f in ("REPORT.md", "BENCHMARKS.md", "dvc.lock"):  # a tiny study starts with no results
            continue
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / f)
    (dest / "params.yaml").write_text(yaml.safe_dump(params_with(overrides), sort_keys=False))
    sh("git init -q -b main && git config user.email bench@localhost && git config user.name bench && "
        "git add -A && git commit -qm init", dest)
    sh(["dvc", "pull", "-q", "data.dvc"], dest)
    return dest


_STAGE = re.compile(r"Running stage '([^']+)'")


@contextmanager
def warm_server(tmp: Path):
    """A warm server (imitation_gap.runner.warm) for stage commands: yields the environment that names it."""
    from imitation_gap.runner import warm

    with warm.started(tmp / "warm.log", env=env()) as srv:
        if not srv.socket:
            raise RuntimeError(f"the warm server did not start: {srv.log.read_text()[-2000:]}")
        yield srv.env()


def timed_dvc(args: list[str], repo: Path, extra_env: dict | None = None) -> dict:
    """Run a dvc command, timestamping each "Running stage" line; per-stage and total wall seconds."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(["dvc", *args], cwd=repo, env=env() | (extra_env or {}), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    marks: list[tuple[str, float]] = []
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        tail = (tail + [line])[-60:]
        m = _STAGE.search(line)
        if m:
            marks.append((m.group(1), time.perf_counter() - t0))
            say(f"pipeline: dvc {args[0]}: {m.group(1)}")
    rc = proc.wait()
    total = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed ({rc}):\n{''.join(tail)}")
    stages = {}
    for i, (name, t) in enumerate(marks):
        end = marks[i + 1][1] if i + 1 < len(marks) else total
        stages[name] = end - t
    return {"cmd": "dvc " + " ".join(args), "total": total, "stages": stages,
            "before_first_stage": marks[0][1] if marks else total}


def run_pipeline(tmp: Path, reps_noop: int = 3) -> dict:
    repo = make_repo(tmp / "repo", TINY)
    out: dict = {"params": TINY}
    say("pipeline: dvc repro of the scaled-down grid (1 size x 2 kinds x 1 amount x 1 seed)")
    out["repro"] = timed_dvc(["repro"], repo, {"IMITATION_GAP_WARM": ""})  # plain `dvc repro`: commands start cold
    sh("git add -A && git commit -qm repro", repo)
    noop = [_timed_cmd(["dvc", "repro"], repo) for _ in range(reps_noop)]
    status = [_timed_cmd(["dvc", "status"], repo) for _ in range(reps_noop)]
    out["noop_repro"] = {"wall": median(w for w, _ in noop), "cpu": median(c for _, c in noop)}
    out["status"] = {"wall": median(w for w, _ in status), "cpu": median(c for _, c in status)}
    say(f"pipeline: dvc repro (nothing to do) {out['noop_repro']['wall']:.2f} s, dvc status "
        f"{out['status']['wall']:.2f} s")
    say("pipeline: the same grid again with `make run`'s runner (python -m imitation_gap.runner.parallel --jobs 2 --force)")
    out["parallel"] = timed_parallel(repo, jobs=2)
    sh("git add -A && (git diff --cached --quiet || git commit -qm parallel)", repo)  # a forced re-run: same bytes
    changes = [("change an eval param", ["eval.pref_max_new_tokens=12"]),
               ("add one seed", ["grid.seeds=[0,1]"]),
               ("add one amount", ["grid.amounts=[300,600]"])]
    out["exp"] = {}
    with warm_server(tmp) as warm_env:
        for label, sets in changes:  # each from the committed baseline
            say(f"pipeline: dvc exp run (warm): {label}")
            args = ["exp", "run"] + [a for s in sets for a in ("-S", s)]
            out["exp"][label] = timed_dvc(args, repo, warm_env)
            out["exp"][label]["set"] = sets
            sh("git reset -q --hard && dvc checkout -q --force", repo)
    return out


def timed_parallel(repo: Path, jobs: int) -> dict:
    """`python -m imitation_gap.runner.parallel --force`: total wall, CPU, and its per-stage summary.json."""
    wall, cpu = _timed_cmd([sys.executable, "-m", "imitation_gap.runner.parallel", "--jobs", str(jobs), "--force"], repo)
    summary = json.loads((repo / ".dvc" / "tmp" / "repro-logs" / "summary.json").read_text())
    say(f"pipeline: parallel --jobs {jobs}: {wall:.1f} s wall, {cpu:.1f} s CPU")
    return {"jobs": jobs, "total": wall, "cpu": cpu, "stages": summary["stages"], "warm": summary.get("warm")}


def lock_rewrite(reps: int) -> dict:
    """DVC's work on this checkout's ``dvc.lock`` (the default grid's) for every stage it runs, timed in-process:
    the safe parse (status), the round-trip parse + dump that writes the stage's entry (plain ``dvc``, under the
    repo lock), and what ``imitation_gap.runner.dvcrun`` (``make run``'s DVC) does instead: the safe parse, then
    the dump of the one entry that changed, spliced into the others' text as read."""
    import copy
    import io

    from dvc.utils.serialize._yaml import _dump, parse_yaml, parse_yaml_for_update

    from imitation_gap.runner import dvcrun

    text = (ROOT / "dvc.lock").read_text()
    names = list(parse_yaml(text, "dvc.lock").get("stages", {}))
    runs = []
    for _ in range(reps):
        t0 = time.perf_counter()
        parse_yaml(text, "dvc.lock")
        t1 = time.perf_counter()
        data = parse_yaml_for_update(text, "dvc.lock")
        _dump(data, io.StringIO())
        t2 = time.perf_counter()
        data = parse_yaml(text, "dvc.lock")
        prints = dvcrun._fingerprints(data)
        if names:  # a stage ran: its entry's outputs have new hashes
            name = names[len(names) // 2]
            entry = copy.deepcopy(data["stages"][name])
            data["stages"][name] = entry | {"outs": [o | {"md5": "0" * 32} for o in entry.get("outs", [])]}
        spliced = dvcrun.splice_lock(text, prints, data, _dump)
        if spliced is None:  # a lock it cannot split: the whole dump, as dvcrun falls back to
            _dump(data, io.StringIO())
        runs.append((t1 - t0, t2 - t1, time.perf_counter() - t2))
    out = {"lines": text.count("\n"), "stages": len(names), "safe_parse_s": median(r[0] for r in runs),
           "rewrite_s": median(r[1] for r in runs), "fast_rewrite_s": median(r[2] for r in runs), "runs": runs,
           "spliced": spliced is not None}
    say(f"pipeline: dvc.lock ({out['lines']} lines, {len(names)} stages): parse {out['safe_parse_s']:.2f} s, "
        f"round-trip rewrite {out['rewrite_s']:.2f} s, dvcrun's rewrite {out['fast_rewrite_s']:.2f} s")
    return out


def run(tmp: Path, reps: int, quick: bool = False) -> dict:
    res = {"startup": startup(reps, keys=["python (bare)", "imitation_gap.core (cli + config)", "mlflow"]
                              if quick else None)}
    res["lock"] = lock_rewrite(1 if quick else reps)
    if not quick:
        res.update(run_pipeline(tmp))
    return res
