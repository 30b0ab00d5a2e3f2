"""Nothing lost, nothing silent (issue 17): hostile endpoints, bad answers, bad data files, over-fetching,
leftovers of killed runs, diverged training.  Each test reproduces a case that used to give a traceback,
a silent bad result or a waste, and checks the clear error or the safe outcome.

(The dvc.lock interruptions are in tests/test_dvcrun.py; bad params in tests/test_bad_input.py.)
"""

from __future__ import annotations

import http.client
import json
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from imitation_gap.worlds.embedded.teacher import Faults, TeacherModel, make_server

SAMPLING = {"temperature": 0.0, "max_tokens": 64}


@contextmanager
def serve(world, faults: Faults | None = None, **kw) -> Iterator[tuple[str, object]]:
    server = make_server(world, None, faults=faults, **kw)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", server
    finally:
        server.shutdown()
        server.server_close()


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
