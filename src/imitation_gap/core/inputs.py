"""Outputs of earlier stages, checked before a stage reads them: a truncated, empty or missing file is one
:class:`~imitation_gap.core.errors.DataError` line that names the file and the command that rebuilds it
(``run_cli`` prints it and exits 2), never a traceback from deep inside transformers or safetensors.

The checks are cheap (a JSON parse, a safetensors header and the file's length against it), so a stage
runs them on every input it reads: :func:`require_json`, :func:`require_jsonl`, :func:`require_tokenizer`,
:func:`require_checkpoint`.  :func:`rebuild_hint` maps a path to the stage that writes it.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from .errors import DataError
from .io import read_jsonl
from .paths import rebuild_hint

def _bad(path: Path, why: str) -> DataError:
    return DataError(f"{path}: {why}; {rebuild_hint(path)}")


def require_json(path: str | Path, kind: type = dict) -> Any:
    """The JSON value of ``path`` (an object by default); missing, empty, truncated or of another type: DataError."""
    path = Path(path)
    if not path.is_file():
        raise _bad(path, "is missing")
    raw = path.read_bytes()
    if not raw.strip():
        raise _bad(path, f"is empty ({len(raw)} bytes)")
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise _bad(path, f"is truncated or not JSON ({getattr(e, 'msg', type(e).__name__)}, "
                         f"{len(raw)} bytes)") from None
    if not isinstance(value, kind):
        raise _bad(path, f"holds a JSON {type(value).__name__}, not an {kind.__name__}")
    return value


def require_jsonl(path: str | Path, min_rows: int = 1) -> list[dict]:
    """The records of a JSONL output of an earlier stage: at least ``min_rows``, each line whole."""
    path = Path(path)
    if not path.is_file():
        raise _bad(path, "is missing")
    rows = read_jsonl(path)  # a torn line: DataError naming the line and the command that rebuilds the file
    if len(rows) < min_rows:
        raise _bad(path, f"holds {len(rows)} record(s) ({path.stat().st_size} bytes), at least {min_rows} needed")
    return rows


def _safetensors(path: Path) -> None:
    """A safetensors file whose header parses and whose length holds every tensor the header lists."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _bad(path, f"is truncated ({size} bytes: no safetensors header)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100 * 2 ** 20:
            raise _bad(path, f"is truncated or not safetensors (header of {n} bytes in a file of {size})")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError):
            raise _bad(path, "is truncated or not safetensors (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise _bad(path, "is not safetensors (its header is not an object)")
    ends = [t.get("data_offsets", [0, 0])[1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    need = 8 + n + max(ends, default=0)
    if size < need:
        raise _bad(path, f"is truncated ({size} of the {need} bytes its header lists)")


def require_tokenizer(folder: str | Path) -> None:
    """A tokenizer folder that ``AutoTokenizer.from_pretrained`` can load: present, its JSON files whole."""
    folder = Path(folder)
    if not folder.is_dir():
        raise _bad(folder, "is missing (no tokenizer)")
    files = [f for f in ("tokenizer.json", "tokenizer_config.json") if (folder / f).exists()]
    if not files and not any((folder / f).exists() for f in ("tokenizer.model", "vocab.json")):
        raise _bad(folder, "holds no tokenizer (tokenizer.json, tokenizer_config.json, tokenizer.model, vocab.json)")
    for f in files:
        require_json(folder / f)


def require_checkpoint(folder: str | Path) -> None:
    """A checkpoint folder ``from_pretrained`` can load: config.json, tokenizer, and safetensors weights (one file,
    or the shards that ``model.safetensors.index.json`` lists), each whole."""
    folder = Path(folder)
    if not folder.is_dir():
        raise _bad(folder, "is missing")
    require_json(folder / "config.json")
    require_tokenizer(folder)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set((require_json(index).get("weight_map") or {}).values()))
        if not shards:
            raise _bad(index, "lists no weight shard")
    else:
        shards = ["model.safetensors"]
    for shard in shards:
        f = folder / shard
        if not f.is_file():
            raise _bad(f, "is missing")
        _safetensors(f)
