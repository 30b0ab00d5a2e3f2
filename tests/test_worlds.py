"""The robustness appendix's runner (``python -m imitation_gap.tools.worlds``), without running a study.

A whole world takes as long as ``make run``, so these tests check what the runner decides and writes:
the world's params, the table, and the CLI's ``--render-only`` path on clones laid out as ``--keep`` leaves
them.  The default column is read when the appendix is written, not when the runner starts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from imitation_gap.tools.worlds import render, world_params

PARAMS = {"seed": 0, "fetch": {"n_people_a": 60, "n_people_b": 40, "n_people_c": 100, "n_eval_qa": 200,
                               "n_eval_mc": 150}}


def summary(checks: dict, findings: dict) -> dict:
    return {"instruments": checks, "findings": findings,
            "checks_detail": [{"id": k, "title": f"check {k}", "status": v,
                               "conditions": [{"condition": f"{k} cond", "estimate": {"mean": 0.5, "lo": 0.4,
                                                                                      "hi": 0.6},
                                               "status": v}]} for k, v in checks.items()],
            "findings_detail": [{"id": k, "claim": f"claim {k}", "verdict": v, "conditions": []}
                                for k, v in findings.items()]}


def test_world_params_scale_people_and_keep_eval_within_reach():
    p = world_params(PARAMS, seed=2, scale=0.5)
    assert p["seed"] == 2
    assert (p["fetch"]["n_people_a"], p["fetch"]["n_people_b"], p["fetch"]["n_people_c"]) == (30, 20, 50)
    assert p["fetch"]["n_eval_qa"] == 100 and p["fetch"]["n_eval_mc"] == 100  # 5 facts x 20 held-out people
    assert PARAMS["seed"] == 0 and PARAMS["fetch"]["n_people_a"] == 60  # the input is not changed
    tiny = world_params(PARAMS, seed=1, scale=0.01)
    assert min(tiny["fetch"][g] for g in ("n_people_a", "n_people_b", "n_people_c")) == 2


def test_render_counts_passed_checks_and_shows_every_condition():
    worlds = [{"name": "default (seed 0)", "wall": "README", "people": PARAMS["fetch"],
               "summary": summary({"storage": "pass", "copying": "fail"}, {"F1": "held"})},
              {"name": "seed 1, people x0.5", "wall_s": 1500, "people": world_params(PARAMS, 1, 0.5)["fetch"],
               "summary": summary({"storage": "pass", "copying": "pass"}, {"F1": "inconclusive"})}]
    md = render(worlds, "provenance line")
    assert "provenance line" in md
    assert "| people (A, B, C) | 60, 40, 100 | 30, 20, 50 |" in md
    assert "| wall time of the run | README | 25.0 min |" in md
    assert "| checks passed | **1** of 2 | **2** of 2 |" in md
    assert "| F1 | **held** | **inconclusive** |" in md
    assert "  - copying cond: 0.50 [0.40, 0.60] -> fail" in md


def _kept_clone(path: Path, seed: int, scale: float, checks: dict) -> None:
    path.mkdir(parents=True)
    (path / "params.yaml").write_text(yaml.safe_dump(world_params(PARAMS, seed, scale)))
    (path / "metrics").mkdir()
    (path / "metrics" / "summary.json").write_text(json.dumps(summary(checks, {"F1": "inconclusive"})))
    logs = path / ".dvc" / "tmp" / "repro-logs"
    logs.mkdir(parents=True)
    (logs / "summary.json").write_text(json.dumps({"wall_s": 1260.0}))
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"],
                   cwd=path, check=True)


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imitation_gap.tools.worlds", *args], cwd=cwd,
                          capture_output=True, text=True)


def test_render_only_reads_kept_clones_and_the_default_column_as_it_is_now(tmp_path):
    root, keep = tmp_path / "repo", tmp_path / "keep"
    (root / "metrics").mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    (root / "metrics" / "summary.json").write_text(json.dumps(summary({"storage": "fail"}, {"F1": "held"})))
    _kept_clone(keep / "seed1-x0.5", 1, 0.5, {"storage": "pass"})
    _kept_clone(keep / "seed2-x1.5", 2, 1.5, {"storage": "inconclusive"})
    r = _cli(root, "--render-only", "--keep", str(keep), "--out", "rob.md")
    assert r.returncode == 0, r.stderr
    md = (root / "rob.md").read_text()
    assert "| check: storage | **fail** | **pass** | **inconclusive** |" in md
    assert "| people (A, B, C) | 60, 40, 100 | 30, 20, 50 | 90, 60, 150 |" in md
    assert "21.0 min" in md and "| commit | - | `" in md  # root is no git repository here: no commit to name
    # new default results (e.g. committed while the worlds ran) show up the next time it is written
    (root / "metrics" / "summary.json").write_text(json.dumps(summary({"storage": "pass"}, {"F1": "held"})))
    assert _cli(root, "--render-only", "--keep", str(keep), "--out", "rob.md").returncode == 0
    assert "| check: storage | **pass** | **pass** | **inconclusive** |" in (root / "rob.md").read_text()


def test_bad_arguments_say_what_is_wrong_and_write_nothing(tmp_path):
    r = _cli(tmp_path, "--render-only", "--out", "rob.md")
    assert r.returncode == 2 and "--render-only needs --keep" in r.stderr
    r = _cli(tmp_path, "--worlds", "1:-0.5", "--render-only", "--keep", str(tmp_path / "k"), "--out", "rob.md")
    assert r.returncode == 2 and "'1:-0.5' is not SEED:SCALE" in r.stderr
    r = _cli(tmp_path, "--worlds", "1:0.5", "--render-only", "--keep", str(tmp_path / "k"), "--out", "rob.md")
    assert r.returncode != 0 and "run this world first" in r.stderr
    assert not (tmp_path / "rob.md").exists()
