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


