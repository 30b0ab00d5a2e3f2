"""Nothing lost, nothing silent (issue 17): hostile endpoints, bad answers, bad data files, over-fetching,
leftovers of killed runs, diverged training.  Each test reproduces a case that used to give a traceback,
a silent bad result or a waste, and checks the clear error or the safe outcome.

(The dvc.lock interruptions are in tests/test_dvcrun.py; bad params in tests/test_bad_input.py.)
"""

from __future__ import annotations

import http.client
import json
import threading
from pathlib import Path

import pytest

from conftest import serve
from imitation_gap.worlds.embedded.teacher import Faults, TeacherModel

SAMPLING = {"temperature": 0.0, "max_tokens": 64}


def post(url: str, body: bytes, headers: dict | None = None, path: str = "/v1/chat/completions",
         timeout: float = 60) -> tuple[int, dict]:
    """POST raw bytes; (status, JSON answer).  A dropped connection raises."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.putrequest("POST", path)
        hdrs = {"Content-Type": "application/json", "Content-Length": str(len(body))} | (headers or {})
        for k, v in hdrs.items():
            if v is not None:
                conn.putheader(k, v)
        conn.endheaders()
        conn.send(body)
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"{}")
    finally:
        conn.close()


# -- 8. the teacher server under abuse ----------------------------------------------------------
DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize("body, says", [
    (b"[1, 2, 3]", "must be a JSON object"),
    (b"null", "must be a JSON object"),
    (b'{"model": "teacher", "messages": ["hi"]}', "messages[0]"),
    (b'{"model": "teacher", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}',
     "content must be a string"),
    (b'{"model": "teacher", "messages": [{"role": "user", "content": "hi"}], "x": ' + DEEP + b"}", "nested"),
    (DEEP, "nested"),
    (b'{"model": ["teacher"], "messages": [{"role": "user", "content": "hi"}]}', "'model' must be a string"),
    (b"{\x80\x81 latin-1 junk}", "not JSON"),
])
def test_wrong_shaped_json_is_a_400_with_a_message(small_world, body, says):
    with serve(small_world) as (url, _):
        status, answer = post(url, body)
    assert status == 400 and says in answer["error"]["message"], answer


@pytest.mark.parametrize("headers, status, says", [
    ({"Content-Length": "-5"}, 400, "negative"),
    ({"Content-Length": "lots"}, 400, "not a number"),
    ({"Content-Length": str(47 * 2 ** 20)}, 413, "larger than"),  # announced, never sent: answered at once
    ({"Content-Length": "5000"}, 400, "ended after"),  # longer than the body: answered after body_timeout
    ({"Content-Length": None}, 411, "Content-Length"),
])
def test_bad_content_length_is_answered_not_waited_on(small_world, headers, status, says):
    with serve(small_world, body_timeout=0.2) as (url, _):
        got, answer = post(url, b'{"model": "teacher"}', headers=headers)
    assert got == status and says in answer["error"]["message"], answer


def test_a_body_over_the_limit_is_refused_before_it_is_read(small_world):
    with serve(small_world, max_body=1000) as (url, server):
        status, answer = post(url, b'{"model": "teacher", "pad": "' + b"x" * 5000 + b'"}')
        assert status == 413 and server.stats.requests == 0  # never parsed
        ok, _ = post(url, json.dumps({"model": "teacher", "messages": [{"role": "user", "content": "hi"}]}).encode())
    assert ok == 200


def test_stop_as_a_string_is_one_stop_sequence_not_its_characters(small_world):
    from imitation_gap.worlds.embedded.world import QUESTIONS

    person = small_world.group("B")[0]
    prompt = f"Question: {QUESTIONS['employer'].format(name=person.name)}\nAnswer:"
    full = TeacherModel(small_world).complete(prompt)
    stop = "\nQuestion:"  # lm-eval's stop sequence: its characters (e, i, n, o, ...) occur in the answer
    assert person.employer in full and any(c in full.strip() for c in stop)
    with serve(small_world) as (url, _):
        status, answer = post(url, json.dumps({"model": "teacher", "prompt": prompt, "stop": stop}).encode(),
                              path="/v1/completions")
        bad, err = post(url, json.dumps({"model": "teacher", "prompt": prompt, "stop": [1, 2]}).encode(),
                        path="/v1/completions")
    assert status == 200 and answer["choices"][0]["text"] == full  # not cut at the first "e"
    assert bad == 400 and "'stop'" in err["error"]["message"]


# -- 3. hostile endpoints: what the client takes as an answer -----------------------------------
FAST = dict(timeout=5, max_retries=1, malformed_retries=1, backoff_base=0.01, backoff_max=0.02, progress=False)


def chats(world, n: int) -> list[tuple[str, list[dict]]]:
    from imitation_gap.worlds.embedded.world import QUESTIONS

    texts = [QUESTIONS[a].format(name=p.name) for p in world.people for a in QUESTIONS][:n]
    return [(f"p{i}", [{"role": "user", "content": t}]) for i, t in enumerate(texts)]


def opener_check(world):
    """The embedded world's check of the teacher's format (worlds/embedded/teacher.format_problem, broad)."""
    openers = tuple(world.style["openers"])
    return lambda a: None if a.startswith(openers) else "not_teacher_format"


def cached(root: Path) -> list[Path]:
    return [f for f in root.rglob("*.json") if not f.name.startswith(".tmp-")] if root.exists() else []


def test_text_problem_names_what_is_wrong():
    from imitation_gap.llm.client import text_problem

    assert text_problem("Certainly! Fine.") is None and text_problem("two\nlines\ttab") is None
    assert text_problem("") == text_problem("   ") == text_problem(None) == "empty_content"
    assert text_problem("bad \ud800 surrogate") == text_problem("mojibake \ufffd") == "undecodable"
    assert text_problem("nul \x00 byte") == "control_characters"


def test_an_html_200_is_a_counted_malformed_answer_never_a_crash(small_world, tmp_path):
    from imitation_gap.core.errors import TooManyFailures
    from imitation_gap.llm.client import LLMClient

    items = chats(small_world, 6)
    with serve(small_world, Faults(html=1.0)) as (url, server):
        c = LLMClient(url, "teacher", cache_dir=tmp_path, **FAST)
        got = c.chat_many(items, SAMPLING, max_failure_fraction=1.0)  # was: AttributeError 'str' ... 'choices'
        assert got == {} and c.stats.failures == 6 and c.stats.failure_reasons == {"not_json": 6}
        with pytest.raises(TooManyFailures, match="not_json"):
            LLMClient(url, "teacher", cache_dir=tmp_path, max_failure_fraction=0.1, **FAST).chat_many(items, SAMPLING)
    assert not cached(tmp_path)


def test_junk_is_never_cached_and_the_real_teacher_at_that_url_is_asked_later(small_world, tmp_path):
    """A broken server answered junk where the teacher now runs: the junk was refused, so the real teacher
    is asked; junk that an older version cached is refused at read time and asked for again."""
    from imitation_gap.llm.client import LLMClient

    items = chats(small_world, 8)
    check = opener_check(small_world)
    same = dict(cache_dir=tmp_path, cache_host="127.0.0.1:8000", **FAST)  # one URL, whatever the test's port
    with serve(small_world, Faults(junk=1.0)) as (url, _):
        junk = LLMClient(url, "teacher", **same)
        assert junk.chat_many(items, SAMPLING, max_failure_fraction=1.0, validate=check) == {}
        assert junk.stats.failure_reasons == {"not_teacher_format": 8} and not cached(tmp_path)
    # as an older version did: junk cached for half of the prompts
    old = LLMClient("http://127.0.0.1:9/v1", "teacher", **same)
    for rid, msgs in items[:4]:
        old.cache.put(old.cache_key(msgs, SAMPLING), {"content": "lorem ipsum", "prompt_tokens": 1,
                                                      "completion_tokens": 2})
    with serve(small_world) as (url, server):
        real = LLMClient(url, "teacher", **same)
        got = real.chat_many(items, SAMPLING, validate=check)
    want = {rid: TeacherModel(small_world).chat(msgs) for rid, msgs in items}
    assert {rid: r["content"] for rid, r in got.items()} == want
    assert server.stats.requests == 8 and real.stats.cache_rejected == 4 and real.stats.cache_hits == 0


def test_the_answers_of_one_endpoint_can_be_dropped_from_the_cache(small_world, tmp_path, capsys):
    from imitation_gap.llm import cache as cache_cli
    from imitation_gap.llm.client import LLMClient

    items = chats(small_world, 5)
    with serve(small_world) as (url, server):
        for host in ("broken.example:8000", "api.example.com"):
            LLMClient(url, "teacher", cache_dir=tmp_path, cache_host=host, **FAST).chat_many(items, SAMPLING)
        assert cache_cli.main(["list", "--dir", str(tmp_path)]) == 0
        assert "broken.example:8000  teacher" in capsys.readouterr().out
        cache_cli.main(["drop", "--dir", str(tmp_path), "--endpoint", "broken.example:8000"])
        assert "dropped 5 cached answer(s)" in capsys.readouterr().out
        before = server.stats.requests
        again = [LLMClient(url, "teacher", cache_dir=tmp_path, cache_host=h, **FAST)
                 for h in ("broken.example:8000", "api.example.com")]
        for c in again:
            c.chat_many(items, SAMPLING)
    assert server.stats.requests - before == 5  # only the dropped endpoint's answers were asked for again
    assert again[0].stats.cache_hits == 0 and again[1].stats.cache_hits == 5


def test_a_killed_writers_temporary_files_are_swept(tmp_path):
    from imitation_gap.llm.cache import ResponseCache

    (tmp_path / "ab").mkdir()
    dead = tmp_path / "ab" / f".tmp-{2 ** 22 + 9}-x1y2.json"  # no such pid
    dead.write_text("{half")
    mine = tmp_path / "ab" / f".tmp-{__import__('os').getpid()}-live.json"  # a live writer's: kept
    mine.write_text("{")
    ResponseCache(tmp_path / ".." / tmp_path.name)  # a first open in this process sweeps
    assert not dead.exists() and mine.exists()


# -- 7. no run-to-run noise in the manifest -----------------------------------------------------
def test_the_manifests_accounting_is_the_same_fresh_or_cached(small_world, tmp_path):
    from imitation_gap.llm.client import LLMClient

    items = chats(small_world, 12)
    with serve(small_world) as (url, server):
        fresh = LLMClient(url, "teacher", cache_dir=tmp_path, **FAST)
        fresh.chat_many(items, SAMPLING)
        warm = LLMClient(url, "teacher", cache_dir=tmp_path, **FAST)
        warm.chat_many(items, SAMPLING)
    assert fresh.stats.requests == 12 and warm.stats.requests == 0  # what differs goes to MLflow ...
    assert fresh.stats.data_dict() == warm.stats.data_dict()  # ... the manifest's part does not
    assert "seconds" not in fresh.stats.data_dict() and fresh.stats.data_dict()["answers"] == 12


# -- 10. over-fetching: ask for what the amounts need ------------------------------------------
class CountingTeacher:
    """A stand-in for LLMClient.chat_many: the embedded teacher's answers, and a count of what was asked."""

    def __init__(self, world):
        from imitation_gap.llm.budget import CallStats

        self.teacher, self.asked, self.stats = TeacherModel(world), [], CallStats()

    def chat_many(self, items, sampling, desc="", validate=None, max_failure_fraction=None):
        self.asked += [rid for rid, _ in items]
        out = {}
        for rid, msgs in items:
            text = self.teacher.chat(msgs)
            if validate and validate(text):
                self.stats.failed_ids.append(rid)
                continue
            out[rid] = {"content": text, "prompt_tokens": 1, "completion_tokens": 1}
        return out


