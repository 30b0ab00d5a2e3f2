"""Shared plumbing of the stages: repo root, atomic outputs, MLflow tracking, CLI errors."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from .config import ConfigError, DataError, EndpointError, Params

log = logging.getLogger("imitation_gap")

# No usage telemetry from the libraries: the study runs offline and talks only to 127.0.0.1
# (and to the endpoints named in params).
for _var, _value in (("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "true"),
                     ("HF_HUB_DISABLE_TELEMETRY", "1"), ("DVC_NO_ANALYTICS", "1")):
    os.environ.setdefault(_var, _value)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("httpx", "httpx2", "urllib3", "openai", "filelock", "datasets", "alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def deep_update(base: dict, over: dict) -> dict:
    """Merge ``over`` into ``base`` key by key (nested mappings merged, everything else replaced)."""
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_update(base[k], v)
        else:
            base[k] = v
    return base


def repo_root() -> Path:
    """The repository whose caches and MLflow store this run shares.

    ``dvc exp run --temp/--queue`` runs each experiment in a copy under
    ``.dvc/tmp/exps/``; DVC then sets ``DVC_ROOT`` to the parent repository, so every
    copy logs to one store and reads one response cache.
    """
    root = os.environ.get("DVC_ROOT")
    if root:
        return Path(root).resolve()
    return Path.cwd().resolve()


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# -- outputs: never leave a half-written result where a later stage would take it ------
@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Write a directory in a temporary sibling; it replaces ``final`` only on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    os.chmod(tmp, 0o755)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def write_json(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict]:
    rows = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{i}: not valid JSON ({e.msg}); fix or regenerate the file") from None
    return rows


# -- MLflow --------------------------------------------------------------------------
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
        # artifacts beside the store, not in the (temporary) working directory
        art = Path(uri[len("sqlite:///"):]).parent / "mlartifacts"
        if mlflow.get_experiment_by_name(p.mlflow.experiment) is None:
            mlflow.create_experiment(p.mlflow.experiment, artifact_location=art.as_uri())
    mlflow.set_experiment(p.mlflow.experiment)
    tags = {"stage": stage.split("@")[0], "dvc_stage": stage, "git_commit": git_commit(),
            "world": p.world, "dvc_exp_name": os.environ.get("DVC_EXP_NAME", "")}
    with mlflow.start_run(run_name=stage, tags=tags) as run:
        flat = {k: str(v)[:500] for k, v in _flatten(params).items()}
        mlflow.log_params(flat)
        yield run


def log_metrics(metrics: dict, step: int | None = None) -> None:
    import mlflow

    flat = {k: float(v) for k, v in _flatten(metrics).items() if isinstance(v, (int, float)) and v == v}
    mlflow.log_metrics(flat, step=step)


# -- CLI -----------------------------------------------------------------------------
def run_cli(main: Callable[[list[str] | None], None]) -> None:
    """Run a stage's ``main``; turn known user errors into one clear line and exit 2.

    Under ``make run`` the command hands itself to the warm server (:mod:`imitation_gap.warm`)
    and exits with the code of the stage it ran there."""
    from .warm import handoff

    handoff()
    setup_logging()
    try:
        main(None)
    except (ConfigError, DataError, EndpointError, FileNotFoundError) as e:
        # a bad param, missing input or unreachable endpoint: say what and how to fix it
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
