"""core/tracking.py: stages that start together share one MLflow SQLite store that none of them has opened yet.

A fresh clone that pulled its cached stages and changes one param runs the changed stages two at a time
(`make run`, `dvc queue start -j 2`) with no `mlflow.db` yet: each process would create the store's tables
and the experiment at once, and all but one would fail (MLflow's migrations: "duplicate column name: step").
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, env

N = 4
STAGE = """
import sys, time
from pathlib import Path
from imitation_gap.core.config import load_params
from imitation_gap.core.tracking import mlflow_run
import mlflow  # imported before the start, so that all of them open the store at once
p = load_params(sys.argv[1])
ready, go, i = Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
(ready / i).touch()
while not go.exists():
    time.sleep(0.001)
with mlflow_run(p, f"stage@{i}", {"i": i}):
    mlflow.log_metric("x", float(i))
"""


def test_stages_that_start_together_share_a_new_mlflow_store(tmp_path):
    from mlflow.tracking import MlflowClient

    db = tmp_path / "mlflow.db"
    ready, go = tmp_path / "ready", tmp_path / "go"
    ready.mkdir()
    e = env() | {"MLFLOW_TRACKING_URI": f"sqlite:///{db}"}
    procs = [subprocess.Popen([sys.executable, "-c", STAGE, str(ROOT / "params.yaml"), str(ready), str(go), str(i)],
                              cwd=tmp_path, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(N)]
    deadline = time.time() + 300
    while len(list(ready.iterdir())) < N and all(pr.poll() is None for pr in procs):
        assert time.time() < deadline, "the stage processes never got ready"
        time.sleep(0.05)
    go.touch()  # all at once
    outs = [pr.communicate(timeout=300) for pr in procs]
    failed = [(i, err[-2000:]) for i, (pr, (_, err)) in enumerate(zip(procs, outs)) if pr.returncode != 0]
    assert not failed, f"{len(failed)} of {N} stages failed to open the new store: {failed[0]}"
    client = MlflowClient(f"sqlite:///{db}")
    exps = client.search_experiments()
    assert [x.name for x in exps if x.name != "Default"] == ["imitation-gap"]  # created once
    runs = client.search_runs([x.experiment_id for x in exps])
    assert sorted(r.info.run_name for r in runs) == [f"stage@{i}" for i in range(N)]
    assert all(r.info.status == "FINISHED" for r in runs)