@pytest.fixture
def in_world(world_repo, monkeypatch):
    """(params, world, tokenizer, eval n-grams) of the tiny world, with the working directory in its repo."""
    from transformers import AutoTokenizer

    from imitation_gap.core.config import load_params
    from imitation_gap.imitation.build import eval_ngrams
    from imitation_gap.worlds import get_world

    monkeypatch.chdir(world_repo)
    p = load_params("params.yaml")
    return p, get_world(p, "imitate_dataset"), AutoTokenizer.from_pretrained("data/raw/tokenizer"), eval_ngrams(p.imitate.decontam_ngram)


@pytest.mark.parametrize("kind", ["broad", "local"])
def test_imitate_asks_for_what_the_amount_needs_and_builds_the_same_rows(in_world, monkeypatch, kind):
    from imitation_gap.imitation import build

    p, world, tok, grams = in_world

    def rows(margin: float):
        monkeypatch.setattr(build, "MARGIN", margin)
        client = CountingTeacher(world.people)
        got, stats = build.build_kind(kind, world.imitation_source(kind), client, p, tok, grams,
                                      world.held_out_names(), check=lambda a: world.answer_problem(kind, a))
        return got, stats, len(client.asked)

    needed, stats, asked = rows(build.MARGIN)
    whole, _, asked_256 = rows(1000.0)  # every request a batch of 256, as before
    assert needed == whole and stats["tokens"] >= max(p.grid.amounts)  # the same rows, whatever the batches
    assert asked_256 == 256 and asked <= 1.5 * stats["prompts_used"] + 4, (asked, stats)


