"""DVC's own command line, as `make run`'s runner calls it: dvc.lock read by libyaml when it has no comment.

For every stage it runs, ``dvc repro`` rewrites ``dvc.lock`` whole, holding the repository
lock: it parses the file with ruamel's round-trip loader (pure Python; it keeps comments and
formatting), updates the stage's entry and dumps the file again.  On the default study's lock
(154 stages, ~11,000 lines) the round-trip parse takes ~1.7 s and the dump ~1.0 s, once per
stage, one stage at a time: that parse alone is ~4 minutes of the study on one core, with the
other core waiting for the lock.

DVC writes ``dvc.lock`` itself, and a lock file with no comment in it holds nothing that the
round-trip loader keeps and the safe loader loses: the safe loader (libyaml, ~0.3 s on that file)
gives the same data, and DVC's own dumper then writes the same bytes (``tests/test_dvcrun.py``
checks both paths against each other).  This module parses ``dvc.lock`` that way and changes
nothing else: every other file, and a ``dvc.lock`` with a ``#`` anywhere in it, goes through
DVC's round-trip loader as usual.

Run: ``python -m imitation_gap.runner.dvcrun repro --single-item <stage>`` (any ``dvc`` arguments).
Plain ``dvc`` gives the same ``dvc.lock``, a little slower.
"""

from __future__ import annotations

import os
import sys


def fast_lock_loader() -> None:
    """Parse a comment-free ``dvc.lock`` with the safe (libyaml) loader when DVC updates it."""
    from dvc.utils.serialize import _yaml

    round_trip = getattr(_yaml, "parse_yaml_for_update", None)
    if round_trip is None or not hasattr(_yaml, "parse_yaml") or getattr(round_trip, "fast_lock", False):
        return  # already done, or a DVC laid out differently: plain DVC (tests/test_dvcrun.py checks the pinned one)

    def parse_yaml_for_update(text, path):
        if os.path.basename(str(path)) == "dvc.lock" and "#" not in text:
            return _yaml.parse_yaml(text, path)  # plain dicts and lists: DVC's dumper takes them alike
        return round_trip(text, path)

    parse_yaml_for_update.fast_lock = True  # type: ignore[attr-defined]
    _yaml.parse_yaml_for_update = parse_yaml_for_update  # modify_yaml looks it up at each call


def main(argv: list[str] | None = None) -> int:
    fast_lock_loader()
    from dvc.cli import main as dvc_main

    return dvc_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
