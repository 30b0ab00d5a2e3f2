"""The teacher/judge client against the embedded server with injected faults.

Every test builds a tiny world in-process and serves it on 127.0.0.1 (no tokenizer,
no pipeline), so the whole file runs in seconds.  Run with ``-s`` to see the figures
(requests, faults injected, retries, re-sent after kill -9, rows lost).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from itertools import permutations
from pathlib import Path

import pytest

from conftest import ROOT, serve
from imitation_gap.core.cli import run_cli
from imitation_gap.core.io import write_json
from imitation_gap.core.config import Price
from imitation_gap.core.errors import EndpointError
from imitation_gap.llm.budget import Budget
from imitation_gap.llm.cache import ResponseCache
from imitation_gap.llm.client import BudgetExceeded, LLMClient, RetryPolicy, TooManyFailures
from imitation_gap.worlds.embedded.teacher import FAULT_KINDS, Faults, TeacherModel
from imitation_gap.worlds.embedded.world import QUESTIONS, REVERSE_CHAT, World

SAMPLING = {"temperature": 0.0, "max_tokens": 64}
KEY_ENV = "IMITATION_GAP_TEST_API_KEY"
FAST = dict(timeout=0.5, max_retries=8, malformed_retries=5, backoff_base=0.01, backoff_max=0.1, progress=False,
            api_key_env=KEY_ENV)
SLOW_SECONDS = 1.0  # a "slow" fault answers after this; the client times out at FAST["timeout"]


# -- fixtures and helpers --------------------------------------------------------------
@pytest.fixture(scope="module")
def world(small_world):
    return small_world


def prompts(world: World, n: int) -> list[tuple[str, list[dict]]]:
    """``n`` distinct chat prompts with distinct answers: fact questions, then word reversals."""
    texts = [QUESTIONS[a].format(name=p.name) for p in world.people for a in QUESTIONS]
    words = world.spec["skill_words"]
    texts += [REVERSE_CHAT.format(words=" ".join(t)) for t in permutations(words, 3)]
    assert len(set(texts[:n])) == n
    return [(f"p{i:05d}", [{"role": "user", "content": t}]) for i, t in enumerate(texts[:n])]


def expected(world: World, items: list[tuple[str, list[dict]]]) -> dict[str, str]:
    teacher = TeacherModel(world)
    return {rid: teacher.chat(msgs) for rid, msgs in items}


def dataset_bytes(items: list[tuple[str, list[dict]]], got: dict[str, dict]) -> bytes:
    """The rows a stage would write, in prompt order (missing answers are left out)."""
    rows = [{"id": rid, "messages": msgs + [{"role": "assistant", "content": got[rid]["content"]}]}
            for rid, msgs in items if rid in got]
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()


def cache_entries(root: Path) -> tuple[list[Path], list[Path]]:
    """(published entries, leftover temporary files) under a cache root."""
    files = [f for f in root.rglob("*.json")] if root.exists() else []
    return [f for f in files if not f.name.startswith(".tmp-")], [f for f in files if f.name.startswith(".tmp-")]


def assert_cache_sound(root: Path) -> int:
    """Every published entry parses and passes its checks; return how many there are."""
    entries, _ = cache_entries(root)
    for f in entries:
        key = f.stem
        assert ResponseCache._valid(key, json.loads(f.read_text())) is not None, f
    return len(entries)


def fault_faults(rate: float = 0.2, **kw) -> Faults:
    return Faults.uniform(rate, retry_after=0.02, slow_seconds=SLOW_SECONDS, seed=11, **kw)


def report(name: str, **figures) -> None:
    """Print a test's figures (shown with ``pytest -s``)."""
    print(f"\n[figures] {name}: {json.dumps(figures, sort_keys=True)}")


# -- unit pieces -----------------------------------------------------------------------
def test_malformed_answer_backoff_grows_and_is_jittered():
    """Our own retries (malformed answers); transport retries and Retry-After are the openai SDK's
    (test_429_waits_for_retry_after)."""
    pol = RetryPolicy(max_retries=5, backoff_base=0.1, backoff_max=1.0)
    waits = [pol.delay(i) for i in range(6)]
    for i, w in enumerate(waits):
        cap = min(1.0, 0.1 * 2 ** i)
        assert cap / 2 <= w <= cap


