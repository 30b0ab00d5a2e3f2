"""One stage's results through the DVC remote: pushed by the worker that ran it, recorded by the driver.

The Ray backend without a shared filesystem (:mod:`imitation_gap.runner.ray_backend`, ``--workspace
clone``) runs each stage on a worker, in a scratch clone of the driver's commit, as ``dvc repro
--single-item --pull <stage>``.  Then, in that clone::

    python -m imitation_gap.runner.remote push <stage>

sends the objects of every output of the stage's run-cache entry (the git-tracked metrics too: DVC's
run cache commits them to the cache, but ``dvc push`` sends cached outputs only) and, last, the entry
itself (``runs/<key>/<value>``): a stage whose entry is in the remote is complete there.  It prints
``{"key": ..., "value": ...}``.  The driver, in its own workspace::

    python -m imitation_gap.runner.remote record <stage> <key> <value>

fetches that entry and its objects, checks that the stage's deps here hash to the same key, and
then runs ``dvc repro --single-item <stage>``, which restores the stage from the run cache ("Stage
'...' is cached - skipping run, checking out outputs") and writes ``dvc.lock`` as a local run would.
A stage is recorded once, whole, or not at all: DVC writes its entry in ``dvc.lock`` after checking
every output out, under its repository lock.
"""

from __future__ import annotations

import json
import os
import sys


def _stage(repo, name: str):
    for s in repo.index.stages:
        if s.addressing == name:
            return s
    raise SystemExit(f"error: no stage {name!r} in dvc.yaml")


def _runs_path(odb, key: str, value: str) -> str:
    return odb.fs.join(odb.path, "runs", key[:2], key, value)


def push(name: str) -> dict:
    """Push the run-cache entry of ``name`` as dvc.lock records it here, with every object it names."""
    from dvc.repo import Repo
    from dvc.stage.cache import _get_cache_hash, _get_stage_hash
    from dvc.stage.serialize import to_single_stage_lockfile

    with Repo() as repo:
        stage = _stage(repo, name)
        key = _get_stage_hash(stage)
        value = _get_cache_hash(to_single_stage_lockfile(stage))
        entry = repo.stage_cache._load_cache(key, value)
        if not entry:
            raise SystemExit(f"error: no run-cache entry for {name} ({key}/{value}): did the stage run here?")
        cached = repo.stage_cache._create_stage(entry, wdir=stage.wdir)  # every out as cached, as restore reads it
        for objs in cached.get_used_objs().values():
            failed = repo.cloud.push(objs).failed
            if failed:
                raise SystemExit(f"error: {name}: {len(failed)} object(s) could not be pushed to the DVC remote")
        remote = repo.cloud.get_remote_odb(None, "push --run-cache", hash_name="md5-dos2unix")
        remote.fs.makedirs(remote.fs.parent(_runs_path(remote, key, value)), exist_ok=True)
        remote.fs.put_file(repo.stage_cache._get_cache_path(key, value), _runs_path(remote, key, value))
    return {"key": key, "value": value}


def record(name: str, key: str, value: str) -> None:
    """Fetch the entry ``key/value`` of ``name`` and its objects; check it is this workspace's stage."""
    from dvc.repo import Repo
    from dvc.stage.cache import _get_stage_hash

    with Repo() as repo:
        remote = repo.cloud.get_remote_odb(None, "fetch --run-cache", hash_name="md5-dos2unix")
        dst = repo.stage_cache._get_cache_path(key, value)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        tmp = f"{dst}.{os.getpid()}.tmp"
        remote.fs.get_file(_runs_path(remote, key, value), tmp)
        os.replace(tmp, dst)  # newest under its key: the one `dvc repro` restores
        entry = repo.stage_cache._load_cache(key, value)
        cached = repo.stage_cache._create_stage(entry)
        for objs in cached.get_used_objs().values():
            failed = repo.cloud.pull(objs).failed
            if failed:
                raise SystemExit(f"error: {name}: {len(failed)} object(s) missing from the DVC remote; not recorded")
        stage = _stage(repo, name)
        stage.save_deps()  # the deps as they are here: the upstream stages this driver recorded
        here = _get_stage_hash(stage)
        if here != key:
            raise SystemExit(f"error: {name}: the worker ran it on other inputs than this workspace holds "
                             f"(run-cache key {key}, here {here}); not recorded")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["push"] and len(argv) == 2:
        print(json.dumps(push(argv[1])))
        return 0
    if argv[:1] == ["record"] and len(argv) == 4:
        record(*argv[1:])
        from . import dvcrun

        # DVC restores the stage from the run cache and writes dvc.lock (as `dvcrun --wait-for-lock repro ...`)
        return dvcrun.main(["--wait-for-lock", "repro", "--single-item", argv[1]])
    print("usage: python -m imitation_gap.runner.remote push <stage> | record <stage> <key> <value>",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
