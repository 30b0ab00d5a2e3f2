"""MLflow tracking: one run per stage execution, tagged with the git commit and ``DVC_EXP_NAME``.

The store is chosen in this order: ``MLFLOW_TRACKING_URI``, then ``mlflow.tracking_uri`` in
params, then SQLite at ``<repo root>/mlflow.db`` (shared by ``dvc exp run --temp/--queue`` copies).
"""

from __future__ import annotations

import os
import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock

from .config import Params
from .io import repo_root


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def tracking_uri(p: Params) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if p.mlflow.tracking_uri:
        return p.mlflow.tracking_uri
    return f"sqlite:///{repo_root() / 'mlflow.db'}"


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


@contextmanager
def mlflow_run(p: Params, stage: str, params: dict) -> Iterator[Any]:
    """One MLflow run per stage execution, tagged with the git commit and DVC_EXP_NAME."""
    import mlflow

    uri = tracking_uri(p)
    os.environ["MLFLOW_TRACKING_URI"] = uri  # the HF Trainer's MLflowCallback reads it
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        # Stages that start together (`make run`, `dvc queue start -j 2`) on a store that no process has opened
        # yet would each create its tables (MLflow's migrations fail: "duplicate column name: step") and each
        # create the experiment: one process at a time opens it, beside the store's file.
        with FileLock(f"{db}.lock"):
            if mlflow.get_experiment_by_name(p.mlflow.experiment) is None:
                # artifacts beside the store, not in the (temporary) working directory
                mlflow.create_experiment(p.mlflow.experiment, artifact_location=(db.parent / "mlartifacts").as_uri())
            exp = mlflow.set_experiment(p.mlflow.experiment)
    else:
        exp = mlflow.set_experiment(p.mlflow.experiment)
    fail_orphans(exp.experiment_id)
    tags = {"stage": stage.split("@")[0], "dvc_stage": stage, "git_commit": git_commit(),
            "world": p.world, "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
            "host": socket.gethostname(), "pid": str(os.getpid())}
    with mlflow.start_run(run_name=stage, tags=tags) as run:
        flat = {k: str(v)[:500] for k, v in _flatten(params).items()}
        mlflow.log_params(flat)
        yield run


def fail_orphans(experiment_id: str) -> list[str]:
    """Mark FAILED the runs of this experiment left RUNNING by a stage that was killed (``kill -9``, a lost
    machine) on this host: their ``pid`` tag names a process that is gone.  Returns their ids."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from .io import alive

    host, gone = socket.gethostname(), []
    runs = mlflow.search_runs(experiment_ids=[experiment_id], filter_string="attributes.status = 'RUNNING'",
                              output_format="list")
    for r in runs:
        pid = r.data.tags.get("pid", "")
        if r.data.tags.get("host") == host and pid.isdigit() and int(pid) != os.getpid() and not alive(int(pid)):
            MlflowClient().set_terminated(r.info.run_id, status="FAILED")
            gone.append(r.info.run_id)
    if gone:
        import logging

        logging.getLogger("imitation_gap").warning(
            "mlflow: %d run(s) left RUNNING by a killed stage marked FAILED: %s", len(gone), ", ".join(gone))
    return gone


def log_metrics(metrics: dict, step: int | None = None) -> None:
    import mlflow

    flat = {k: float(v) for k, v in _flatten(metrics).items() if isinstance(v, (int, float)) and v == v}
    mlflow.log_metrics(flat, step=step)


class _StageParamsFirst:
    """``mlflow`` for the Trainer's ``MLflowCallback``, except that ``log_params`` leaves out the keys that the
    active run already holds: the stage logged them first (:func:`mlflow_run`), and MLflow refuses a second value
    for a key (``MlflowException``: changing param values is not allowed)."""

    def __init__(self, mlflow):
        self._mlflow = mlflow

    def __getattr__(self, name):
        return getattr(self._mlflow, name)

    def log_params(self, params: dict, *args, **kwargs):
        run = self._mlflow.active_run()
        held = self._mlflow.MlflowClient().get_run(run.info.run_id).data.params if run else {}
        new = {k: v for k, v in params.items() if k not in held}
        return self._mlflow.log_params(new, *args, **kwargs) if new else None


def log_synchronously(trainer) -> None:
    """Swap a ``transformers.Trainer``'s ``MLflowCallback`` for one that logs synchronously: the same rows,
    ~1 s sooner (the stages' trainers: pretraining and SFT).

    transformers' callback logs with ``synchronous=False`` (MLflow's async queue) whenever MLflow >= 2.8;
    ending the run then joins the queue's thread, which waits on the queue for up to a second: ~1 s of
    every stage, for ~20 rows of metrics.  Synchronous calls write the same rows before they return.
    The Trainer's parameters go into the stage's run beside the stage's own; a key the stage already
    logged keeps the stage's value (asynchronously, MLflow dropped the whole batch of ~100 parameters
    that held such a key, and said nothing)."""
    from transformers.integrations import MLflowCallback

    class SyncMLflowCallback(MLflowCallback):
        _async_log = property(lambda self: False, lambda self, value: None)  # setup() assigns it: ignored

        def __init__(self):
            super().__init__()
            self._ml_flow = _StageParamsFirst(self._ml_flow)

    handler = trainer.callback_handler
    handler.callbacks = [SyncMLflowCallback() if type(cb) is MLflowCallback else cb for cb in handler.callbacks]