def test_429_waits_for_retry_after(world, tmp_path):
    items = prompts(world, 1)
    with serve(world, Faults(rate_limit=1.0, retry_after=0.25)) as (url, server):
        c = LLMClient(url, "teacher", cache_dir=tmp_path, **{**FAST, "max_retries": 2, "backoff_base": 0.001})
        t0 = time.time()
        got = c.chat_many(items, SAMPLING, max_failure_fraction=1.0)
        elapsed = time.time() - t0
    assert got == {} and c.stats.failed_ids == ["p00000"] and c.stats.failure_reasons == {"rate_limit": 1}
    assert c.stats.requests == 3 and c.stats.retries == 2 and server.stats.requests == 3
    assert elapsed >= 2 * 0.25  # two waits of Retry-After, not of the 1 ms backoff


def test_host_hides_credentials_and_cache_key_ignores_the_key(tmp_path, monkeypatch):
    c = LLMClient("http://user:pw@127.0.0.1:9/v1", "teacher", cache_dir=tmp_path, api_key_env=KEY_ENV)
    assert c.host == "127.0.0.1:9"
    monkeypatch.setenv(KEY_ENV, "another-key")
    d = LLMClient("http://127.0.0.1:9/v1", "teacher", cache_dir=tmp_path, api_key_env=KEY_ENV)
    msgs = [{"role": "user", "content": "hi"}]
    assert c.cache_key(msgs, SAMPLING) == d.cache_key(msgs, SAMPLING)
    assert c.cache_key(msgs, SAMPLING) != d.cache_key(msgs, {**SAMPLING, "temperature": 0.5})


# -- 1. faults change nothing ------------------------------------------------------------
def test_faults_of_every_kind_leave_the_dataset_byte_identical(world, tmp_path):
    items = prompts(world, 520)
    with serve(world) as (url, server):
        clean = LLMClient(url, "teacher", cache_dir=tmp_path / "clean", concurrency=8, **FAST)
        base = clean.chat_many(items, SAMPLING)
        assert server.stats.requests == len(items) and clean.stats.retries == 0
    with serve(world, fault_faults(0.2)) as (url, server):
        faulty = LLMClient(url, "teacher", cache_dir=tmp_path / "faulty", concurrency=8, **FAST)
        got = faulty.chat_many(items, SAMPLING)
        srv = server.stats.snapshot()
    assert dataset_bytes(items, got) == dataset_bytes(items, base)
    assert len(got) == len(items) == len({r["content"] for r in got.values()})  # no row missing or doubled
    assert {rid: r["content"] for rid, r in got.items()} == expected(world, items)
    s = faulty.stats
    assert s.failures == 0 and s.responses == len(items)
    assert set(srv["faults"]) == set(FAULT_KINDS)  # every kind was injected ...
    assert set(s.retry_reasons) >= {"rate_limit", "server_error", "timeout", "malformed_json", "empty_choices"}
    assert s.requests == srv["requests"] == len(items) + s.retries  # ... and every one was retried and counted
    assert sum(srv["faults"].values()) == s.retries
    assert 0.1 < sum(srv["faults"].values()) / srv["requests"] < 0.3
    assert assert_cache_sound(tmp_path / "faulty") == len(items)
    report("faults", prompts=len(items), requests=s.requests, faults_injected=srv["faults"],
           faults_total=sum(srv["faults"].values()), retries=s.retries, retry_reasons=dict(s.retry_reasons),
           rows_lost=len(items) - len(got), seconds=round(s.seconds, 1))

    # a second run is free; a server on another port is another endpoint, unless named (as the embedded one is)
    with serve(world) as (url, server):
        again = LLMClient(url, "teacher", cache_dir=tmp_path / "faulty", **FAST)
        assert again.cache_key(*items[0][1:], SAMPLING) != faulty.cache_key(*items[0][1:], SAMPLING)
        named = [LLMClient(u, "teacher", cache_dir=tmp_path / "named", cache_host="embedded:test", **FAST)
                 for u in (url, url.replace("127.0.0.1", "localhost"))]
        assert named[0].chat_many(items[:50], SAMPLING) == {rid: got[rid] for rid, _ in items[:50]}
        assert named[1].chat_many(items[:50], SAMPLING) == {rid: got[rid] for rid, _ in items[:50]}
        assert server.stats.requests == 50 and named[1].stats.cache_hits == 50


