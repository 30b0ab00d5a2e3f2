"""`python -m imitation_gap.runner.dvcrun` (the runner's `dvc`) writes the dvc.lock that `dvc` writes, byte for byte.

Two copies of one pipeline of script stages, whose lock entries hold what the study's do (nested
params, floats, empty strings, lists of dicts, a command and a value long enough to be folded):
one is run by `dvc repro`, the other by the wrapper; then a param changes and both re-run.

And the wrapper writes dvc.lock atomically: the runner, interrupted (Ctrl-C, kill -9) at each point of a
dvc.lock rewrite (a test hook pauses the write there), leaves the lock whole, and the same command resumes
with `dvc status` clean; DVC's own in-place write, killed at the same point, tears it.
"""

from __future__ import annotations

import shutil
import signal
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


# -- dvc.lock is never torn ------------------------------------------------------------------
CHAIN = 4  # stages c0 -> c1 -> c2 -> c3; a param of c2 changes, so the runner re-runs c2 and c3


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Path:
    """A pipeline that the runner has run once: its dvc.lock holds every stage."""
    repo = tmp_path_factory.mktemp("chain") / "repo"
    repo.mkdir()
    (repo / "make.py").write_text("import sys, pathlib\npathlib.Path('out').mkdir(exist_ok=True)\n"
                                  "pathlib.Path(f'out/{sys.argv[1]}.txt').write_text(' '.join(sys.argv))\n")
    (repo / "params.yaml").write_text(yaml.safe_dump({"v": {f"c{i}": 0 for i in range(CHAIN)}}))
    st = {f"c{i}": {"cmd": f"python make.py c{i} ${{v.c{i}}}", "deps": ["make.py"] + ([f"out/c{i - 1}.txt"] if i else []),
                    "params": [f"v.c{i}"], "outs": [f"out/c{i}.txt"]} for i in range(CHAIN)}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": st}, sort_keys=False))
    run("git init -q -b main && git config user.email t@t && git config user.name t && dvc init -q && "
        "git add -A && git commit -qm init", repo)
    runner(repo)
    return repo


def runner(repo: Path, **popen):
    cmd = [sys.executable, "-m", "imitation_gap.runner.parallel", "--no-warm", "-j", "1"]
    if popen:
        import subprocess

        from conftest import env

        def default_sigint():  # a shell's background job (`make test &`) ignores SIGINT, and children inherit that:
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # the Ctrl-C cases need it delivered, as at a terminal
        return subprocess.Popen(cmd, cwd=repo, env=env() | popen.pop("env", {}), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint, **popen)
    return run(cmd, repo)


def lock_entries(repo: Path) -> dict | None:
    """The stages of dvc.lock, or None if it is not whole (empty, not YAML, or missing a stage)."""
    try:
        stages = (yaml.safe_load((repo / "dvc.lock").read_text()) or {}).get("stages") or {}
    except yaml.YAMLError:
        return None
    return stages if set(stages) == {f"c{i}" for i in range(CHAIN)} else None


def wait_for(marker: Path, proc) -> int:
    """The pid that paused at the hook (it wrote ``marker``)."""
    import time

    deadline = time.time() + 120  # a guard against a hang, not a measurement
    while not marker.exists() or not marker.read_text().strip():
        assert proc.poll() is None, f"ended before the pause: {proc.communicate()}"
        assert time.time() < deadline, "the lock write never reached the pause point"
        time.sleep(0.05)
    return int(marker.read_text().split()[0])


@pytest.mark.parametrize("sig, point", [("SIGINT", "write"), ("SIGINT", "fsync"), ("SIGINT", "replace"),
                                        ("SIGKILL", "write"), ("SIGKILL", "fsync")])
