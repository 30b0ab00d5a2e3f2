"""Files: the repository root, atomic outputs, JSON and JSONL, nested-dict merges."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import DataError
from .paths import rebuild_hint  # a torn output of an earlier stage: the command that rebuilds it


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
def alive(pid: int) -> bool:
    """Whether a process ``pid`` runs (one of another user counts; a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc: kill(0) said it exists


STALE_UNOWNED_S = 3600  # a leftover with no pid in its name (written by older code) is stale after an hour


def sweep_leftovers(folder: Path, name: str, suffix: str) -> list[Path]:
    """Remove ``.<name>.<pid>.<random><suffix>`` siblings in ``folder`` whose process is gone (a ``kill -9``
    left them: the temporary copies of :func:`atomic_dir` and :func:`write_text_atomic`); return them."""
    pat = re.compile(rf"^\.{re.escape(name)}\.(?:(?P<pid>\d+)\.)?[A-Za-z0-9_]+{re.escape(suffix)}$")
    removed = []
    try:
        candidates = [f for f in folder.iterdir() if f.name.startswith(f".{name}.") and f.name.endswith(suffix)]
    except FileNotFoundError:
        return removed
    for f in candidates:
        m = pat.match(f.name)
        if not m:
            continue
        try:
            if m.group("pid"):
                stale = int(m.group("pid")) != os.getpid() and not alive(int(m.group("pid")))
            else:
                stale = time.time() - f.lstat().st_mtime > STALE_UNOWNED_S
        except FileNotFoundError:
            continue
        if stale:
            if f.is_dir() and not f.is_symlink():
                shutil.rmtree(f, ignore_errors=True)
            else:
                f.unlink(missing_ok=True)
            removed.append(f)
    return removed


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Write a directory in a temporary sibling; it replaces ``final`` only on success.

    The sibling is ``.<name>.<pid>.<random>.partial``; those that a killed process left are removed first."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(final.parent, final.name, ".partial")
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.", suffix=".partial", dir=final.parent))
    os.chmod(tmp, 0o755)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def lookup(d: Any, path: str) -> Any:
    """The value at dotted ``path`` (``"preference.expert.win_tie_rate"``) of nested mappings; None where a part
    is missing or not a mapping."""
    for k in path.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` through a temporary sibling (``.<name>.<pid>.<random>.tmp``) and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(path.parent, path.name, ".tmp")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def decode_utf8(data: bytes, path: str | Path) -> str:
    """``data`` as UTF-8 text (a UTF-8 byte-order mark is dropped); otherwise a :class:`DataError` that names
    the file, the line and column, and the likely encoding."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"{path}: UTF-16 text (it starts with a UTF-16 byte-order mark); save it as UTF-8")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if b"\x00" in data:
        line = data.count(b"\n", 0, data.index(b"\x00")) + 1
        raise DataError(f"{path}:{line}: NUL bytes: UTF-16 text or a binary file, not UTF-8 text; save it as UTF-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(f"{path}:{line}:{col}: not UTF-8 (byte 0x{data[e.start]:02x}: latin-1 or another "
                        "encoding?); save the file as UTF-8") from None


def read_text(path: str | Path) -> str:
    """A text file that must be UTF-8 (see :func:`decode_utf8`)."""
    return decode_utf8(Path(path).read_bytes(), path)


def read_jsonl(path: str | Path, fields: dict[str, type | tuple] | None = None, min_rows: int = 0,
               what: str = "", check: Callable[[dict], str | None] | None = None) -> list[dict]:
    """The records of a JSONL file (UTF-8, one JSON value per line; blank lines skipped).

    With ``fields`` (name -> type), each record must be an object holding those fields with values of
    those types; ``min_rows``: at least that many records; ``check(record)``: a further rule (a reason, or
    None).  Every failure is a :class:`DataError` naming the file, the line and what was expected
    (``what``: what the file is for)."""
    rows = []
    for i, line in enumerate(read_text(path).split("\n"), 1):  # not splitlines(): JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            raise DataError(f"{path}:{i}: not valid JSON ({getattr(e, 'msg', 'nested too deep')}); fix the file or "
                            f"{rebuild_hint(path)}") from None
        if fields is not None:
            want = ", ".join(f"{k!r}" for k in fields)
            if not isinstance(row, dict):
                raise DataError(f"{path}:{i}: a record must be a JSON object with {want}; got {type(row).__name__}")
            missing = [k for k in fields if k not in row]
            if missing:
                raise DataError(f"{path}:{i}: the record has no {missing[0]!r} (it has {sorted(row)[:8]}); each "
                                f"record needs {want}")
            for k, tp in fields.items():
                if not isinstance(row[k], tp) or isinstance(row[k], bool) and tp is not bool:
                    names = " or ".join(t.__name__ for t in (tp if isinstance(tp, tuple) else (tp,)))
                    raise DataError(f"{path}:{i}: {k!r} must be {names.replace('dict', 'an object')}, got "
                                    f"{json.dumps(row[k])[:60]}")
        why = check(row) if check else None
        if why:
            raise DataError(f"{path}:{i}: {why}")
        rows.append(row)
    if len(rows) < min_rows:
        raise DataError(f"{path}: {len(rows)} record(s); it needs at least {min_rows}" + (f" ({what})" if what else ""))
    return rows
