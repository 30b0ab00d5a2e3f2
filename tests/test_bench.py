"""The bench's cheapest parts in --quick mode: it runs and writes the files with the expected structure.

No timing is asserted: the figures depend on the machine and its load.
"""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT, env


def test_bench_quick_client_and_startup(tmp_path):
    out, js = tmp_path / "B.md", tmp_path / "r.json"
    e = env()
    e["PYTHONPATH"] = f"{ROOT / 'src'}:{ROOT}"
    r = subprocess.run([sys.executable, "-m", "bench", "--quick", "--parts", "client,pipeline", "--out", str(out),
                        "--json", str(js)], cwd=ROOT, env=e, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads(js.read_text())
    assert res["quick"] and res["reps"] == 1 and res["parts"] == ["client", "pipeline"]
    assert {"cpu", "usable_cpus", "versions"} <= set(res["machine"])
    c = res["client"]
    assert set(c["concurrency"]) == {"1", "16"} and all(v["rps"] > 0 for v in c["concurrency"].values())
    assert c["cache_hit_rps"] > 0
    st = res["pipeline"]["startup"]
    assert set(st) == {"python (bare)", "imitation_gap.core (cli + config)", "mlflow"}
    assert all(v["wall"] > 0 and v["cpu"] >= 0 for v in st.values())
    md = out.read_text()
    for heading in ("# Benchmarks", "## Machine", "## 2. Teacher client", "## 4. Pipeline", "--quick"):
        assert heading in md, heading
    assert "**Method.**" in md
    # --render measures nothing and writes the same file from the saved results (tables in the measured order)
    again = tmp_path / "again.md"
    r = subprocess.run([sys.executable, "-m", "bench", "--render", "--out", str(again), "--json", str(js)],
                       cwd=ROOT, env=e, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-4000:]
    assert again.read_text() == md


def test_bench_quick_eval_times_every_task_of_the_stage(tmp_path):
    """The eval part calls the stage's own functions: it breaks when they change unless a test runs it."""
    from imitation_gap.worlds.embedded import evaluate as embedded

    js = tmp_path / "r.json"
    e = env()
    e["PYTHONPATH"] = f"{ROOT / 'src'}:{ROOT}"
    r = subprocess.run([sys.executable, "-m", "bench", "--quick", "--parts", "eval", "--out", str(tmp_path / "B.md"),
                        "--json", str(js)], cwd=ROOT, env=e, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    med = json.loads(js.read_text())["eval"]["median"]
    for task in embedded.TASKS:  # every capability task, the zero-shot knowledge probe included
        assert med[f"lm-eval {task}"] > 0 and f"lm-eval {task}: fixed (limit=1)" in med
    assert med["raters (preference, both)"] > 0 and med["teacher answers (client)"] > 0


def test_bench_rejects_unknown_part():
    e = env()
    e["PYTHONPATH"] = f"{ROOT / 'src'}:{ROOT}"
    r = subprocess.run([sys.executable, "-m", "bench", "--parts", "nope"], cwd=ROOT, env=e, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "unknown part" in r.stderr
    r = subprocess.run([sys.executable, "-m", "bench", "--render", "--json", "/nonexistent/r.json", "--out",
                        "/nonexistent/B.md"], cwd=ROOT, env=e, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--render needs the results of a bench run" in r.stderr
