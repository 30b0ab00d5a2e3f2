"""DVC's own command line, as `make run`'s runner calls it: dvc.lock written atomically, and read by
libyaml when it has no comment.

**Atomic writes.**  DVC 3.67 writes ``dvc.lock`` (and every other file it dumps: ``dvc.yaml``,
``.dvc`` files, its config) with ``open(path, "w+")`` and then the dumper's writes
(``dvc/utils/serialize/_common.py:_dump_data``).  On the default study's lock that takes ~1 s per
stage, and Ctrl-C or ``kill -9`` in that second leaves an empty file, invalid YAML, or worst a file
that parses but holds only some of the stages (``dvc status`` then calls the others changed, and
they re-run).  :func:`atomic_dumps` makes every such write atomic: the text is dumped in memory,
written to a temporary file in the same directory (``.<name>.<pid>.<random>.tmp``), fsynced, and
renamed over the file with ``os.replace``; an interrupt leaves the old file or the new one, whole.
A temporary file that a ``kill -9`` left behind is removed by the next call (:func:`sweep`, when its
process is gone).  The bytes are DVC's own dumper's, so the lock is byte for byte what ``dvc``
writes (``tests/test_dvcrun.py``).  The upstream report: ``docs/upstream-dvc-lock-atomic.md``.

**Fast lock parse.**  For every stage it runs, ``dvc repro`` rewrites ``dvc.lock`` whole, holding the
repository lock: it parses the file with ruamel's round-trip loader (pure Python; it keeps comments
and formatting), updates the stage's entry and dumps the file again.  On the default study's lock
(130 stages, ~11,600 lines) the round-trip parse takes ~2 s and the dump ~1.4 s, once per
stage, one stage at a time: that parse alone is ~4 minutes of the study on one core, with the
other core waiting for the lock.  A lock file with no comment in it holds nothing that the
round-trip loader keeps and the safe loader loses: the safe loader (libyaml, ~0.3 s on that file)
gives the same data, and DVC's own dumper then writes the same bytes (``tests/test_dvcrun.py``
checks both paths against each other).  This module parses ``dvc.lock`` that way; every other
file, and a ``dvc.lock`` with a ``#`` anywhere in it, goes through DVC's round-trip loader as usual.

**Spliced lock dump.**  DVC then dumps the whole lock again (ruamel's pure-Python emitter, ~0.6 s on
that file) for the one stage whose entry changed.  When the lock was read by the fast loader, the
wrapper writes the text of every entry that did not change as it was read, and dumps only the
entries that did (with DVC's dumper, under the same ``stages:`` key, so in the same context).  An
entry's text depends only on its data, so the result is the text the whole dump gives
(``tests/test_dvcrun.py`` compares them on the study's lock, edited every way ``dvc`` edits it); a lock
it cannot split into one block per entry, or whose data shares objects (YAML anchors), is dumped
whole.

Test hook: ``IMITATION_GAP_LOCK_PAUSE=<point>:<marker file>`` makes the first process that reaches
``<point>`` of a ``dvc.lock`` write (``open``: temporary file created; ``write``: half the text
written; ``fsync``: all written and synced, not yet renamed; ``replace``: renamed) create the
marker (holding its pid) and wait there until it is signalled, so that a test can interrupt it
at exactly that point (``tests/test_dvcrun.py``).

Run: ``python -m imitation_gap.runner.dvcrun repro --single-item <stage>`` (any ``dvc`` arguments).
Plain ``dvc`` gives the same ``dvc.lock``, a little slower, and not atomically.
"""

from __future__ import annotations

import io
import os
import re
import sys
import tempfile
import time
from pathlib import Path

PAUSE_ENV = "IMITATION_GAP_LOCK_PAUSE"
PAUSE_POINTS = ("open", "write", "fsync", "replace")
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")


def fast_lock_loader() -> None:
    """Parse a comment-free ``dvc.lock`` with the safe (libyaml) loader when DVC updates it."""
    from dvc.utils.serialize import _yaml

    round_trip = getattr(_yaml, "parse_yaml_for_update", None)
    if round_trip is None or not hasattr(_yaml, "parse_yaml") or getattr(round_trip, "fast_lock", False):
        return  # already done, or a DVC laid out differently: plain DVC (tests/test_dvcrun.py checks the pinned one)

    def parse_yaml_for_update(text, path):
        if os.path.basename(str(path)) == "dvc.lock" and "#" not in text:
            data = _yaml.parse_yaml(text, path)  # plain dicts and lists: DVC's dumper takes them alike
            _READ[os.path.realpath(os.fspath(path))] = (text, _fingerprints(data))
            return data
        return round_trip(text, path)

    parse_yaml_for_update.fast_lock = True  # type: ignore[attr-defined]
    _yaml.parse_yaml_for_update = parse_yaml_for_update  # modify_yaml looks it up at each call


# -- spliced dumps of dvc.lock --------------------------------------------------------------
_READ: dict[str, tuple[str, dict[str, str] | None]] = {}  # dvc.lock as the fast loader read it: text, entries
_HEAD = "schema: '2.0'\nstages:\n"


def _fingerprints(data) -> dict[str, str] | None:
    """Each stage entry of a lock, as text that differs whenever the entry (its values, types or order) does."""
    import json

    if not isinstance(data, dict) or list(data) != ["schema", "stages"] or not isinstance(data["stages"], dict):
        return None
    try:
        return {name: json.dumps(entry, default=repr) for name, entry in data["stages"].items()}
    except (TypeError, ValueError):
        return None