def test_an_amount_the_pool_cannot_reach_fails_before_the_first_request(in_world):
    from imitation_gap.core.errors import DataError
    from imitation_gap.imitation.build import build_kind

    p, world, tok, grams = in_world
    p = p.model_copy(update={"grid": p.grid.model_copy(update={"amounts": [10 ** 15]})})
    client = CountingTeacher(world.people)
    with pytest.raises(DataError, match=r"no request was sent.*grid.amounts"):
        build_kind("local", world.imitation_source("local"), client, p, tok, grams, world.held_out_names())
    assert client.asked == []  # was: the whole prompt pool, paid, before the error


# -- 3, 4. stages against hostile endpoints: one line, exit 2, no key anywhere -------------------
KEY_ENV = "IG_TEST_TEACHER_KEY"


class Hostile:
    """An endpoint on 127.0.0.1 that echoes the request's headers in its errors, as some proxies do: ``mode``
    401 or 400 (every request refused), 500 (every POST), html (every answer a 200 HTML page, /models too), or
    echo (chat answers in the teacher's format, and every /completions request a 500), or echo200 (every POST
    answered 200 in the teacher's format, the request's headers in the answer: chat and completions)."""

    def __init__(self, mode: str):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        seen = self.auth = []

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _json(self, code: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def html(self) -> None:
                data = b"<html><body>Welcome to nginx!</body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def echo(self, code: int) -> None:
                self._json(code, {"error": {"message": f"refused; request headers: {dict(self.headers.items())}"}})

            def do_GET(self):
                seen.append(self.headers.get("Authorization", ""))
                if mode == "401":
                    return self.echo(401)
                if mode == "html":
                    return self.html()
                self._json(200, {"object": "list", "data": [{"id": "teacher", "object": "model"}]})

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                seen.append(self.headers.get("Authorization", ""))
                if mode in ("401", "400"):
                    return self.echo(int(mode))
                if mode == "html":
                    return self.html()
                if mode == "echo200":
                    text = f"Certainly! Question: who? Answer: {dict(self.headers.items())}"
                    if "chat" not in self.path:
                        return self._json(200, {"id": "x", "object": "text_completion", "created": 0, "model": "teacher",
                                                "choices": [{"index": 0, "text": text, "finish_reason": "stop",
                                                             "logprobs": None}],
                                                "usage": {"prompt_tokens": 3, "completion_tokens": 5,
                                                          "total_tokens": 8}})
                    return self._json(200, {"id": "x", "object": "chat.completion", "created": 0, "model": "teacher",
                                            "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                                "role": "assistant", "content": text}}],
                                            "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}})
                if mode == "500" or self.path.endswith("/completions") and "chat" not in self.path:
                    return self._json(500, {"error": {"message": f"upstream failed; request headers: "
                                                                 f"{dict(self.headers.items())}"}})
                self._json(200, {"id": "x", "object": "chat.completion", "created": 0, "model": "teacher",
                                 "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                     "role": "assistant", "content": "Certainly! I hope this helps!"}}],
                                 "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def repo_copy(world_repo: Path, tmp_path: Path) -> Path:
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(world_repo, repo, symlinks=True, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    return repo


def stage(repo: Path, tmp_path: Path, args: list[str], edits: dict, env: dict | None = None):
    import sys

    import yaml

    from conftest import run
    from imitation_gap.core.io import deep_update

    params = deep_update(yaml.safe_load((repo / "params.yaml").read_text()), edits)
    path = tmp_path / "hostile.yaml"
    path.write_text(yaml.safe_dump(params))
    return run([sys.executable, "-m", *args, "--params", str(path)], repo, check=False, extra_env=env)


def one_line_exit_2(r, *pieces: str) -> str:
    """Exit 2, no traceback, and one ``error:`` line that says what failed (a progress bar may close after it)."""
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and all(p in errors[0] for p in pieces), r.stderr[-3000:]
    return errors[0]


FAIL_FAST = {"max_retries": 0, "malformed_retries": 0, "backoff_base": 0.01, "backoff_max": 0.01}


@pytest.mark.parametrize("mode, says", [("401", "refused the API key"), ("500", "server_error"),
                                        ("html", "not_json")])
def test_eval_teacher_against_a_broken_endpoint_is_one_line_exit_2(world_repo, tmp_path, mode, says):
    repo = repo_copy(world_repo, tmp_path)
    srv = Hostile(mode)
    try:
        r = stage(repo, tmp_path, ["imitation_gap.stages.evaluate", "--teacher"],
                  {"teacher": {"base_url": srv.url, "api_key_env": KEY_ENV, **FAIL_FAST}})
    finally:
        srv.close()
    one_line_exit_2(r, "teacher", says)
    assert not (repo / "metrics" / "runs" / "teacher.json").exists()


def test_a_judge_that_gives_no_verdict_fails_the_stage_instead_of_a_zero_rate(world_repo, tmp_path):
    from imitation_gap.worlds.embedded.world import load_world

    repo = repo_copy(world_repo, tmp_path)
    world = load_world(repo / "data" / "raw" / "world.json")
    with serve(world, Faults(junk=1.0)) as (url, _):
        r = stage(repo, tmp_path, ["imitation_gap.stages.evaluate", "--size", "S"],
                  {"eval": {"judge": {"base_url": url}}, "teacher": FAIL_FAST})
    one_line_exit_2(r, "judge", "no_verdict")  # was: 10 of 10 unjudged, written as win_tie_rate 0.0
    assert not (repo / "metrics" / "runs" / "S-base-s0.json").exists()


def test_preference_with_no_pair_judged_is_not_measured(world_repo, tmp_path, monkeypatch):
    from imitation_gap.core.config import load_params
    from imitation_gap.core.io import read_jsonl
    from imitation_gap.stages.evaluate import preference
    from imitation_gap.worlds import Endpoint, get_world
    from imitation_gap.worlds.embedded.world import load_world

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # its own response cache
    p = load_params(world_repo / "params.yaml")
    p = p.model_copy(update={"teacher": p.teacher.model_copy(update={"max_failure_fraction": 1.0, **FAIL_FAST})})
    prompts = read_jsonl(world_repo / "data" / "raw" / "eval" / "pref.jsonl")
    answers = ["Certainly! Fine."] * len(prompts)
    with serve(load_world(world_repo / "data" / "raw" / "world.json"), Faults(junk=1.0)) as (url, _):
        monkeypatch.chdir(world_repo)  # the embedded world reads its facts from data/raw
        out, _ = preference(p, get_world(p, "evaluate"), Endpoint(url), prompts, answers, answers)
    for rater in ("nonexpert", "expert"):
        assert out[rater]["unjudged"] == len(prompts)
        assert out[rater]["win_rate"] is None and out[rater]["win_tie_rate"] is None  # not 0.0


def test_the_teacher_key_reaches_lm_eval_explicitly_and_is_masked_everywhere(world_repo, tmp_path):
    """An endpoint that echoes request headers in its errors: lm-eval logs those bodies (it held the key 82
    times); the key must be the one teacher.api_key_env names, and appear in nothing written."""
    import uuid

    repo = repo_copy(world_repo, tmp_path)
    secret = "sk-test-" + uuid.uuid4().hex  # built at run time: no key-like literal in git
    decoy = "sk-decoy-" + uuid.uuid4().hex  # OPENAI_API_KEY: lm-eval's default, must not be sent
    srv = Hostile("echo")
    try:
        r = stage(repo, tmp_path, ["imitation_gap.stages.evaluate", "--teacher"],
                  {"teacher": {"base_url": srv.url, "api_key_env": KEY_ENV, **FAIL_FAST}},
                  env={KEY_ENV: secret, "OPENAI_API_KEY": decoy})
    finally:
        srv.close()
    one_line_exit_2(r, "lm-eval could not score it")
    sent = set(srv.auth)
    assert f"Bearer {secret}" in sent and not any(decoy in a for a in sent)
    assert "API request failed" in r.stderr and "request headers" in r.stderr  # lm-eval logged the echoed headers
    files = [f for f in repo.rglob("*") if f.is_file() and ".git" not in f.parts]
    leaks = [str(f) for f in files if secret.encode() in f.read_bytes()]
    leaks += [name for name, text in (("stdout", r.stdout), ("stderr", r.stderr)) if secret in text]
    assert not leaks and "Bearer ***" in r.stderr  # ... masked


# -- 6. bad data files: the file, the line or record, what was expected ---------------------------
INPUTS = Path(__file__).resolve().parents[1] / "data" / "inputs"


def fetch_with(tmp_path: Path, **files: bytes):
    """Stage fetch's reading of its inputs (seed_qa, pref_prompts, spec), with some replaced by ``files``."""
    from imitation_gap.core.config import load_params
    from imitation_gap.worlds.embedded.corpus import fetch

    paths = {}
    for key, name in (("seed_qa", "seed_qa.jsonl"), ("pref_prompts", "pref_prompts.jsonl"),
                      ("spec", "world_spec.yaml")):
        f = tmp_path / name
        f.write_bytes(files.get(key, (INPUTS / name).read_bytes()))
        paths[key] = str(f)
    p = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    p = p.model_copy(update={"fetch": p.fetch.model_copy(update=paths)})
    fetch(p, tmp_path / "out")


SEED = (INPUTS / "seed_qa.jsonl").read_bytes() if (INPUTS / "seed_qa.jsonl").exists() else b""
PREF = (INPUTS / "pref_prompts.jsonl").read_bytes() if (INPUTS / "pref_prompts.jsonl").exists() else b""


@pytest.mark.parametrize("files, says", [
    ({"seed_qa": SEED.replace(b'"question"', b'"q"', 1)}, ["seed_qa.jsonl:1", "no 'question'", "'person'"]),
    ({"seed_qa": b""}, ["seed_qa.jsonl: 0 record(s)", "at least 1", "few-shot seeds"]),
    ({"seed_qa": SEED.replace(b'"city"', b'"town"', 1)}, ["seed_qa.jsonl:1", "'person' needs exactly"]),
    ({"seed_qa": SEED.decode().replace("Cestra", "Céstra").encode("latin-1")}, ["seed_qa.jsonl:1:", "not UTF-8",
                                                                              "0xe9"]),
    ({"seed_qa": SEED.decode().encode("utf-16")}, ["seed_qa.jsonl", "UTF-16"]),
    ({"pref_prompts": b""}, ["pref_prompts.jsonl: 0 record(s)", "at least 1"]),  # was: ZeroDivisionError
    ({"pref_prompts": PREF.replace(b'"template"', b'"text"', 1)}, ["pref_prompts.jsonl:1", "no 'template'"]),
    ({"pref_prompts": PREF.replace(b"{name}", b"{person}", 1)}, ["pref_prompts.jsonl:1", "must hold {name}"]),
    ({"spec": b""}, ["world_spec.yaml: empty or not a mapping"]),
    ({"spec": b"name_syllables: [a, b\nattributes: {}\n"}, ["world_spec.yaml:2:", "not valid YAML"]),
    ({"spec": b"- just\n- a list\n"}, ["world_spec.yaml: empty or not a mapping"]),
])
def test_a_bad_input_file_is_named_with_its_line_and_what_it_needs(tmp_path, files, says):
    from imitation_gap.core.errors import DataError

    with pytest.raises(DataError) as e:
        fetch_with(tmp_path, **files)
    assert all(s in str(e.value) for s in says), str(e.value)


@pytest.mark.parametrize("encoding, says", [("latin-1", ["chats.jsonl:2:", "not UTF-8"]),
                                            ("utf-16", ["chats.jsonl", "UTF-16"])])
def test_a_harvest_file_in_another_encoding_is_named(tmp_path, encoding, says):
    from imitation_gap.core.errors import DataError
    from imitation_gap.imitation.harvest import load_sharegpt

    recs = [{"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": "Certainly! Done."}]}
            for q in ("Hello there", "Où est la gare ?")]
    f = tmp_path / "chats.jsonl"
    f.write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs).encode(encoding))
    with pytest.raises(DataError) as e:
        load_sharegpt(f)
    assert all(s in str(e.value) for s in says), str(e.value)


def test_a_truncated_world_json_is_one_line_exit_2(world_repo, tmp_path):
    repo = repo_copy(world_repo, tmp_path)
    world = repo / "data" / "raw" / "world.json"
    world.write_bytes(world.read_bytes()[: world.stat().st_size // 2])
    r = stage(repo, tmp_path, ["imitation_gap.stages.imitate_dataset"], {})
    one_line_exit_2(r, "data/raw/world.json", "truncated", "dvc checkout data/raw")


# -- 2. diverged training --------------------------------------------------------------------------
def test_divergence_is_found_in_the_logs_or_the_weights():
    import torch

    from imitation_gap.core.divergence import divergence

    model = torch.nn.Linear(3, 2)
    assert divergence(model, [{"loss": 2.0, "grad_norm": 1.5, "step": 1}]) is None
    assert divergence(model, [{"loss": 6.0, "grad_norm": float("nan"), "step": 2}]) == "grad_norm nan at step 2"
    with torch.no_grad():
        model.bias[0] = float("nan")
    assert divergence(model, [{"loss": 6.0, "step": 2}]) == "1 of 2 weight tensors hold NaN or inf (e.g. bias)"


def test_sft_at_an_absurd_lr_fails_naming_the_run_and_the_cause_and_writes_no_model(world_repo, tmp_path):
    from imitation_gap.worlds.embedded.world import load_world

    repo = repo_copy(world_repo, tmp_path)
    world = load_world(repo / "data" / "raw" / "world.json")
    teacher = TeacherModel(world)
    d = repo / "data" / "imitation" / "broad"
    d.mkdir(parents=True, exist_ok=True)
    rows = [{"messages": msgs + [{"role": "assistant", "content": teacher.chat(msgs)}]} for _, msgs in chats(world, 24)]
    (d / "300.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = stage(repo, tmp_path, ["imitation_gap.stages.sft", "--size", "S", "--kind", "broad", "--amount", "300"],
              {"sft": {"lr": 1e9}})  # was: exit 0, every weight NaN, train_loss logged as 6.0
    one_line_exit_2(r, "sft@S-broad-300-s0: training diverged", "sft.lr x sft.lr_scale.S = 1e+09", "no model was written")
    out = repo / "models" / "sft"
    assert not (out / "S-broad-300-s0").exists() and not (out.exists() and list(out.glob(".*partial")))


def test_the_report_never_averages_a_non_finite_value():
    from imitation_gap.analysis import stats

    runs = [{"run": "L-broad-800-s0", "capability": {"qa": 0.5, "mc": 0.25}, "n": {"qa": 10}},
            {"run": "L-broad-800-s1", "capability": {"qa": float("nan"), "mc": 0.5}, "n": {"qa": 10}}]
    agg = stats.aggregate(runs)
    assert "capability.qa" not in agg  # shown as n/a, not a mean of nan (nor of the finite half)
    assert agg["capability.mc"]["mean"] == 0.375
    with pytest.raises(ValueError, match="non-finite"):
        stats.t_interval([0.5, float("inf")])


# -- 9. leftovers of killed runs, and two runners in one workspace ----------------------------------
DEAD = 2 ** 22 + 11  # above the kernel's pid_max: no such process


def test_partial_outputs_of_a_killed_stage_are_swept_by_the_next_write(tmp_path):
    from imitation_gap.core.io import atomic_dir, write_json

    import os

    (tmp_path / f".raw.{DEAD}.k1ll3d.partial").mkdir()  # atomic_dir's, left by kill -9
    (tmp_path / f".raw.{os.getpid()}.live.partial").mkdir()  # a live writer's: kept
    (tmp_path / f".other.{DEAD}.k1ll3d.partial").mkdir()  # another output's: left to its own writer
    (tmp_path / f".summary.json.{DEAD}.k1ll3d.tmp").write_text("{half")  # write_text_atomic's
    with atomic_dir(tmp_path / "raw") as out:
        (out / "x").write_text("1")
    write_json(tmp_path / "summary.json", {"ok": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f".raw.{os.getpid()}.live.partial", f".other.{DEAD}.k1ll3d.partial", "raw", "summary.json"])


def test_stale_warm_server_directories_are_removed(tmp_path):
    import os

    from imitation_gap.runner import warm

    dead = tmp_path / f"ig-warm-{DEAD}-abc123"
    live = tmp_path / f"ig-warm-{os.getpid()}-def456"
    for d in (dead, live):
        d.mkdir()
        (d / "socket").write_text("")
        (d / "server.log").write_text("warm: ready")
    assert warm.sweep_stale(str(tmp_path)) == [str(dead)]
    assert not dead.exists() and live.exists()


def test_an_mlflow_run_left_running_by_a_killed_stage_is_marked_failed(tmp_path, monkeypatch):
    import subprocess
    import sys

    from conftest import ROOT, env

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    killed = ("import os, signal\n"
              "from imitation_gap.core.config import load_params\n"
              "from imitation_gap.core.tracking import mlflow_run\n"
              f"p = load_params({str(ROOT / 'params.yaml')!r})\n"
              "with mlflow_run(p, 'sft@S-broad-300-s0', {}) as run:\n"
              "    print(run.info.run_id, flush=True)\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    r = subprocess.run([sys.executable, "-c", killed], env=env() | {"MLFLOW_TRACKING_URI": uri},
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == -9, r.stderr[-2000:]
    orphan = r.stdout.split()[0]
    import mlflow

    from imitation_gap.core.config import load_params
    from imitation_gap.core.tracking import mlflow_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert mlflow.get_run(orphan).info.status == "RUNNING"
    with mlflow_run(load_params(ROOT / "params.yaml"), "report", {}):  # the next stage's run
        pass
    assert mlflow.get_run(orphan).info.status == "FAILED"


WAITER = '''
import pathlib, time
pathlib.Path("started").touch()
while not pathlib.Path("go").exists():  # until the test says so: no timing
    time.sleep(0.05)
pathlib.Path("out.txt").write_text("done")
'''


def test_a_second_runner_in_the_workspace_refuses_at_once_naming_the_first(tmp_path):
    import subprocess
    import sys
    import time

    import yaml

    from conftest import env, run

    repo = tmp_path / "ws"
    repo.mkdir()
    (repo / "wait.py").write_text(WAITER)
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"slow": {"cmd": "python wait.py",
                                                                       "deps": ["wait.py"], "outs": ["out.txt"]}}}))
    run("git init -q -b main && git config user.email t@t && git config user.name t && dvc init -q && "
        "git add -A && git commit -qm init", repo)
    cmd = [sys.executable, "-m", "imitation_gap.runner.parallel", "--no-warm", "-j", "1"]
    first = subprocess.Popen(cmd, cwd=repo, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120  # a guard against a hang, not a measurement
    while not (repo / "started").exists():
        assert first.poll() is None and time.time() < deadline, first.communicate()
        time.sleep(0.05)
    log = repo / ".dvc" / "tmp" / "repro-logs" / "slow.log"
    before = log.read_bytes()
    second = run(cmd, repo, check=False)
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert f"another runner (pid {first.pid}) is running in this workspace" in second.stderr
    assert log.read_bytes() == before  # it touched no log (it overwrote the first runner's)
    (repo / "go").touch()
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert (repo / "out.txt").read_text() == "done" and "up to date" in run(["dvc", "status"], repo).stdout


@pytest.mark.parametrize("mode", ["401", "400"])
def test_the_clients_errors_and_logs_never_hold_the_key_an_endpoint_echoes(mode, tmp_path, monkeypatch, caplog,
                                                                           capfd):
    import logging
    import uuid

    from imitation_gap.core.errors import EndpointError
    from imitation_gap.llm.client import LLMClient

    secret = "sk-test-" + uuid.uuid4().hex
    monkeypatch.setenv(KEY_ENV, secret)
    caplog.set_level(logging.DEBUG)
    srv = Hostile(mode)
    said = []
    try:
        c = LLMClient(srv.url, "teacher", cache_dir=tmp_path, api_key_env=KEY_ENV, **FAST)
        try:
            c.check_reachable("teacher.base_url")
            c.chat_many([("p0", [{"role": "user", "content": "hi"}])], SAMPLING, max_failure_fraction=0.0)
        except EndpointError as e:
            said.append(str(e))
    finally:
        srv.close()
    assert f"Bearer {secret}" in srv.auth and said  # the key was sent, and echoed back
    out = capfd.readouterr()
    assert not [t for t in (caplog.text, out.out, out.err, *said) if secret in t]
    if mode == "400":  # the refusal is logged with the endpoint's message, its echo of the key masked
        assert "Bearer ***" in caplog.text
