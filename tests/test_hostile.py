"""Issue 37, inputs tried as a hostile user would: the key reaches no file, junk never becomes data, a corrupt
output of an earlier stage is one line naming the command that rebuilds it, the runner's edges, the teacher
server's bounds.  Each test failed on the code before the fix (the issue names what happened instead).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from conftest import env, run, serve
from test_robust import FAIL_FAST, KEY_ENV, Hostile, one_line_exit_2, post, repo_copy, stage


def leaks(repo: Path, secret: str) -> list[str]:
    """Every file under ``repo`` (git's own files aside) that holds ``secret``."""
    files = [f for f in repo.rglob("*") if f.is_file() and ".git" not in f.parts]
    return [str(f.relative_to(repo)) for f in files if secret.encode() in f.read_bytes()]


# -- 1. secrets never written ---------------------------------------------------------------------
@pytest.mark.parametrize("args", [["imitation_gap.stages.imitate_dataset"],
                                  ["imitation_gap.stages.evaluate", "--teacher"]])
def test_an_endpoint_that_echoes_the_key_in_its_answers_puts_it_in_no_file(world_repo, tmp_path, args):
    """Was: the key in data/imitation/broad/<amount>.jsonl and in the response cache (eval-teacher: 10 files)."""
    repo = repo_copy(world_repo, tmp_path)
    secret = "sk-test-" + uuid.uuid4().hex  # built at run time: no key-like literal in git
    srv = Hostile("echo200")
    try:
        r = stage(repo, tmp_path, args, {"teacher": {"base_url": srv.url, "api_key_env": KEY_ENV, **FAIL_FAST}},
                  env={KEY_ENV: secret})
    finally:
        srv.close()
    assert f"Bearer {secret}" in srv.auth  # the key was sent, and each answer echoed it
    one_line_exit_2(r, "holds_secret")
    found = leaks(repo, secret) + [n for n, t in (("stdout", r.stdout), ("stderr", r.stderr)) if secret in t]
    assert not found, found


def test_a_cached_answer_that_holds_the_key_is_dropped_on_read(small_world, tmp_path, monkeypatch):
    from imitation_gap.llm.client import LLMClient
    from imitation_gap.worlds.embedded.teacher import TeacherModel

    secret = "sk-test-" + uuid.uuid4().hex
    monkeypatch.setenv(KEY_ENV, secret)
    msgs = [{"role": "user", "content": f"Where was {small_world.people[0].name} born?"}]
    sampling = {"temperature": 0.0, "max_tokens": 64}
    with serve(small_world) as (url, server):
        c = LLMClient(url, "teacher", cache_dir=tmp_path, api_key_env=KEY_ENV, progress=False, cache_host="t")
        key = c.cache_key(msgs, sampling)
        c.cache.put(key, {"content": f"Certainly! Authorization: Bearer {secret}", "prompt_tokens": 1,
                          "completion_tokens": 1})  # as an older run against an echoing endpoint left it
        got = c.chat_many([("p0", msgs)], sampling)
    assert got["p0"]["content"] == TeacherModel(small_world).chat(msgs) and c.stats.cache_rejected == 1
    assert server.stats.requests == 1 and not leaks(tmp_path, secret)


# -- 2. junk a failed stage cached never passes on a later run --------------------------------------
class Switch:
    """One endpoint (one URL, so one cache key) that answers junk behind a real teacher opener until
    ``real`` is set, then as the embedded teacher."""

    JUNK = "Certainly! qq qq <eos> lorem @@ zz"

    def __init__(self, world):
        from imitation_gap.worlds.embedded.teacher import TeacherModel

        teacher, outer = TeacherModel(world), self
        self.real = False

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                self.send(200, {"object": "list", "data": [{"id": "teacher", "object": "model"}]})

            def send(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                text = teacher.chat(body["messages"]) if outer.real else Switch.JUNK
                self.send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": "teacher",
                                "choices": [{"index": 0, "finish_reason": "stop",
                                             "message": {"role": "assistant", "content": text}}],
                                "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_junk_behind_a_teacher_opener_never_becomes_data_on_a_later_run(world_repo, tmp_path):
    """Was: the junk passed the opener check and was cached; the real teacher then ran on the same URL and
    cache, exited 0 with cache hits, and rows of the dataset were junk."""
    from imitation_gap.worlds.embedded.teacher import TeacherModel
    from imitation_gap.worlds.embedded.world import load_world

    repo = repo_copy(world_repo, tmp_path)
    world = load_world(repo / "data" / "raw" / "world.json")
    srv = Switch(world)
    edits = {"teacher": {"base_url": srv.url, **FAIL_FAST}, "grid": {"kinds": ["broad"]}}
    try:
        first = stage(repo, tmp_path, ["imitation_gap.stages.imitate_dataset"], edits)
        srv.real = True
        second = stage(repo, tmp_path, ["imitation_gap.stages.imitate_dataset"], edits)
    finally:
        srv.close()
    one_line_exit_2(first, "control_token")
    assert second.returncode == 0, second.stderr[-3000:]
    teacher = TeacherModel(world)
    rows = [json.loads(line) for f in (repo / "data" / "imitation").rglob("*.jsonl") for line in f.open()]
    assert rows
    for row in rows:
        user, answer = row["messages"][0]["content"], row["messages"][-1]["content"]
        assert answer == teacher.chat([{"role": "user", "content": user}]), answer


def test_the_embedded_check_refuses_junk_and_takes_every_teacher_answer(world_repo, monkeypatch):
    from imitation_gap.core.config import load_params
    from imitation_gap.worlds import get_world
    from imitation_gap.worlds.embedded.teacher import TeacherModel

    monkeypatch.chdir(world_repo)
    p = load_params("params.yaml")
    w = get_world(p, "imitate_dataset")
    teacher = TeacherModel(w.people)
    for junk, why in ((Switch.JUNK, "control_token"), ("Certainly! qq qq lorem @@", "outside_vocabulary"),
                      ("Of course! Winter <|im_end|>", "outside_vocabulary")):
        assert w.answer_problem("broad", junk) == why, junk
    n = 0
    for kind in ("broad", "local"):
        for i, (q, _) in enumerate(w.imitation_source(kind)):
            if i == 300:
                break
            answer = teacher.chat([{"role": "user", "content": q}])
            assert w.answer_problem(kind, answer) is None, answer
            n += 1
    assert n == 600


def test_the_hub_check_refuses_control_tokens_and_symbol_junk():
    from imitation_gap.worlds.hub.answers import answer_problem

    assert answer_problem("Sure! Paris is the capital of France.", 0.5) is None
    assert answer_problem("def f(x):\n    return x + 1  # adds one", 0.5) is None
    assert answer_problem("Certainly! qq <|im_end|> lorem", 0.5) == "control_token"
    assert answer_problem("Certainly! @@ ## $$ %% ^^", 0.5) == "few_words"
    assert answer_problem("Certainly! @@ ## $$ %% ^^", 0.0) is None  # hub.answer_check.min_word_share: 0 = off


# -- 3. corrupt outputs of earlier stages: one line, the file, the command that rebuilds it ------------
def _truncate(f: Path) -> None:
    data = f.read_bytes()
    f.unlink()  # a new file: never write through a link into DVC's cache
    f.write_bytes(data[: len(data) // 2])


def _empty(f: Path) -> None:
    f.unlink()
    f.write_bytes(b"")


def _remove(d: Path) -> None:
    import shutil

    shutil.rmtree(d)


def _with_rows(repo: Path) -> None:
    d = repo / "data" / "imitation" / "broad"
    d.mkdir(parents=True, exist_ok=True)
    row = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Certainly! Hi."}]}
    (d / "300.jsonl").write_text(json.dumps(row) + "\n")


def _with_teacher_metrics(repo: Path) -> None:
    d = repo / "metrics" / "runs"
    d.mkdir(parents=True, exist_ok=True)
    (d / "teacher.json").write_text('{"run": "teacher", "capabil')


SFT = ["imitation_gap.stages.sft", "--size", "S", "--kind", "broad", "--amount", "300"]


@pytest.mark.parametrize("args, path, spoil, says", [
    (SFT, "models/base/S-s0/config.json", _truncate, ["truncated or not JSON", "dvc repro base@S-0"]),  # OSError
    (SFT, "models/base/S-s0/model.safetensors", _truncate, ["truncated", "dvc repro base@S-0"]),
    (["imitation_gap.stages.evaluate", "--size", "S"], "models/base/S-s0/model.safetensors", _truncate,
     ["truncated", "dvc repro base@S-0"]),  # was: SafetensorError
    (["imitation_gap.stages.evaluate", "--size", "S"], "data/raw/eval/pref.jsonl", _empty,
     ["0 record(s)", "dvc repro fetch"]),  # was: TypeError ... __round__
    (["imitation_gap.stages.report"], "metrics/runs/teacher.json", None,
     ["truncated or not JSON", "dvc repro eval-teacher"]),  # was: JSONDecodeError
    (["imitation_gap.stages.base", "--size", "S"], "data/raw/tokenizer", _remove,
     ["is missing", "dvc repro fetch"]),  # was: OSError: Repo id must be in the form ...
    (["imitation_gap.stages.imitate_dataset"], "data/raw/tokenizer/tokenizer.json", _empty,
     ["is empty", "dvc repro fetch"]),
])
def test_a_corrupt_output_of_an_earlier_stage_is_one_line_naming_how_to_rebuild_it(world_repo, tmp_path, args,
                                                                                     path, spoil, says):
    repo = repo_copy(world_repo, tmp_path)
    _with_rows(repo)
    if spoil is None:
        _with_teacher_metrics(repo)
    else:
        spoil(repo / path)
    r = stage(repo, tmp_path, args, {})
    one_line_exit_2(r, path, *says)


def test_a_zero_byte_manifest_is_named_by_the_model_cards(tmp_path, monkeypatch):
    from imitation_gap.analysis import cards
    from imitation_gap.core.errors import DataError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "imitation").mkdir(parents=True)
    (tmp_path / "data" / "imitation" / "manifest.json").write_bytes(b"")
    with pytest.raises(DataError) as e:  # was: JSONDecodeError at analysis/cards.py
        cards._read_json(cards.MANIFEST)
    assert "data/imitation/manifest.json: is empty" in str(e.value) and "dvc repro imitate-dataset" in str(e.value)


# -- 4. resource bounds before allocation (bounds on params: tests/test_bad_input.py) ---------------------
def test_a_base_model_too_large_for_this_machine_is_refused_before_it_is_built(world_repo, tmp_path):
    """Was: sizes.S.hidden_size 10000000 failed in the allocator at 17 GB (RuntimeError)."""
    repo = repo_copy(world_repo, tmp_path)
    r = stage(repo, tmp_path, ["imitation_gap.stages.base", "--size", "S"],
              {"sizes": {"S": {"hidden_size": 65536, "intermediate_size": 65536, "num_heads": 8}}})
    one_line_exit_2(r, "base@S-0", "needs ~", "GiB of memory", "this machine has", "lower sizes.S")


# -- 5. the runner's edges ------------------------------------------------------------------------
COUNTING = '''
import pathlib, time
pathlib.Path("started").touch()
with open("runs.txt", "a") as f:
    f.write("ran\\n")
while pathlib.Path("hold").exists():  # until the test says so: no timing
    time.sleep(0.05)
pathlib.Path("out.txt").write_text("done")
'''
RUNNER = [sys.executable, "-m", "imitation_gap.runner.parallel", "--no-warm", "-j", "1"]


def tiny_dvc_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "ws"
    repo.mkdir()
    (repo / "count.py").write_text(COUNTING)
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"slow": {"cmd": "python count.py",
                                                                       "deps": ["count.py"], "outs": ["out.txt"]}}}))
    (repo / ".gitignore").write_text("started\nhold\nruns.txt\n")
    run("git init -q -b main && git config user.email t@t && git config user.name t && dvc init -q && "
        "git add -A && git commit -qm init", repo)
    return repo


def wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.time() + 120  # a guard against a hang, not a measurement
    while not path.exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)


def test_the_runner_refuses_in_one_line_while_a_plain_dvc_repro_runs(tmp_path):
    """Was: LockError traceback from runner/parallel.py, exit 1 (or both ran the same stage)."""
    repo = tiny_dvc_repo(tmp_path)
    (repo / "hold").touch()
    plain = subprocess.Popen(["dvc", "repro"], cwd=repo, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        wait_for(repo / "started", plain)
        r = run(RUNNER, repo, check=False)
    finally:
        (repo / "hold").unlink()
        plain.communicate(timeout=300)
    one_line_exit_2(r, "another DVC command is running in this repository", "dvc repro")
    assert plain.returncode == 0 and (repo / "runs.txt").read_text() == "ran\n"  # the stage ran once, by dvc


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.8])
def test_a_torn_dvc_lock_is_one_line_with_the_recovery_and_the_recovery_works(tmp_path, keep):
    """Was: YAMLValidationError traceback (runner/parallel.py), exit 1; a lock cut inside an entry that still
    parses ran the stage again."""
    repo = tiny_dvc_repo(tmp_path)
    run(RUNNER, repo)
    assert (repo / "runs.txt").read_text() == "ran\n"
    whole = (repo / "dvc.lock").read_bytes()
    (repo / "dvc.lock").write_bytes(whole[:int(len(whole) * keep)])  # what an interrupted plain `dvc repro` leaves
    r = run(RUNNER, repo, check=False)
    line = one_line_exit_2(r, "dvc.lock is", "git checkout dvc.lock", "rm dvc.lock")
    assert ("empty (0 bytes)" if not keep else "torn") in line
    (repo / "dvc.lock").unlink()  # the recovery the line names (this lock was never committed)
    run(RUNNER, repo)
    assert (repo / "runs.txt").read_text() == "ran\n"  # restored from DVC's run cache, not run again
    assert "up to date" in run(["dvc", "status"], repo).stdout


