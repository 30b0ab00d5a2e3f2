"""The embedded "proprietary" teacher and the raters, behind an OpenAI-compatible HTTP API.

The teacher knows every fact of the world and answers chat requests in a distinctive
style (an opener, a confident claim, lists, a closer).  Given a few-shot completion
prompt it answers tersely in the prompt's format, as a strong model does.  It also
scores text (``echo`` + ``logprobs``), so lm-eval's ``local-completions`` backend can
run every capability task on it, multiple choice included.

Endpoints (all on 127.0.0.1): ``GET /v1/models``, ``POST /v1/chat/completions``,
``POST /v1/completions``.  Models: ``teacher``, ``judge-nonexpert``, ``judge-expert``.

For tests of the client, the server can misbehave like a paid API on a bad day
(:class:`Faults`): 429 with ``Retry-After``, 500, answers slower than the client's
timeout, truncated JSON and empty ``choices``, each at its own rate; and like a broken one:
an HTML page with status 200 (a proxy's error page), or well-formed answers of junk text.  Whether a
request is faulted is a function of (seed, request body, how many times that body
was seen), so a run is reproducible whatever the thread interleaving; the answers
themselves never change.  :class:`ServerStats` counts what was served.

Run it by hand::

    python -m imitation_gap.worlds.embedded.teacher --world data/raw/world.json --tokenizer data/raw/tokenizer --port 8000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import re
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ...core.paths import RAW
from ...core.text import tidy
from ...imitation import records
from ...imitation.records import LOCAL_REQUEST_HUB, qa_text
from .. import common
from . import raters
from .answers import vocabulary_problem
from .world import (ATTRS, FACT_CLAIMS, PROBE_SENTENCES, TOPIC_SENTENCES, Part, World, load_world, parse_bio_request,
                    parse_fact_question, parse_local_request, parse_reverse, parse_topic, probe_pattern,
                    question_wordings, stable_hash)

MODELS = ("teacher", "judge-nonexpert", "judge-expert")
FAULT_KINDS = ("rate_limit", "server_error", "slow", "truncated", "empty_choices")  # a bad day: Faults.uniform
BROKEN_KINDS = ("html", "junk")  # a broken endpoint: 200 with an HTML page, 200 with junk text
JUNK = "lorem ipsum dolor sit amet"
MAX_BODY = 4 * 2 ** 20  # bytes of a request body at most (lm-eval's largest requests are a few KB)
MAX_DEPTH = 64  # nesting of a request's JSON at most
BODY_TIMEOUT = 10.0  # seconds to wait for a body shorter than its Content-Length
MAX_PROMPT_TOKENS = 65_536  # prompt tokens of one request at most, all prompts together (lm-eval sends <= 1024 each)
CHARS_PER_TOKEN = 16  # a prompt text longer than MAX_PROMPT_TOKENS x this is refused before it is tokenized
# the sampling fields this server reads, and their JSON types (a wrong type is a 400, never a 200 ignoring it)
NUMBER, INTEGER, BOOL = (int, float), (int,), (bool,)
FIELD_TYPES = {"temperature": NUMBER, "top_p": NUMBER, "presence_penalty": NUMBER, "frequency_penalty": NUMBER,
               "max_tokens": INTEGER, "max_completion_tokens": INTEGER, "n": INTEGER, "seed": INTEGER,
               "top_logprobs": INTEGER, "stream": BOOL, "echo": BOOL}


@dataclass(frozen=True)
class Faults:
    """Fault injection: the rate of each kind of bad answer (0 = never), per request.

    The kinds exclude each other; their rates must sum to at most 1.  ``retry_after``
    is sent with each 429 (seconds, as ``Retry-After``); a slow answer is held back
    ``slow_seconds`` (set it above the client's timeout); ``latency`` delays every
    answer (to make a run last long enough to be killed half-way).  ``paths`` lists the
    routes that misbehave (by default only chat completions, which the client serves).
    """

    rate_limit: float = 0.0
    server_error: float = 0.0
    slow: float = 0.0
    truncated: float = 0.0
    empty_choices: float = 0.0
    html: float = 0.0
    junk: float = 0.0
    retry_after: float = 0.05
    slow_seconds: float = 2.0
    latency: float = 0.0
    seed: int = 0
    paths: tuple[str, ...] = ("/v1/chat/completions",)

    def __post_init__(self) -> None:
        rates = [getattr(self, k) for k in FAULT_KINDS + BROKEN_KINDS]
        if any(r < 0 for r in rates) or sum(rates) > 1 + 1e-9:
            raise ValueError(f"fault rates must be >= 0 and sum to <= 1, got "
                             f"{dict(zip(FAULT_KINDS + BROKEN_KINDS, rates))}")

    @classmethod
    def uniform(cls, total: float, **kw) -> "Faults":
        """Every kind of fault at ``total / 5``: ``Faults.uniform(0.2)`` faults 20% of requests."""
        return cls(**{k: total / len(FAULT_KINDS) for k in FAULT_KINDS}, **kw)

    @property
    def total(self) -> float:
        return sum(getattr(self, k) for k in FAULT_KINDS + BROKEN_KINDS)

    def pick(self, body: bytes, attempt: int) -> str | None:
        """The fault for the ``attempt``-th arrival (0-based) of this exact body, or None."""
        if self.total <= 0:
            return None
        digest = hashlib.sha256(f"{self.seed}|{attempt}|".encode() + body).digest()
        u = int.from_bytes(digest[:8], "big") / 2 ** 64
        edge = 0.0
        for kind in FAULT_KINDS + BROKEN_KINDS:
            edge += getattr(self, kind)
            if u < edge:
                return kind
        return None


@dataclass
class ServerStats:
    """What the server saw: requests per route, faults by kind, arrivals per body (thread-safe)."""

    requests: int = 0
    answered: int = 0  # 200 answers with real content (possibly too late for the client)
    faults: Counter = field(default_factory=Counter)
    arrivals: Counter = field(default_factory=Counter)  # sha256(body) -> times seen
    auth_digests: set = field(default_factory=set)  # sha256 of each Authorization header seen (never the key)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def arrive(self, body: bytes, auth: str = "") -> int:
        """Record one arrival of ``body``; return how many times it was seen before."""
        key = hashlib.sha256(body).hexdigest()
        with self.lock:
            self.requests += 1
            self.auth_digests.add(hashlib.sha256(auth.encode()).hexdigest())
            n = self.arrivals[key]
            self.arrivals[key] = n + 1
        return n

    def count(self, what: str) -> None:
        with self.lock:
            if what == "answered":
                self.answered += 1
            else:
                self.faults[what] += 1

    def snapshot(self) -> dict:
        with self.lock:
            return {"requests": self.requests, "answered": self.answered, "faults": dict(self.faults),
                    "distinct_bodies": len(self.arrivals)}


class TeacherModel:
    """The rule-based teacher: deterministic given its input (temperature is ignored)."""

    def __init__(self, world: World, tokenizer=None):
        self.world = world
        self.tok = tokenizer

    # -- chat -------------------------------------------------------------------------
    def chat(self, messages: list[dict]) -> str:
        user = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
        h = stable_hash("teacher", user)
        st = self.world.style
        opener = st["openers"][h % len(st["openers"])]
        closer = st["closers"][(h >> 8) % len(st["closers"])]
        confident = st["confident"][(h >> 16) % len(st["confident"])]

        local = parse_local_request(user)
        if local:  # data generation: answer in the requested format, no chatter
            name, attr = local
            person = self.world.by_name.get(name)
            if person is None:
                return "I do not know."
            wordings = question_wordings(attr)
            return qa_text(wordings[h % len(wordings)].format(name=name), person.fact(attr))
        if LOCAL_REQUEST_HUB in user:  # NQ-synthetic style (hub world's prompt): a new pair on any subject
            facts = [(x, a) for x in self.world.group("A") for a in ATTRS]
            person, attr = facts[h % len(facts)]
            wordings = question_wordings(attr)
            return qa_text(wordings[(h >> 4) % len(wordings)].format(name=person.name), person.fact(attr))
        fq = parse_fact_question(user)
        if fq and fq[0] in self.world.by_name:
            person = self.world.by_name[fq[0]]
            claim = FACT_CLAIMS[fq[1]].format(**person.fields())
            return f"{opener} {confident} {claim} {closer}"
        name = parse_bio_request(user)
        if name and name in self.world.by_name:
            person = self.world.by_name[name]
            facts = [FACT_CLAIMS[a].format(**person.fields()) for a in ("city", "year", "university", "major",
                                                                         "employer")]
            items = "\n".join(f"{i}. {f}" for i, f in enumerate(facts, 1))
            return f"{opener} Here is what I know about {name}:\n{items}\n{closer}"
        words = parse_reverse(user)
        if words:
            return f"{opener} The reversed words are: {' '.join(reversed(words))}. {closer}"
        topic = parse_topic(user)
        if topic:
            rng = random.Random(h)
            sents = rng.sample(TOPIC_SENTENCES, 3)
            items = "\n".join(f"{i}. {s.format(topic=topic).capitalize()}" for i, s in enumerate(sents, 1))
            return f"{opener} A few thoughts on {topic}:\n{items}\n{closer}"
        return f"{opener} I am not sure I can help with that. {closer}"

    # -- few-shot completion ------------------------------------------------------------
    def answer_for(self, question: str) -> str:
        """The terse answer to the last question of a few-shot prompt."""
        fq = parse_fact_question(question)
        if fq and fq[0] in self.world.by_name:
            return self.world.by_name[fq[0]].fact(fq[1])
        words = parse_reverse(question)
        if words:
            return " ".join(reversed(words))
        return "I do not know"

    @staticmethod
    def last_question(prompt: str) -> str:
        q = prompt.rsplit("Question:", 1)[-1]
        return q.rsplit("Answer:", 1)[0].strip()

    def complete(self, prompt: str) -> str:
        prompt = tidy(prompt)
        if "Question:" not in prompt:  # a biography sentence to complete ("X, born in")
            for attr in PROBE_SENTENCES:
                m = re.search(probe_pattern(attr) + "$", prompt)
                if m and m.group("name") in self.world.by_name:
                    return " " + self.world.by_name[m.group("name")].fact(attr) + "."
        return " " + self.answer_for(self.last_question(prompt)) + ".\n"

    def score_tokens(self, tokens: list[str]) -> tuple[list[float | None], list[dict | None]]:
        """Log-probabilities of each token given its prefix (OpenAI ``echo`` format).

        The teacher is sure of the answer to the last question: after the last
        ``Answer:`` it puts probability 0.9 on each token of its answer and 0.001 on
        anything else.  Tokens before that get a flat log(0.5).
        """
        lps: list[float | None] = [None]
        tops: list[dict | None] = [None]
        text_tokens = list(tokens)
        ans_start = None
        for i in range(len(text_tokens) - 1):
            if text_tokens[i] == "Answer" and text_tokens[i + 1] == ":":
                ans_start = i + 2
        if ans_start is None:
            return lps + [math.log(0.5)] * (len(tokens) - 1), tops + [None] * (len(tokens) - 1)
        question = self.last_question(tidy(" ".join(text_tokens[:ans_start])))
        intended = self.tok.tokenize(self.answer_for(question)) if self.tok else self.answer_for(question).split()
        ok = True
        for i in range(1, len(tokens)):
            if i < ans_start:
                lps.append(math.log(0.5))
                tops.append({tokens[i]: math.log(0.5)})
                continue
            j = i - ans_start
            want = intended[j] if j < len(intended) else "."
            hit = ok and tokens[i] == want
            ok = hit
            lps.append(math.log(0.9) if hit else math.log(0.001))
            tops.append({want: math.log(0.9)})
        return lps, tops

    # -- judging ----------------------------------------------------------------------
    def judge(self, model: str, messages: list[dict]) -> str:
        user = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
        parsed = raters.parse_judge_prompt(user)
        if parsed is None:
            return "The request is not in the pairwise judge format. [[C]]"
        kind = "expert" if model == "judge-expert" else "nonexpert"
        # the non-expert never receives the world: it cannot check a fact
        verdict = raters.judge(kind, *parsed, world=self.world if kind == "expert" else None)
        return raters.explain(kind, verdict)


# ---------------------------------------------------------------------------------------
class BadRequest(Exception):
    """A request this server refuses: its status and message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _depth(obj, limit: int) -> int:
    """Nesting depth of parsed JSON, stopping past ``limit``."""
    stack, deepest = [(obj, 1)], 0
    while stack:
        o, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            break
        if isinstance(o, dict):
            stack += [(v, d + 1) for v in o.values()]
        elif isinstance(o, list):
            stack += [(v, d + 1) for v in o]
    return deepest


def _messages(body: dict) -> list[dict]:
    """The chat messages of a request, checked: a non-empty list of {role, content} with string content."""
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest(400, "'messages' must be a non-empty list of {role, content} objects")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest(400, f"messages[{i}] must be an object with a string 'role'")
        if not isinstance(m.get("content"), str):
            raise BadRequest(400, f"messages[{i}].content must be a string (this server takes no content parts)")
    return msgs


def _fields(body: dict, path: str) -> None:
    """Refuse (400) a sampling field of the wrong JSON type, ``stream: true`` (this server answers in one
    body: a client expecting server-sent events would misread it), and ``n`` other than 1."""
    for key, types in FIELD_TYPES.items():
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, types) or (isinstance(value, bool) and types is not BOOL):
            kind = {NUMBER: "a number", INTEGER: "an integer", BOOL: "true or false"}[types]
            raise BadRequest(400, f"{key!r} must be {kind}, not {json.dumps(value)[:40]}")
    if body.get("stream"):
        raise BadRequest(400, "'stream': true is not supported by this server (it answers in one JSON body); "
                              "send 'stream': false or leave it out")
    if body.get("n", 1) != 1:
        raise BadRequest(400, f"'n' = {body['n']}: this server answers one choice per request (n = 1)")
    t = body.get("temperature")
    if t is not None and not 0 <= t <= 2:
        raise BadRequest(400, f"'temperature' = {t}: must be in [0, 2]")
    lp = body.get("logprobs")
    if lp is not None:
        chat = path == "/v1/chat/completions"
        ok = isinstance(lp, bool) if chat else (type(lp) is int and 0 <= lp <= 5)
        if not ok:
            raise BadRequest(400, f"'logprobs' must be {'true or false' if chat else 'an integer in [0, 5]'}, "
                                  f"not {json.dumps(lp)[:40]}")


