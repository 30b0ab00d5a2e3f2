"""The on-disk response cache: one JSON file per request key, published atomically (see :class:`ResponseCache`).

Each entry also records what served it (``endpoint``: the host, or the embedded teacher's world
hash, and ``model``), so the answers of one endpoint can be dropped, e.g. after a broken server
answered junk at the URL where the real teacher now runs::

    python -m imitation_gap.llm.cache list                               # entries per endpoint and model
    python -m imitation_gap.llm.cache drop --endpoint 127.0.0.1:8000     # every answer that host gave
    python -m imitation_gap.llm.cache drop --endpoint api.openai.com --model gpt-3.5-turbo

(``--dir`` names another cache than ``<repo root>/.cache/llm``; ``--params`` reads
``teacher.cache_dir``.)  The next run asks those prompts again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ..core.io import alive

log = logging.getLogger("imitation_gap")

_TMP_RE = re.compile(r"^\.tmp-(?:(?P<pid>\d+)-)?.*\.json$")
_SWEPT: set[Path] = set()  # cache roots swept by this process
STALE_UNOWNED_S = 3600  # a temporary file with no pid in its name (older code) is stale after an hour


class ResponseCache:
    """One JSON file per key under ``root/<key[:2]>/<key>.json``.

    Writes go to a temporary file in the same directory (``.tmp-<pid>-*.json``), are fsynced,
    then published with a hard link (first writer wins; a later writer returns the stored entry,
    so every process sees one answer per key even at temperature > 0) or, where links are not
    supported or the stored entry is corrupt, ``os.replace``.  Readers therefore see no entry or a
    whole one.  An entry that does not parse, or whose key or checksum does not match, is a miss.
    Temporary files that a killed writer left behind are removed when a process first opens the
    cache (:meth:`sweep`).
    """

    def __init__(self, root: Path, fsync: bool = True):
        self.root = Path(root)
        self.fsync = fsync
        self.corrupt = 0  # corrupt entries met by get()
        if self.root.resolve() not in _SWEPT:
            _SWEPT.add(self.root.resolve())
            self.sweep()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def sweep(self) -> int:
        """Remove the temporary files of writers that are gone (a ``kill -9`` mid-write); return how many."""
        removed = 0
        if not self.root.is_dir():
            return 0
        now = time.time()
        for sub in self.root.iterdir():
            if not sub.is_dir():
                continue
            for f in sub.glob(".tmp-*.json"):
                m = _TMP_RE.match(f.name)
                if not m:
                    continue
                pid = m.group("pid")
                try:
                    stale = (not alive(int(pid))) if pid else now - f.stat().st_mtime > STALE_UNOWNED_S
                    if stale and (not pid or int(pid) != os.getpid()):
                        f.unlink()
                        removed += 1
                except FileNotFoundError:
                    pass
        if removed:
            log.info("response cache: removed %d temporary file(s) left by killed writers", removed)
        return removed

    @staticmethod
    def _valid(key: str, entry: Any) -> dict | None:
        if not isinstance(entry, dict):
            return None
        content = entry.get("content")
        if not isinstance(content, str) or not content.strip():
            return None
        if not all(isinstance(entry.get(k), int) for k in ("prompt_tokens", "completion_tokens")):
            return None
        if "key" in entry and entry["key"] != key:
            return None
        try:
            digest = hashlib.sha256(content.encode()).hexdigest()
        except UnicodeEncodeError:  # a lone surrogate: no answer anyone can use
            return None
        if "sha256" in entry and entry["sha256"] != digest:
            return None
        return {"content": content, "prompt_tokens": entry["prompt_tokens"],
                "completion_tokens": entry["completion_tokens"]}

    def get(self, key: str) -> dict | None:
        """The cached response ``{'content', 'prompt_tokens', 'completion_tokens'}``, or None."""
        path = self._path(key)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            entry = self._valid(key, json.loads(raw))
        except (ValueError, UnicodeDecodeError, RecursionError):
            entry = None
        if entry is None:
            self.corrupt += 1
            log.warning("response cache: ignoring the unreadable entry %s (it will be fetched again)", path.name)
        return entry

    def drop(self, key: str) -> None:
        """Remove the entry of ``key`` (if any)."""
        self._path(key).unlink(missing_ok=True)

    def put(self, key: str, value: dict, meta: dict | None = None) -> dict:
        """Store ``value`` under ``key`` unless a valid entry is there; return the stored response.

        ``meta`` (``endpoint``, ``model``) is stored beside it, for ``drop``."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"key": key, "content": value["content"], "prompt_tokens": int(value["prompt_tokens"]),
                 "completion_tokens": int(value["completion_tokens"]),
                 "sha256": hashlib.sha256(value["content"].encode()).hexdigest(), **(meta or {})}
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.getpid()}-", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(entry, f)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            try:
                os.link(tmp, path)  # atomic create-if-absent
                return self._valid(key, entry)  # type: ignore[return-value]
            except FileExistsError:
                stored = self.get(key)
                if stored is not None:
                    return stored  # first writer wins
                os.replace(tmp, path)  # the stored entry is corrupt: overwrite it atomically
            except OSError:
                os.replace(tmp, path)  # no hard links on this file system
            return self._valid(key, entry)  # type: ignore[return-value]
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

    def entries(self):
        """``(path, endpoint, model)`` of every entry (endpoint and model None for entries that predate them)."""
        if not self.root.is_dir():
            return
        for f in sorted(self.root.glob("??/*.json")):
            if f.name.startswith(".tmp-"):
                continue
            try:
                entry = json.loads(f.read_bytes())
            except (ValueError, OSError, RecursionError):
                entry = {}
            entry = entry if isinstance(entry, dict) else {}
            yield f, entry.get("endpoint"), entry.get("model")

    def drop_where(self, endpoint: str | None = None, model: str | None = None, everything: bool = False) -> int:
        """Remove the entries served by ``endpoint`` (and ``model``, if given), or all; return how many."""
        n = 0
        for f, ep, m in list(self.entries()):
            if everything or ((endpoint is None or ep == endpoint) and (model is None or m == model)):
                f.unlink(missing_ok=True)
                n += 1
        return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="List or drop cached teacher/judge answers, by what served them.")
    ap.add_argument("action", choices=["list", "drop"])
    ap.add_argument("--dir", help="the cache directory (default: teacher.cache_dir of --params, or "
                                  "<repo root>/.cache/llm)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--endpoint", help="drop: the host (e.g. 127.0.0.1:8000, api.openai.com) or embedded:<hash> "
                                       "shown by `list`")
    ap.add_argument("--model", help="drop: only the answers of this model")
    ap.add_argument("--all", action="store_true", help="drop: every entry, also those that name no endpoint")
    args = ap.parse_args(argv)
    if args.dir:
        root = Path(args.dir)
    else:
        from ..core.io import repo_root

        root = repo_root() / ".cache" / "llm"
        if Path(args.params).exists():
            from ..core.config import load_params

            d = load_params(args.params).teacher.cache_dir
            if d:
                root = Path(d) if Path(d).is_absolute() else repo_root() / d
    cache = ResponseCache(root)
    if args.action == "list":
        counts = Counter((ep or "(not recorded)", m or "(not recorded)") for _, ep, m in cache.entries())
        for (ep, m), n in sorted(counts.items()):
            print(f"{n:8d}  {ep}  {m}")
        print(f"{sum(counts.values()):8d}  entries in {root}")
        return 0
    if not (args.endpoint or args.model or args.all):
        ap.error("drop needs --endpoint (and optionally --model), or --all")
    n = cache.drop_where(args.endpoint, args.model, args.all)
    print(f"dropped {n} cached answer(s) from {root}; the next run asks for them again")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