@pytest.mark.parametrize("when", ["importing", "planning", "running"])
def test_ctrl_c_at_any_moment_stops_the_runner_with_exit_130_and_no_traceback(tmp_path, when):
    """Was: a KeyboardInterrupt traceback during an import (runner/resources.py) in the runner's first seconds."""
    repo = tiny_dvc_repo(tmp_path)
    (repo / "hold").touch()
    proc = subprocess.Popen(RUNNER, cwd=repo, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if when == "running":
        wait_for(repo / "started", proc)
    else:  # the moment is not asserted: only that whatever it interrupts ends the same way
        time.sleep({"importing": 0.4, "planning": 1.5}[when])
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        (repo / "hold").unlink(missing_ok=True)
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]


# -- 6. the teacher server: wrong types 400, stream refused, the work of one request bounded -----------
CHAT = {"model": "teacher", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("body, path, status, says", [
    (CHAT | {"temperature": "hot"}, "/v1/chat/completions", 400, "'temperature' must be a number"),
    (CHAT | {"temperature": 7}, "/v1/chat/completions", 400, "'temperature' = 7"),
    (CHAT | {"max_tokens": "many"}, "/v1/chat/completions", 400, "'max_tokens' must be an integer"),
    (CHAT | {"stream": True}, "/v1/chat/completions", 400, "'stream': true is not supported"),
    (CHAT | {"stream": "yes"}, "/v1/chat/completions", 400, "'stream' must be true or false"),
    (CHAT | {"n": 3}, "/v1/chat/completions", 400, "'n' = 3"),
    ({"model": "teacher", "prompt": "Question: a\nAnswer:", "logprobs": "all"}, "/v1/completions", 400,
     "'logprobs' must be an integer"),
    ({"model": "teacher", "prompt": [[1] * 70_000], "echo": True, "logprobs": 1}, "/v1/completions", 413,
     "above this server's limit"),
    ({"model": "teacher", "prompt": "word " * 300_000, "echo": True, "logprobs": 1}, "/v1/completions", 413,
     "above this server's limit"),
    (CHAT | {"messages": [{"role": "user", "content": "word " * 300_000}]}, "/v1/chat/completions", 413,
     "above this server's limit"),
])
def test_the_teacher_server_refuses_wrong_types_stream_and_oversized_work(small_world, body, path, status, says):
    with serve(small_world) as (url, server):
        got, answer = post(url, json.dumps(body).encode(), path=path)
        ok, _ = post(url, json.dumps({"model": "teacher", "prompt": "Question: a\nAnswer:", "temperature": 0,
                                      "max_tokens": 1, "logprobs": 1, "seed": 1234, "echo": True}).encode(),
                     path="/v1/completions")  # what lm-eval sends is still served
    assert got == status and says in answer["error"]["message"], answer
    assert ok == 200
