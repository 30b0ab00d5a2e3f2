"""The on-disk response cache: one JSON file per request key, published atomically (see :class:`ResponseCache`)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger("imitation_gap")


class ResponseCache:
    """One JSON file per key under ``root/<key[:2]>/<key>.json``.

    Writes go to a temporary file in the same directory, are fsynced, then published
    with a hard link (first writer wins; a later writer returns the stored entry, so
    every process sees one answer per key even at temperature > 0) or, where links are
    not supported or the stored entry is corrupt, ``os.replace``.  Readers therefore
    see no entry or a whole one.  An entry that does not parse, or whose key or checksum
    does not match, is a miss.
    """

    def __init__(self, root: Path, fsync: bool = True):
        self.root = Path(root)
        self.fsync = fsync
        self.corrupt = 0  # corrupt entries met by get()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

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
        if "sha256" in entry and entry["sha256"] != hashlib.sha256(content.encode()).hexdigest():
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
        except (ValueError, UnicodeDecodeError):
            entry = None
        if entry is None:
            self.corrupt += 1
            log.warning("response cache: ignoring the unreadable entry %s (it will be fetched again)", path.name)
        return entry

    def put(self, key: str, value: dict) -> dict:
        """Store ``value`` under ``key`` unless a valid entry is there; return the stored response."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"key": key, "content": value["content"], "prompt_tokens": int(value["prompt_tokens"]),
                 "completion_tokens": int(value["completion_tokens"]),
                 "sha256": hashlib.sha256(value["content"].encode()).hexdigest()}
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
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
