"""`python -m imitation_gap.runner.dvcrun` (the runner's `dvc`) writes the dvc.lock that `dvc` writes, byte for byte.

Two copies of one pipeline of script stages, whose lock entries hold what the study's do (nested
params, floats, empty strings, lists of dicts, a command and a value long enough to be folded):
one is run by `dvc repro`, the other by the wrapper; then a param changes and both re-run.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml

from conftest import run

LONG = "hf://datasets/some-org/some-rather-long-dataset-name@main/a_file_with_a_long_name_split.json"
PARAMS = {"a": {"lr": 0.001, "ratio": 0.05, "tiny": 1.0e-06, "name": "", "flag": True, "steps": 500,
                "note": "a # inside a value",
                "sources": [{"path": LONG, "split": "train", "revision": ""}, {"path": "json", "max_rows": 0}]},
          "b": {"value": 1, "other": "not tracked"}}


def stages(n: int) -> dict:
    out = {}
    for i in range(n):
        deps = ["make.py"] + ([f"out/s{i - 1}.txt"] if i else [])
        out[f"s{i}"] = {"cmd": f"python make.py s{i} --with-a-long-argument-list-so-that-the-command-is-folded "
                               f"--value {i}",
                        "deps": deps, "params": ["a", "b.value"], "outs": [f"out/s{i}.txt"]}
    return out


@pytest.fixture
def twin(tmp_path: Path) -> tuple[Path, Path]:
    a = tmp_path / "dvc"
    a.mkdir()
    (a / "make.py").write_text("import sys, pathlib\npathlib.Path('out').mkdir(exist_ok=True)\n"
                               "pathlib.Path(f'out/{sys.argv[1]}.txt').write_text(' '.join(sys.argv))\n")
    (a / "params.yaml").write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    (a / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages(4)}, sort_keys=False))
    run("git init -q -b main && git config user.email t@t && git config user.name t && dvc init -q && "
        "git add -A && git commit -qm init", a)
    b = tmp_path / "wrapper"
    shutil.copytree(a, b)
    return a, b


def wrapper(repo: Path, *args: str):
    return run([sys.executable, "-m", "imitation_gap.runner.dvcrun", *args], repo)


def test_the_wrapper_writes_the_same_lock_as_dvc(twin):
    a, b = twin
    run(["dvc", "repro"], a)
    r = wrapper(b, "repro")
    assert "Running stage 's3'" in r.stdout
    lock = (a / "dvc.lock").read_text()
    assert len(yaml.safe_load(lock)["stages"]) == 4 and (b / "dvc.lock").read_text() == lock
    assert "#" in lock  # the '#' of params a.note: DVC's round-trip path, every stage
    # then no '#' in the lock (a.note loses it: DVC's round-trip path while old entries still hold one) ...
    for edit in ({"note": "no hash sign"}, {"lr": 0.002}):  # ... and every entry changing on the fast path
        for repo in (a, b):
            params = yaml.safe_load((repo / "params.yaml").read_text())
            params["a"] |= edit
            (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        run(["dvc", "repro"], a)
        wrapper(b, "repro")
        lock = (a / "dvc.lock").read_text()
        assert "#" not in lock and (b / "dvc.lock").read_text() == lock
    assert "lr: 0.002" in lock
    for s in ("s1", "s2"):  # and one stage at a time, as the runner calls it
        run(["dvc", "repro", "--single-item", "-f", s], a)
        wrapper(b, "repro", "--single-item", "-f", s)
        assert (b / "dvc.lock").read_text() == (a / "dvc.lock").read_text()
    assert "up to date" in run(["dvc", "status"], b).stdout


def test_a_lock_with_a_comment_keeps_it(twin):
    _, b = twin
    wrapper(b, "repro")
    lock = b / "dvc.lock"
    lock.write_text("# my note on this lock\n" + lock.read_text())
    wrapper(b, "repro", "--single-item", "-f", "s2")
    assert lock.read_text().startswith("# my note on this lock\n")


def test_the_fast_loader_reads_what_the_round_trip_loader_reads():
    from dvc.utils.serialize import _yaml

    from imitation_gap.runner import dvcrun

    text = (Path(__file__).resolve().parents[1] / "dvc.lock").read_text()
    original = _yaml.parse_yaml_for_update
    round_trip = original(text, "dvc.lock")
    dvcrun.fast_lock_loader()
    try:
        fast = _yaml.parse_yaml_for_update(text, "dvc.lock")
        assert type(fast) is dict and fast == round_trip and _yaml.dumps_yaml(fast) == text
        assert type(_yaml.parse_yaml_for_update(text, "other.yaml")) is not dict  # other files: round trip
    finally:
        _yaml.parse_yaml_for_update = original