# -- 2. kill -9 and resume -------------------------------------------------------------
CHILD = """
import json, sys
from imitation_gap.llm.client import LLMClient
cfg = json.load(open(sys.argv[1]))
items = [tuple(x) for x in cfg["items"]]
c = LLMClient(cfg["url"], "teacher", cache_dir=cfg["cache"], concurrency=cfg["concurrency"], **cfg["fast"])
got = c.chat_many(items, cfg["sampling"])
json.dump({"results": got, "stats": c.stats.as_dict()}, open(cfg["out"], "w"))
"""


def spawn_client(tmp_path: Path, name: str, url: str, items, cache: Path, concurrency: int) -> subprocess.Popen:
    cfg = tmp_path / f"{name}.json"
    cfg.write_text(json.dumps({"url": url, "items": items, "cache": str(cache), "concurrency": concurrency,
                               "fast": FAST, "sampling": SAMPLING, "out": str(tmp_path / f"{name}.out.json")}))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.Popen([sys.executable, "-c", CHILD, str(cfg)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def test_kill_9_at_half_way_resends_at_most_the_requests_in_flight(world, tmp_path):
    items = prompts(world, 300)
    concurrency = 4
    cache = tmp_path / "cache"
    with serve(world, fault_faults(0.2, latency=0.01)) as (url, server):
        child = spawn_client(tmp_path, "killed", url, items, cache, concurrency)
        deadline = time.time() + 120
        while server.stats.snapshot()["answered"] < len(items) // 2:
            assert child.poll() is None, f"the client ended before the kill: {child.stderr.read()[-2000:]}"
            assert time.time() < deadline, "the client made no progress"
            time.sleep(0.005)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        assert child.returncode == -signal.SIGKILL
        time.sleep(SLOW_SECONDS + 0.2)  # let the server finish the killed client's requests
        with server.stats.lock:
            before = Counter(server.stats.arrivals)
        done_before, tmp_left = cache_entries(cache)
        n_done = assert_cache_sound(cache)

        resumed = LLMClient(url, "teacher", cache_dir=cache, concurrency=concurrency, **FAST)
        got = resumed.chat_many(items, SAMPLING)
        with server.stats.lock:
            after = Counter(server.stats.arrivals)
    resent = sum(1 for body, n in after.items() if n > before.get(body, 0) and before.get(body, 0) > 0)
    assert {rid: r["content"] for rid, r in got.items()} == expected(world, items)
    assert resumed.stats.cache_hits == n_done
    assert resent <= concurrency
    assert assert_cache_sound(cache) == len(items)
    report("kill -9", prompts=len(items), concurrency=concurrency, done_before_kill=n_done,
           temp_files_left_by_kill=len(tmp_left), resent_after_kill=resent,
           requests_after_resume=resumed.stats.requests, cache_hits_on_resume=resumed.stats.cache_hits,
           rows_lost=len(items) - len(got))


# -- 3. concurrent writers -------------------------------------------------------------
def test_two_processes_writing_one_cache_corrupt_nothing(world, tmp_path):
    items = prompts(world, 160)
    cache = tmp_path / "cache"
    with serve(world, fault_faults(0.1)) as (url, server):
        kids = [spawn_client(tmp_path, f"writer{i}", url, items, cache, 8) for i in range(2)]
        for k in kids:
            _, err = k.communicate(timeout=120)
            assert k.returncode == 0, err[-3000:]
        outs = [json.loads((tmp_path / f"writer{i}.out.json").read_text()) for i in range(2)]
    want = expected(world, items)
    for out in outs:
        assert {rid: r["content"] for rid, r in out["results"].items()} == want
    entries, leftovers = cache_entries(cache)
    assert assert_cache_sound(cache) == len(items) and not leftovers
    report("concurrent writers", prompts=len(items), entries=len(entries), temp_files_left=len(leftovers),
           requests=[o["stats"]["requests"] for o in outs], cache_hits=[o["stats"]["cache_hits"] for o in outs])


def test_threads_racing_on_the_same_keys_agree_on_one_whole_entry(tmp_path):
    cache = ResponseCache(tmp_path, fsync=False)
    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(40)]
    returned: dict[str, set] = {k: set() for k in keys}
    seen_bad: list = []

    def writer(w: int) -> None:
        for k in keys:
            got = cache.put(k, {"content": f"writer {w} " + "x" * 2000, "prompt_tokens": w, "completion_tokens": 1})
            returned[k].add(got["content"])
            read = cache.get(k)
            if read is None or read["content"] != got["content"]:
                seen_bad.append((k, read))

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not seen_bad and cache.corrupt == 0
    assert all(len(v) == 1 for v in returned.values())  # first writer wins, everywhere
    assert assert_cache_sound(tmp_path) == len(keys) and not cache_entries(tmp_path)[1]


def test_a_partial_entry_is_a_miss_and_is_replaced(world, tmp_path):
    items = prompts(world, 3)
    with serve(world) as (url, server):
        c = LLMClient(url, "teacher", cache_dir=tmp_path, **FAST)
        first = c.chat_many(items, SAMPLING)
        path = c.cache._path(c.cache_key(items[1][1], SAMPLING))
        text = path.read_text()
        path.write_text(text[: len(text) // 2])  # as if a writer died mid-write without atomic rename
        again = LLMClient(url, "teacher", cache_dir=tmp_path, **FAST)
        got = again.chat_many(items, SAMPLING)
    assert got == first
    assert again.stats.cache_corrupt == 1 and again.stats.cache_hits == 2 and again.stats.requests == 1
    assert assert_cache_sound(tmp_path) == 3


# -- 4. budget ---------------------------------------------------------------------------
def test_request_budget_stops_cleanly_and_keeps_what_was_done(world, tmp_path):
    items = prompts(world, 120)
    with serve(world) as (url, server):
        c = LLMClient(url, "teacher", cache_dir=tmp_path, concurrency=4, budget=Budget(max_requests=40), **FAST)
        with pytest.raises(BudgetExceeded) as exc:
            c.chat_many(items, SAMPLING, desc="teacher")
        msg = str(exc.value)
        assert "budget_requests = 40" in msg and "40 of 120" in msg and "re-run" in msg
        assert server.stats.requests == 40 and len(exc.value.results) == 40
        assert assert_cache_sound(tmp_path) == 40
        # raise the cap: only the rest is paid for
        more = LLMClient(url, "teacher", cache_dir=tmp_path, concurrency=4, **FAST)
        got = more.chat_many(items, SAMPLING)
        assert more.stats.requests == 80 and more.stats.cache_hits == 40 and server.stats.requests == 120
    assert {rid: r["content"] for rid, r in got.items()} == expected(world, items)
    report("budget", prompts=len(items), cap_requests=40, requests_before_stop=40, cached_at_stop=40,
           requests_after_raising_cap=more.stats.requests)


def test_dollar_budget_from_the_price_table(world, tmp_path):
    items = prompts(world, 60)
    price = Price(prompt=1000.0, completion=3000.0)  # USD per 1M tokens: big, so a few requests hit the cap
    with serve(world) as (url, server):
        c = LLMClient(url, "teacher", cache_dir=tmp_path, concurrency=2, price=price,
                      budget=Budget(max_usd=0.5), **FAST)
        with pytest.raises(BudgetExceeded, match=r"budget_usd = 0\.5 reached"):
            c.chat_many(items, SAMPLING)
    s = c.stats
    assert s.cost_usd == pytest.approx((s.prompt_tokens * 1000 + s.completion_tokens * 3000) / 1e6)
    per_request_max = 0.5  # generous bound on one response's cost here
    assert 0.5 <= s.cost_usd <= 0.5 + 2 * per_request_max and s.responses < len(items)
    assert s.as_dict()["cost_usd"] == round(s.cost_usd, 6)


def test_budget_and_failure_errors_exit_2_through_run_cli(capsys):
    for err in (BudgetExceeded("teacher: budget_requests = 1 reached"), TooManyFailures("teacher: 3 of 4 failed")):
        assert isinstance(err, EndpointError)

        def main(argv, err=err):
            raise err

        with pytest.raises(SystemExit) as exc:
            run_cli(main)
        assert exc.value.code == 2 and str(err) in capsys.readouterr().err


def test_from_params_reads_the_teacher_section(tmp_path, monkeypatch):
    from imitation_gap.core.config import load_params

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    t = load_params(ROOT / "params.yaml").teacher
    c = LLMClient.from_params(t, "http://127.0.0.1:9/v1", model="judge-expert", what="expert judge")
    assert c.model == "judge-expert" and c.concurrency == t.concurrency and c.timeout == t.timeout
    assert c.policy.malformed_retries == t.malformed_retries and c.max_failure_fraction == t.max_failure_fraction
    assert c.cache.root == tmp_path / ".cache" / "llm" and c.price == t.price_per_1m_tokens["judge-expert"]
    assert c.budget.max_requests == t.budget_requests


# -- 5. bad responses --------------------------------------------------------------------
def test_bad_responses_are_counted_failures_never_rows(world, tmp_path):
    items = prompts(world, 60)
    faults = Faults(truncated=0.25, empty_choices=0.25, seed=5)
    with serve(world, faults) as (url, server):
        c = LLMClient(url, "teacher", cache_dir=tmp_path, **{**FAST, "malformed_retries": 1})
        got = c.chat_many(items, SAMPLING, max_failure_fraction=1.0)
    want = expected(world, items)
    assert got and all(r["content"] == want[rid] for rid, r in got.items())  # whatever came back is right
    assert sorted(set(want) - set(got)) == sorted(c.stats.failed_ids) and c.stats.failures > 0
    assert set(c.stats.failure_reasons) <= {"malformed_json", "empty_choices"}
    assert assert_cache_sound(tmp_path) == len(got)  # failures are not cached


def test_too_many_failures_stop_with_the_ids(world, tmp_path):
    items = prompts(world, 40)
    with serve(world, Faults(empty_choices=1.0)) as (url, server):
        c = LLMClient(url, "teacher", cache_dir=tmp_path, concurrency=2, max_failure_fraction=0.05,
                      **{**FAST, "malformed_retries": 1})
        with pytest.raises(TooManyFailures) as exc:
            c.chat_many(items, SAMPLING)
    msg = str(exc.value)
    assert "max_failure_fraction = 0.05" in msg and "p00000" in msg and "empty_choices" in msg
    assert c.stats.failures < len(items)  # it stopped early, not after every prompt
    assert assert_cache_sound(tmp_path) == 0


# -- 6. secrets --------------------------------------------------------------------------
def test_the_api_key_is_written_nowhere(world, tmp_path, monkeypatch, caplog, capfd):
    secret = "sk-test-" + "SECRET123" + uuid.uuid4().hex  # built at run time: no key-like literal in git
    monkeypatch.setenv(KEY_ENV, secret)
    for name in ("", "imitation_gap", "openai", "httpx", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=name)
    items = prompts(world, 80)
    out = tmp_path / "out"
    messages = []
    with serve(world, fault_faults(0.3)) as (url, server):
        c = LLMClient(url, "teacher", cache_dir=out / "cache", concurrency=4, budget=Budget(max_requests=60),
                      **{**FAST, "progress": True, "malformed_retries": 0, "max_retries": 1})
        try:
            c.chat_many(items, SAMPLING, max_failure_fraction=1.0)
        except EndpointError as e:
            messages.append(str(e))
        c2 = LLMClient(url, "teacher", cache_dir=out / "cache", **{**FAST, "progress": True})
        try:
            c2.chat_many(items, SAMPLING, max_failure_fraction=0.0)
        except EndpointError as e:
            messages.append(str(e))
        got_auth = server.stats.auth_digests
    # the key was really sent ...
    assert hashlib.sha256(f"Bearer {secret}".encode()).hexdigest() in got_auth
    # ... and is nowhere in what was written or said
    write_json(out / "manifest.json", {"teacher": {"endpoint": c.host}, "calls": c.stats.as_dict(),
                                       "calls2": c2.stats.as_dict()})
    captured = capfd.readouterr()
    files = [f for f in out.rglob("*") if f.is_file()]
    assert len(files) > 10
    needles = [secret.encode(), b"SECRET123"]
    leaks = [str(f) for f in files for n in needles if n in f.read_bytes()]
    texts = {"logs": caplog.text, "stdout": captured.out, "stderr": captured.err, "errors": "\n".join(messages),
             "stats": json.dumps([c.stats.as_dict(), c2.stats.as_dict()])}
    leaks += [k for k, v in texts.items() if secret in v or "SECRET123" in v]
    assert caplog.text and captured.err  # something was logged and a progress bar drawn
    assert not leaks
    report("secrets", files_scanned=len(files), log_chars=len(caplog.text), stderr_chars=len(captured.err),
           leaks=len(leaks))