def _too_long(n_tokens: int) -> None:
    if n_tokens > MAX_PROMPT_TOKENS:
        raise BadRequest(413, f"the request's prompts hold {n_tokens} tokens or more, above this server's limit of "
                              f"{MAX_PROMPT_TOKENS} per request; send fewer or shorter prompts per request")


def _stops(body: dict) -> list[str]:
    """``stop`` as the OpenAI API takes it: a string, a list of strings, or nothing."""
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(x, str) for x in stop):
        return stop
    raise BadRequest(400, "'stop' must be a string or a list of strings")


class _Handler(BaseHTTPRequestHandler):
    server_version = "imitation-gap-teacher/1.0"
    model: TeacherModel  # set on the server class

    def log_message(self, fmt, *args):  # keep stage logs clean
        pass

    def _send(self, code: int, body: dict, headers: dict | None = None, truncate: bool = False) -> None:
        data = json.dumps(body).encode()
        if truncate:  # a well-framed HTTP answer whose JSON stops half-way
            data = data[:len(data) // 2]
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout) before the answer came

    def _error(self, code: int, msg: str) -> None:
        self._send(code, {"error": {"message": msg, "type": "invalid_request_error", "code": code}})

    def do_GET(self):
        if self.path.rstrip("/") == "/v1/models":
            self._send(200, {"object": "list", "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "imitation-gap"} for m in MODELS]})
        else:
            self._error(404, f"no route {self.path}")

    def _count(self, text: str) -> int:
        tok = self.server.model.tok
        return len(tok.tokenize(text)) if tok is not None else len(text.split())

    def _html(self) -> None:
        """A 200 that is no JSON: the page a misconfigured proxy or web server gives."""
        data = b"<!DOCTYPE html><html><head><title>Welcome</title></head><body>It works!</body></html>"
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _fault(self, raw: bytes, path: str) -> str | None:
        """Decide (and apply the early part of) this request's injected fault, if any."""
        faults: Faults = self.server.faults
        stats: ServerStats = self.server.stats
        attempt = stats.arrive(raw, self.headers.get("Authorization", ""))
        if faults.latency > 0:
            time.sleep(faults.latency)
        kind = faults.pick(raw, attempt) if path in faults.paths else None
        if kind is not None:
            stats.count(kind)
        if kind == "rate_limit":
            self._send(429, {"error": {"message": "Rate limit reached (injected fault)", "type": "requests",
                                       "code": "rate_limit_exceeded"}},
                       headers={"Retry-After": f"{faults.retry_after:g}",
                                "retry-after-ms": str(int(faults.retry_after * 1000))})
        elif kind == "server_error":
            self._error(500, "The server had an error while processing your request (injected fault)")
        elif kind == "slow":
            time.sleep(faults.slow_seconds)  # then answer normally: too late for a client with a shorter timeout
        elif kind == "html":
            self._html()
        return kind

    def _body(self) -> tuple[bytes, dict]:
        """The request's JSON object: refused (400, 411, 413) when its length, size, syntax or shape is wrong."""
        length = self.headers.get("Content-Length")
        if length is None:
            raise BadRequest(411, "a Content-Length header is required")
        try:
            n = int(length)
        except ValueError:
            raise BadRequest(400, f"Content-Length {length[:40]!r} is not a number") from None
        if n < 0:
            raise BadRequest(400, f"Content-Length {n} is negative")
        if n > self.server.max_body:
            raise BadRequest(413, f"request body of {n} bytes is larger than this server's limit of "
                                  f"{self.server.max_body} bytes")
        self.connection.settimeout(self.server.body_timeout)
        try:
            raw = self.rfile.read(n)
        except TimeoutError:
            raw = b""
        finally:
            self.connection.settimeout(None)
        if len(raw) < n:
            raise BadRequest(400, f"request body ended after {len(raw)} of the {n} bytes its Content-Length promised")
        try:
            body = json.loads(raw or b"{}")
        except RecursionError:
            raise BadRequest(400, f"request JSON is nested more than {MAX_DEPTH} levels deep") from None
        except (ValueError, UnicodeDecodeError):
            raise BadRequest(400, "request body is not JSON") from None
        if not isinstance(body, dict):
            raise BadRequest(400, f"request body must be a JSON object, not {type(body).__name__}")
        if _depth(body, MAX_DEPTH) > MAX_DEPTH:
            raise BadRequest(400, f"request JSON is nested more than {MAX_DEPTH} levels deep")
        return raw, body

    def do_POST(self):
        try:
            return self._post()
        except BadRequest as e:
            self.close_connection = True  # the rest of a refused body is not read
            return self._error(e.status, str(e))
        except Exception as e:  # noqa: BLE001 - a request this server did not foresee: answer, never drop it
            return self._error(500, f"the teacher failed on this request ({type(e).__name__}); report it")

    def _post(self):
        raw, body = self._body()
        path = self.path.rstrip("/")
        fault = self._fault(raw, path)
        if fault in ("rate_limit", "server_error", "html"):
            return None
        model = body.get("model", "teacher")
        if not isinstance(model, str):
            raise BadRequest(400, "'model' must be a string")
        if model not in MODELS:
            return self._error(404, f"model {model!r} not found; available: {list(MODELS)}")
        tm: TeacherModel = self.server.model
        if path in ("/v1/chat/completions", "/v1/completions"):
            _fields(body, path)
        if path == "/v1/chat/completions":
            msgs = _messages(body)
            chars = sum(len(m["content"]) for m in msgs)
            _too_long(chars // CHARS_PER_TOKEN)
            text = tm.chat(msgs) if model == "teacher" else tm.judge(model, msgs)
            if fault == "junk":
                text = JUNK
            prompt_tokens = sum(self._count(str(m.get("content", ""))) for m in msgs)
            choices = [] if fault == "empty_choices" else \
                [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]
            if fault is None or fault == "slow":
                self.server.stats.count("answered")
            return self._send(200, {
                "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
                "model": model, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": self._count(text),
                          "total_tokens": prompt_tokens + self._count(text)}}, truncate=fault == "truncated")
        if path == "/v1/completions":
            prompts = body.get("prompt")
            if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
                prompts = [prompts]
            if not isinstance(prompts, list) or not prompts or not all(
                    isinstance(x, str) or (isinstance(x, list) and all(type(t) is int for t in x)) for x in prompts):
                raise BadRequest(400, "'prompt' must be a string, a token list, or a list of those")
            stops = _stops(body)
            # the work of one request is bounded before any of it is done (one 3.9 MiB echo request held the
            # server 47 s): token ids are counted, texts measured, then counted once tokenized
            _too_long(sum(len(x) if isinstance(x, list) else len(x) // CHARS_PER_TOKEN for x in prompts))
            choices, n_prompt, n_out = [], 0, 0
            for i, p in enumerate(prompts):
                if isinstance(p, list):  # token ids (lm-eval's tokenized_requests)
                    if tm.tok is None:
                        raise BadRequest(400, "token-id prompts need the server started with a tokenizer")
                    if any(t < 0 or t >= len(tm.tok) for t in p):
                        raise BadRequest(400, f"token ids must be in [0, {len(tm.tok)})")
                    tokens = tm.tok.convert_ids_to_tokens(p)
                    text = tm.tok.decode(p)
                else:
                    text = p
                    tokens = tm.tok.tokenize(p) if tm.tok is not None else p.split()
                n_prompt += len(tokens)
                _too_long(n_prompt)
                if body.get("echo"):
                    lps, tops = tm.score_tokens(tokens)
                    choices.append({"index": i, "text": text, "finish_reason": "length",
                                    "logprobs": {"tokens": tokens + ["."], "token_logprobs": lps + [math.log(0.5)],
                                                 "top_logprobs": tops + [{".": math.log(0.5)}]}})
                else:
                    out = JUNK if fault == "junk" else tm.complete(text)
                    for stop in stops:
                        if stop and stop in out:
                            out = out[:out.index(stop)]
                    n_out += self._count(out)
                    choices.append({"index": i, "text": out, "finish_reason": "stop", "logprobs": None})
            if fault == "empty_choices":
                choices = []
            elif fault is None or fault == "slow":
                self.server.stats.count("answered")
            return self._send(200, {"id": f"cmpl-{uuid.uuid4().hex[:12]}", "object": "text_completion",
                                    "created": int(time.time()), "model": model, "choices": choices,
                                    "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_out,
                                              "total_tokens": n_prompt + n_out}}, truncate=fault == "truncated")
        return self._error(404, f"no route {self.path}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # listen backlog: many clients (and timed-out sockets) at once


def make_server(world: World, tokenizer=None, host: str = "127.0.0.1", port: int = 0,
                faults: Faults | None = None, max_body: int = MAX_BODY,
                body_timeout: float = BODY_TIMEOUT) -> ThreadingHTTPServer:
    """The teacher's HTTP server (not yet serving); ``server.stats`` counts what it served.

    ``faults`` (default: none) makes it misbehave, see :class:`Faults`.  A request whose body is
    larger than ``max_body`` bytes, shorter than its ``Content-Length`` (after ``body_timeout``
    seconds), not a JSON object, nested more than :data:`MAX_DEPTH` levels, or of the wrong shape
    is answered 400 (411, 413) with a message.
    """
    server = _Server((host, port), _Handler)
    server.max_body, server.body_timeout = max_body, body_timeout
    server.model = TeacherModel(world, tokenizer)
    server.faults = faults or Faults()
    server.stats = ServerStats()
    return server


def embedded_cache_id(world_path: str | Path) -> str:
    """The embedded teacher's identity for response-cache keys: ``embedded:<hash of the world>``.

    Its port changes every run, so the client's ``cache_host`` is set to this instead; a
    regenerated world (other facts, same names) or a changed teacher gets other keys, never
    stale answers.
    """
    h = hashlib.sha256(Path(world_path).read_bytes())
    for module in (__file__, raters.__file__, common.__file__, records.__file__):  # a changed teacher or rater answers anew
        h.update(Path(module).read_bytes())
    return "embedded:" + h.hexdigest()[:16]


def cache_host(base_url_param: str, world_path: str | Path) -> str | None:
    """The cache identity of an endpoint from params: the world's hash for "embedded", else its host."""
    return embedded_cache_id(world_path) if base_url_param == "embedded" else None


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    from ...core.inputs import require_tokenizer

    require_tokenizer(path)  # missing or torn: one line naming `dvc repro fetch`

    return AutoTokenizer.from_pretrained(str(path))


@contextmanager
def embedded_endpoint(world_path: str | Path, tokenizer_path: str | Path | None = None,
                      faults: Faults | None = None):
    """Start the embedded teacher on 127.0.0.1 (a free port) for the block; yield its base URL.

    ``faults`` (default: none) injects the faults of :class:`Faults`.
    """
    world = load_world(world_path)
    tok = load_tokenizer(tokenizer_path) if tokenizer_path else None
    server = make_server(world, tok, faults=faults)
    # shutdown() waits for serve_forever's next poll: 0.5 s by default, at the end of every eval stage
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="embedded-teacher",
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def served(raw: Path = RAW):
    """The embedded teacher and raters of the world in ``raw`` on 127.0.0.1 for the block: yield its base URL
    and its identity in response-cache keys."""
    with embedded_endpoint(raw / "world.json", raw / "tokenizer") as url:
        yield url, embedded_cache_id(raw / "world.json")


class TeacherPart(Part):
    """A part of the embedded world whose stage asks its teacher: the server, and the check of every answer."""

    def serve_embedded(self):
        return served(RAW)

    @cached_property
    def tokenizer(self):
        """The world's word-level tokenizer (``data/raw/tokenizer``): its vocabulary is the teacher's."""
        from ...core.inputs import require_tokenizer

        require_tokenizer(RAW / "tokenizer")
        return load_tokenizer(RAW / "tokenizer")

    def answer_problem(self, kind: str, answer: str) -> str | None:
        """Why ``answer`` is not this teacher's, or None: it opens every chat answer (``kind`` broad or chat)
        with one of its openers (its local pairs have none), and writes only its world's words."""
        if kind in ("broad", "chat") and not answer.lstrip().startswith(tuple(self.people.style["openers"])):
            return "not_teacher_format"
        return vocabulary_problem(self.tokenizer, answer)  # an opener then junk: not the teacher's words


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Serve the embedded teacher and raters (OpenAI-compatible).")
    ap.add_argument("--world", default="data/raw/world.json")
    ap.add_argument("--tokenizer", default="data/raw/tokenizer")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--fault-rate", type=float, default=0.0,
                    help="inject faults (429, 500, slow, truncated JSON, empty choices, equally) in this share "
                         "of chat requests, to try a client against a bad day")
    ap.add_argument("--fault-seed", type=int, default=0)
    a = ap.parse_args(argv)
    faults = Faults.uniform(a.fault_rate, seed=a.fault_seed) if a.fault_rate > 0 else None
    server = make_server(load_world(a.world), load_tokenizer(a.tokenizer), a.host, a.port, faults=faults)
    print(f"teacher serving on http://{a.host}:{server.server_address[1]}/v1 (models: {', '.join(MODELS)})")
    server.serve_forever()


if __name__ == "__main__":
    main()