def _shares_objects(data) -> bool:
    """Whether a dict or list occurs twice in ``data``: DVC's dumper would write an anchor and aliases."""
    seen: set[int] = set()
    todo = [data]
    while todo:
        x = todo.pop()
        if isinstance(x, (dict, list)):
            if id(x) in seen:
                return True
            seen.add(id(x))
            todo.extend(x.values() if isinstance(x, dict) else x)
    return False


def _blocks(text: str, names: list[str]) -> dict[str, str] | None:
    """Split a lock's text into the text of each stage entry (``names`` in the file's order), or None."""
    if not text.startswith(_HEAD):
        return None
    lines = text[len(_HEAD):].splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith("  ") and line[2:3].strip()]
    if len(starts) != len(names) or (starts and starts[0] != 0):
        return None
    out = {}
    for name, a, b in zip(names, starts, starts[1:] + [len(lines)]):
        block = "".join(lines[a:b])
        if not block.startswith(f"  {name}:"):
            return None  # a name the dumper quotes, or not a lock this dumper wrote
        out[name] = block
    return out


def splice_lock(old_text: str, old: dict[str, str] | None, data, dumper) -> str | None:
    """The text ``dumper`` gives for ``data``, from ``old_text`` (whose entries' fingerprints are ``old``) and
    dumps of the entries that changed; None where that cannot be sure (then dump the whole lock)."""
    new = _fingerprints(data)
    if old is None or not new or data["schema"] != "2.0" or _shares_objects(data):
        return None  # no entry left: the dumper writes `stages: {}`, on the key's line
    if "&id" in old_text:  # anchors written by an earlier dump: dump whole
        return None
    blocks = _blocks(old_text, list(old))
    if blocks is None:
        return None
    parts = [_HEAD]
    for name, entry in data["stages"].items():
        if old.get(name) == new[name]:
            parts.append(blocks[name])
            continue
        stream = io.StringIO()
        dumper({"stages": {name: entry}}, stream)
        text = stream.getvalue()
        if not text.startswith(f"stages:\n  {name}:"):
            return None
        parts.append(text[len("stages:\n"):])
    return "".join(parts)


# -- atomic writes -------------------------------------------------------------------------
def pause_point(point: str, path: str | os.PathLike) -> None:
    """The test hook (see the module docstring): wait at ``point`` of a ``dvc.lock`` write if asked to."""
    spec = os.environ.get(PAUSE_ENV)
    if not spec or os.path.basename(os.fspath(path)) != "dvc.lock":
        return
    want, _, marker = spec.partition(":")
    if want != point or not marker:
        return
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)  # the first process only
    except FileExistsError:
        return
    os.write(fd, f"{os.getpid()} {point}\n".encode())
    os.close(fd)
    while True:  # until a signal ends or interrupts this process
        time.sleep(3600)


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file in its directory, fsync, ``os.replace``."""
    path = os.path.realpath(os.fspath(path))  # a symlinked file: replace its target, keep the link
    folder, name = os.path.split(path)
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask  # what open(path, "w") would give
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.{os.getpid()}.", suffix=".tmp", dir=folder or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            pause_point("open", path)
            half = len(text) // 2
            f.write(text[:half])
            f.flush()
            pause_point("write", path)
            f.write(text[half:])
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        pause_point("fsync", path)
        os.replace(tmp, path)
    except BaseException:  # Ctrl-C included: leave the old file as it was, and no temporary file
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # the rename itself survives a power loss
        dfd = os.open(folder or ".", os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    pause_point("replace", path)


def atomic_dumps() -> None:
    """Make DVC's ``_dump_data`` (every dump of ``dvc.lock``, ``dvc.yaml``, ``.dvc`` files) write atomically."""
    from dvc.utils.serialize import _common, _json, _py, _toml, _yaml

    original = getattr(_common, "_dump_data", None)
    if original is None or getattr(original, "atomic", False):
        return  # already done (or a DVC laid out differently: plain DVC)

    def _dump_data(path, data, dumper, fs=None, **dumper_args):
        if fs is not None and getattr(fs, "protocol", None) != "local":
            return original(path, data, dumper, fs=fs, **dumper_args)  # not a local file: DVC's own way
        text = None
        if os.path.basename(os.fspath(path)) == "dvc.lock" and dumper is _yaml._dump and not dumper_args:
            read = _READ.pop(os.path.realpath(os.fspath(path)), None)
            if read is not None:
                text = splice_lock(read[0], read[1], data, dumper)
        if text is None:
            stream = io.StringIO()
            dumper(data, stream, **dumper_args)
            text = stream.getvalue()
        write_atomic(path, text)

    _dump_data.atomic = True  # type: ignore[attr-defined]
    for module in (_common, _json, _py, _toml, _yaml):  # each imported the name for itself
        if getattr(module, "_dump_data", None) is original:
            module._dump_data = _dump_data


def sweep(folder: str | os.PathLike = ".") -> list[Path]:
    """Remove the temporary files of :func:`write_atomic` whose process is gone (left by a ``kill -9``)."""
    from ..core.io import alive
    removed = []
    for f in Path(folder).glob(".*.tmp"):
        m = _TMP_RE.match(f.name)
        if m and int(m.group("pid")) != os.getpid() and not alive(int(m.group("pid"))):
            try:
                f.unlink()
                removed.append(f)
            except FileNotFoundError:
                pass
    return removed


def main(argv: list[str] | None = None) -> int:
    sweep(".")
    atomic_dumps()
    fast_lock_loader()
    from dvc.cli import main as dvc_main

    return dvc_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
