"""Files: the repository root, atomic outputs, JSON and JSONL, nested-dict merges."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import DataError


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