def test_an_interrupt_inside_the_lock_rewrite_leaves_it_whole_and_the_same_command_resumes(chain, tmp_path,
                                                                                         sig, point):
    import os

    repo = tmp_path / "repo"
    shutil.copytree(chain, repo, symlinks=True)
    before = lock_entries(repo)
    assert before is not None
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["v"]["c2"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    marker = tmp_path / "paused"
    proc = runner(repo, env={"IMITATION_GAP_LOCK_PAUSE": f"{point}:{marker}"})
    paused = wait_for(marker, proc)  # the dvc process of stage c2, inside its dvc.lock rewrite
    if sig == "SIGINT":  # Ctrl-C of the runner: it passes the interrupt on to the running stage
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130 and "resume" in err, err
    else:  # kill -9 of the whole tree: the runner and the stage's process group
        os.kill(proc.pid, signal.SIGKILL)
        os.killpg(os.getpgid(paused), signal.SIGKILL)
        proc.communicate(timeout=120)
    after = lock_entries(repo)
    assert after is not None, (repo / "dvc.lock").read_text()[-2000:]  # whole: every stage, valid YAML
    new = point == "replace"  # renamed before the interrupt: the new entry of c2; before: the old one
    assert (after["c2"] != before["c2"]) == new and after["c0"] == before["c0"] and after["c3"] == before["c3"]
    # the same command resumes, and leaves nothing to do
    r = runner(repo)
    assert "c3" in r.stderr and "up to date" in run(["dvc", "status"], repo).stdout
    assert (repo / "out" / "c2.txt").read_text().endswith("c2 1")
    assert not list(repo.glob(".dvc.lock.*.tmp"))  # a temporary file a kill -9 left is swept


def test_the_same_interrupt_tears_a_lock_written_in_place(chain, tmp_path):
    """The check above can fail: DVC 3.67's own write (open "w+", then the dumper's writes), killed at the
    same point, leaves a torn dvc.lock."""
    import os
    import subprocess

    from conftest import env

    repo = tmp_path / "repo"
    shutil.copytree(chain, repo, symlinks=True)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["v"]["c2"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    marker = tmp_path / "paused"
    in_place = (
        "import io, sys\n"
        "from dvc.utils.serialize import _common, _yaml\n"
        "from imitation_gap.runner.dvcrun import pause_point\n"
        "def _dump_data(path, data, dumper, fs=None, **kw):  # DVC 3.67's, with the test hook half-way\n"
        "    s = io.StringIO(); dumper(data, s, **kw); text = s.getvalue()\n"
        "    with open(path, 'w+', encoding='utf-8') as fd:\n"
        "        fd.write(text[:len(text) // 2]); fd.flush(); pause_point('write', path); fd.write(text[len(text) // 2:])\n"
        "_common._dump_data = _yaml._dump_data = _dump_data\n"
        "from dvc.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.Popen([sys.executable, "-c", in_place, "repro", "--single-item", "c2"], cwd=repo,
                            env=env() | {"IMITATION_GAP_LOCK_PAUSE": f"write:{marker}"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_for(marker, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert lock_entries(repo) is None


def test_atomic_writes_keep_the_files_mode_and_dvcs_bytes(tmp_path):
    from imitation_gap.runner import dvcrun

    f = tmp_path / "dvc.lock"
    f.write_text("old\n")
    f.chmod(0o640)
    dvcrun.write_atomic(f, "schema: '2.0'\n")
    assert f.read_text() == "schema: '2.0'\n" and (f.stat().st_mode & 0o777) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["dvc.lock"]
    stale = tmp_path / f".dvc.lock.{2 ** 22 + 7}.abc123.tmp"  # a pid above the kernel's limit: no such process
    stale.write_text("half")
    assert dvcrun.sweep(tmp_path) == [stale] and not stale.exists()


def test_the_spliced_lock_dump_is_dvcs_whole_dump():
    """dvcrun's dump of dvc.lock re-dumps only the entries that changed; on the study's own lock, edited as
    `dvc repro` edits it (an entry updated, the first and the last, one added, one removed), the text is
    what DVC's dumper writes for the whole lock.  What it cannot split it leaves to the whole dump."""
    import copy

    from dvc.utils.serialize import _yaml

    from imitation_gap.runner import dvcrun

    text = (Path(__file__).resolve().parents[1] / "dvc.lock").read_text()
    read = _yaml.parse_yaml(text, "dvc.lock")
    prints = dvcrun._fingerprints(read)
    names = list(read["stages"])

    def whole(data) -> str:
        return _yaml.dumps_yaml(data)

    def edited(edit) -> dict:
        data = copy.deepcopy(read)
        edit(data["stages"])
        return data

    def one_md5(stages, name):
        stages[name] = copy.deepcopy(stages[name]) | {"outs": [o | {"md5": "0" * 32} for o in stages[name]["outs"]]}

    cases = {
        "unchanged": lambda st: None,
        "middle": lambda st: one_md5(st, names[len(names) // 2]),
        "first and last": lambda st: (one_md5(st, names[0]), one_md5(st, names[-1])),
        "a param": lambda st: st[names[5]]["params"]["params.yaml"].update(seed=12345),
        "added": lambda st: st.update({"sft@XL-broad-800-0": copy.deepcopy(st[names[-2]])}),
        "removed": lambda st: st.pop(names[3]),
    }
    for case, edit in cases.items():
        data = edited(edit)
        spliced = dvcrun.splice_lock(text, prints, data, _yaml._dump)
        assert spliced is not None, case
        assert spliced == whole(data), case
    assert dvcrun.splice_lock(text, prints, read, _yaml._dump) == text
    # what it leaves to the whole dump
    shared = edited(lambda st: st.update({"extra": st[names[0]]}))  # one object twice: DVC writes an anchor
    assert dvcrun.splice_lock(text, prints, shared, _yaml._dump) is None
    assert dvcrun.splice_lock(text.replace("\n  fetch:", "\n    fetch:", 1), prints, read, _yaml._dump) is None
    assert dvcrun.splice_lock(text, None, read, _yaml._dump) is None
    assert dvcrun.splice_lock(text, prints, edited(lambda st: st.clear()), _yaml._dump) is None  # `stages: {}`
