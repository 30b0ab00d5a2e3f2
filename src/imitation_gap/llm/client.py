"""Teacher and judge calls through the ``openai`` client: cached, retried, budgeted, accounted.

* **Cache.**  Every good response is cached on disk, keyed by a hash of (endpoint host,
  model, messages, sampling params), under ``<repo root>/.cache/llm``; the repo root is
  shared by ``dvc exp run --temp/--queue`` copies (see :func:`imitation_gap.core.io.repo_root`), so an
  interrupted or repeated run never pays twice.  An entry is written to a temporary
  file, fsynced, then published atomically (first writer wins), so concurrent writers
  and a ``kill -9`` never leave a half-written entry; an entry that does not parse or
  fails its checksum is a miss, never data.
* **Resume.**  Each response is cached the moment it arrives, and at most
  ``concurrency`` prompts are in flight, so after ``kill -9`` a re-run re-sends at most
  ``concurrency`` requests.
* **Calls.**  ``asyncio`` + ``AsyncOpenAI`` with ``concurrency`` workers.  Transport
  retries are the SDK's own (``max_retries``): 408/409, 429 (honouring ``Retry-After``),
  5xx, timeouts and dropped connections, with its exponential backoff.  Every HTTP attempt
  passes through a counting transport (:class:`_Attempts`), so each retry is counted
  with its reason (``rate_limit``, ``server_error``, ``timeout``, ``connection``, ``http_<code>``)
  and no attempt starts once the budget is spent.
* **Bad responses.**  A 200 answer that is not a chat completion (truncated JSON, an HTML page,
  no ``choices``), text that is empty or not clean Unicode (:func:`text_problem`), or text that
  the caller's ``validate`` rejects (the embedded teacher's format, a judge's verdict) is retried
  (by us) ``malformed_retries`` times with backoff ``backoff_base * 2**n`` (capped at
  ``backoff_max``), each time with another ``seed`` (:func:`retry_sampling`), then counted as a
  failure with its prompt id and reason; it is never cached nor returned as data.  More than
  ``max_failure_fraction`` failures raise :class:`TooManyFailures`.
* **Budget.**  Caps on requests, tokens and dollars (from a price table); on reaching
  one, no new request starts, the ones in flight finish and are cached, and
  :class:`BudgetExceeded` says what to change.  Both errors are
  :class:`~imitation_gap.core.errors.EndpointError`, which ``run_cli`` turns into a
  one-line message and exit code 2.
* **Secrets.**  The API key is read from the environment variable named in params; it
  is never written to the cache, the stats, the manifest or logs (error texts are
  redacted).  An answer that contains the key, or any secret the process holds
  (:func:`imitation_gap.core.redact.holds_secret`), is refused as ``holds_secret`` (retried, then
  a counted failure), and a cached answer that holds one is dropped on read.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import logging
import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, TypeVar
from urllib.parse import urlparse

import httpx2  # the openai SDK's HTTP client

from ..core.errors import ConfigError, EndpointError, TooManyFailures  # noqa: F401 - TooManyFailures: ours to raise
from ..core import redact
from ..core.io import repo_root
from .budget import Budget, CallStats
from .cache import ResponseCache

log = logging.getLogger("imitation_gap")

if TYPE_CHECKING:
    from ..core.config import Price, Teacher

T = TypeVar("T")

MALFORMED_RETRIES = 2  # default extra tries for a malformed answer
FATAL_STATUS = (401, 403, 404)  # a wrong key, permission or model name: no request can succeed
RETRY_SEED_STEP = 1_000_003  # a malformed answer's n-th retry asks with seed + n x this (a seeded backend answers anew)


def retry_sampling(sampling: dict, retry: int) -> dict:
    """The sampling of retry number ``retry`` (1-based) of a malformed answer: another ``seed``, so that a
    seeded backend does not send the same malformed answer again.  The response is still cached under the
    key of ``sampling``, the request as asked."""
    return {**sampling, "seed": (int(sampling.get("seed") or 0) + RETRY_SEED_STEP * retry) % 2 ** 31}


class BudgetExceeded(EndpointError):
    """A budget cap (requests, tokens or dollars) was reached; what was done is cached.

    ``results`` holds the responses obtained in the interrupted call.
    """

    def __init__(self, message: str, results: dict[str, dict] | None = None):
        super().__init__(message)
        self.results = results or {}


# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RetryPolicy:
    """How often to retry: transport failures by the SDK (``max_retries``), malformed answers by us,
    waiting ``base * 2**n`` seconds (n = retries so far), capped, jittered."""

    max_retries: int = 5
    malformed_retries: int = MALFORMED_RETRIES
    backoff_base: float = 0.5
    backoff_max: float = 30.0

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (0-based) of a malformed answer: jittered backoff."""
        rng = rng or random
        cap = min(self.backoff_max, self.backoff_base * 2 ** min(retry, 30))
        return cap * (0.5 + 0.5 * rng.random())  # "equal jitter": spread the herd, never retry at once


# ---------------------------------------------------------------------------------------
class _Malformed(Exception):
    """A 200 answer that is not a usable chat completion."""


def text_problem(text: object) -> str | None:
    """Why ``text`` is no usable answer (``empty_content``, ``undecodable``, ``control_characters``), or None.

    Clean text is a non-empty ``str`` that encodes to UTF-8 (no lone surrogate from a bad ``\\ud800``
    escape) and holds no replacement character (U+FFFD: bytes that were not UTF-8) and no control
    character besides tab and newlines."""
    if not isinstance(text, str) or not text.strip():
        return "empty_content"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "undecodable"
    if "\ufffd" in text:
        return "undecodable"
    if any(ord(c) < 32 and c not in "\t\n\r" or c == "\x7f" for c in text):
        return "control_characters"
    return None


class _Stop(Exception):
    """Stop starting requests (budget reached, too many failures, endpoint down)."""


def _outcome(status: int) -> str:
    """An HTTP status in the words of ``CallStats.retry_reasons`` / ``failure_reasons``."""
    if status < 400:
        return "ok"
    return "rate_limit" if status == 429 else "server_error" if status >= 500 else f"http_{status}"


@dataclass
class _Call:
    """The HTTP attempts of one SDK call (its own retries included): ``gate`` runs before each."""

    gate: Callable[[], None]
    outcomes: list[str] = field(default_factory=list)


_CALL: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("imitation_gap_llm_call", default=None)


class _Attempts(httpx2.AsyncBaseTransport):
    """An ``httpx`` transport that sees every attempt the SDK makes for the call running in this task
    (:data:`_CALL`): it lets the call's gate stop an attempt (budget, stop flag) and records the outcome."""

    def __init__(self, inner: Any):
        self.inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        call = _CALL.get()
        if call is None:
            return await self.inner.handle_async_request(request)
        call.gate()  # raises _Stop: the SDK does not catch it, the call ends
        try:
            response = await self.inner.handle_async_request(request)
        except httpx2.TimeoutException:
            call.outcomes.append("timeout")
            raise
        except httpx2.TransportError:
            call.outcomes.append("connection")
            raise
        call.outcomes.append(_outcome(response.status_code))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def _run_sync(coro: Awaitable[T]) -> T:
    """Run a coroutine from sync code, also when the caller already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)  # type: ignore[arg-type]
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    t = threading.Thread(target=target, name="llm-client")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class LLMClient:
    """Chat completions from an OpenAI-compatible endpoint; see the module docstring.

    ``chat_many`` is the workhorse; ``stats`` accumulates over the client's calls and
    ``budget`` (shareable between clients) caps them.
    """

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 30.0,
                 max_retries: int = 5, concurrency: int = 8, cache_dir: Path | None = None, what: str = "teacher",
                 *, malformed_retries: int = MALFORMED_RETRIES, backoff_base: float = 0.5,
                 backoff_max: float = 30.0, max_failure_fraction: float = 1.0, budget: Budget | None = None,
                 price: Price | None = None, progress: bool = True, fsync: bool = True,
                 cache_host: str | None = None):
        self.base_url, self.model, self.what = base_url, model, what
        self.concurrency = max(1, int(concurrency))
        self.timeout = float(timeout)
        self.api_key_env = api_key_env
        self._api_key = os.environ.get(api_key_env) or "EMPTY"  # local servers (embedded, vLLM) need none
        parsed = urlparse(base_url)
        self.host = parsed.netloc.rsplit("@", 1)[-1]  # never user:password@ (it is written to the manifest)
        # the endpoint's identity in cache keys: its host, unless the caller names it (the embedded
        # teacher listens on a new port each run, so it passes teacher.embedded_cache_id(world))
        self.cache_host = cache_host or self.host
        self.cache = ResponseCache(Path(cache_dir) if cache_dir else repo_root() / ".cache" / "llm", fsync=fsync)
        self.policy = RetryPolicy(max_retries, malformed_retries, backoff_base, backoff_max)
        self.max_failure_fraction = float(max_failure_fraction)
        self.budget = budget or Budget()
        self.price = price
        self.progress = progress
        self.stats = CallStats(cost_usd=0.0 if price is not None else None,
                               answer_cost_usd=0.0 if price is not None else None)
        self._rng = random.Random()
        self._sync_client = None

    @classmethod
    def from_params(cls, t: "Teacher", base_url: str, *, model: str | None = None, what: str = "teacher",
                    budget: Budget | None = None, **overrides: Any) -> "LLMClient":
        """A client configured by the ``teacher:`` section of params (``model`` overrides it, e.g. a judge).

        Pass one ``budget`` to several clients to cap them together; by default each client
        gets the caps of params.
        """
        model = model or t.model
        if t.cache_dir:
            cache_dir = Path(t.cache_dir)
            cache_dir = cache_dir if cache_dir.is_absolute() else repo_root() / cache_dir
        else:
            cache_dir = None
        price = t.price_per_1m_tokens.get(model)
        if t.budget_usd > 0 and price is None:
            raise ConfigError(f"teacher.budget_usd = {t.budget_usd:g} needs a price for model "
                              f"{model!r}: add it to teacher.price_per_1m_tokens")
        kw: dict[str, Any] = dict(
            api_key_env=t.api_key_env, timeout=t.timeout, max_retries=t.max_retries, concurrency=t.concurrency,
            cache_dir=cache_dir, what=what, malformed_retries=t.malformed_retries, backoff_base=t.backoff_base,
            backoff_max=t.backoff_max, max_failure_fraction=t.max_failure_fraction,
            budget=budget or Budget(t.budget_requests, t.budget_tokens, t.budget_usd), price=price)
        kw.update(overrides)
        return cls(base_url, model, **kw)

    # -- helpers ------------------------------------------------------------------------
    def redact(self, text: object) -> str:
        """``text`` with the API key masked (error messages may echo request headers)."""
        s = redact.redact(str(text))  # every key params name (core.redact), and this client's own
        if self._api_key and self._api_key != "EMPTY" and len(self._api_key) >= 4:
            s = s.replace(self._api_key, "***")
        return s

    def secret_problem(self, text: object) -> str | None:
        """``holds_secret`` if ``text`` contains the API key or any other secret this process holds (the keys
        params name, :mod:`imitation_gap.core.redact`): such an answer is refused like a malformed one."""
        key = self._api_key if self._api_key != "EMPTY" else None
        return "holds_secret" if redact.holds_secret(text, key) else None

    @property
    def client(self):
        """A synchronous ``openai.OpenAI`` client (for one-off calls such as listing models)."""
        if self._sync_client is None:
            from openai import OpenAI

            self._sync_client = OpenAI(base_url=self.base_url, api_key=self._api_key, timeout=self.timeout,
                                       max_retries=self.policy.max_retries)
        return self._sync_client

    def check_reachable(self, key_hint: str) -> None:
        """Fail at once, with the key to fix, if the endpoint does not answer."""
        import openai

        try:
            self.client.with_options(max_retries=1, timeout=10).models.list()
        except openai.APIConnectionError as e:
            raise EndpointError(f"{key_hint} = {self.redact(self.base_url)!r}: cannot reach the {self.what} "
                                f"endpoint ({self.redact(e)}); start the server or set {key_hint} to a reachable "
                                f"OpenAI-compatible URL (or 'embedded')") from None
        except openai.AuthenticationError:
            raise EndpointError(f"{key_hint} = {self.redact(self.base_url)!r}: the endpoint refused the API key; "
                                f"set the environment variable {self.api_key_env} (named by api_key_env)") from None
        except openai.APIStatusError:
            pass  # some servers have no /models; the calls themselves will tell
        except Exception:  # noqa: BLE001 - a /models answer the SDK cannot parse (an HTML page): the calls will tell
            pass

    def cache_key(self, messages: list[dict], sampling: dict) -> str:
        """sha256 of (endpoint host or ``cache_host``, model, messages, sampling): the response's cache key."""
        blob = json.dumps({"host": self.cache_host, "model": self.model, "messages": messages, "sampling": sampling},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        if self.price is None:
            return 0.0
        return (prompt_tokens * self.price.prompt + completion_tokens * self.price.completion) / 1e6

    def _account(self, results: dict[str, dict], keys: dict[str, str]) -> None:
        """Count the distinct answers of a call, fresh or cached, with their tokens and price (``data_dict``)."""
        for key, r in {keys[rid]: r for rid, r in results.items()}.items():
            self.stats.answers += 1
            self.stats.answer_prompt_tokens += r["prompt_tokens"]
            self.stats.answer_completion_tokens += r["completion_tokens"]
            if self.stats.answer_cost_usd is not None:
                self.stats.answer_cost_usd += self._cost(r["prompt_tokens"], r["completion_tokens"])

    def _charge(self, usage: Any) -> None:
        p = int(getattr(usage, "prompt_tokens", 0) or 0)
        c = int(getattr(usage, "completion_tokens", 0) or 0)
        usd = self._cost(p, c)
        self.stats.prompt_tokens += p
        self.stats.completion_tokens += c
        if self.stats.cost_usd is not None:
            self.stats.cost_usd += usd
        self.budget.charge_tokens(p + c, usd)

    # -- one prompt ---------------------------------------------------------------------
    async def _fetch(self, client: Any, messages: list[dict], sampling: dict, rid: str, stop: dict,
                     validate: Callable[[str], str | None] | None = None) -> tuple[dict | None, str]:
        """One prompt with retries: ``(response, '')`` or ``(None, failure reason)``.

        The SDK retries transport failures inside each ``create`` call; we retry malformed
        answers.  Raises :class:`_Stop` when no further request may start (budget, stop flag)
        and :class:`EndpointError` when the endpoint cannot serve any request.
        """
        import openai

        tries = malformed = 0

        def gate() -> None:  # before every HTTP attempt, the SDK's retries included
            nonlocal tries
            if stop.get("reason"):
                raise _Stop(stop["reason"])
            why = self.budget.exhausted()
            if why:
                raise _Stop(why)
            if call.outcomes:  # the SDK retries after this outcome
                self.stats.retry_reasons[call.outcomes[-1]] += 1
            if tries:
                self.stats.retries += 1
            tries += 1
            self.stats.requests += 1
            self.budget.charge_request()

        from openai.types.chat import ChatCompletion

        send = sampling
        while True:
            call = _Call(gate)
            token = _CALL.set(call)
            try:
                resp = await client.chat.completions.create(model=self.model, messages=messages, **send)
                if not isinstance(resp, ChatCompletion):  # a 200 that is no JSON (an HTML page, plain text)
                    raise _Malformed("not_json")
                if getattr(resp, "usage", None) is not None:
                    self._charge(resp.usage)
                if not isinstance(resp.choices, list) or not resp.choices:
                    raise _Malformed("empty_choices")
                content = getattr(getattr(resp.choices[0], "message", None), "content", None)
                why = text_problem(content) or self.secret_problem(content) or (validate(content) if validate else None)
                if why:
                    raise _Malformed(why)
                usage = getattr(resp, "usage", None)
                return {"content": content, "prompt_tokens": int(getattr(usage, "prompt_tokens", 0) or 0),
                        "completion_tokens": int(getattr(usage, "completion_tokens", 0) or 0)}, ""
            except (_Malformed, ValueError, TypeError, openai.APIResponseValidationError) as e:  # TypeError: junk usage
                reason = str(e) if isinstance(e, _Malformed) else "malformed_json"
                if malformed >= self.policy.malformed_retries:
                    return None, reason
                malformed += 1
                self.stats.retry_reasons[reason] += 1
                send = retry_sampling(sampling, malformed)
            except openai.APITimeoutError:
                return None, "timeout"  # after the SDK's retries
            except openai.APIConnectionError as e:
                raise EndpointError(f"{self.what} endpoint {self.redact(self.base_url)} stopped answering "
                                    f"({self.redact(e)}); what was done is cached, re-run to resume") from None
            except openai.APIStatusError as e:
                code = e.status_code
                if code in FATAL_STATUS:
                    hint = (f"set the environment variable {self.api_key_env}" if code in (401, 403) else
                            f"check the model name {self.model!r}")
                    raise EndpointError(f"{self.what} endpoint {self.redact(self.base_url)} answered {code} "
                                        f"({self.redact(e.message)}); {hint}") from None
                if len(call.outcomes) == 1 and code < 500 and code not in (408, 409, 429):  # not retryable
                    log.warning("%s request %s refused (%s): %s", self.what, rid, code, self.redact(e.message))
                return None, _outcome(code)
            finally:
                _CALL.reset(token)
            await asyncio.sleep(self.policy.delay(malformed - 1, self._rng))

    # -- many prompts -------------------------------------------------------------------
    async def achat_many(self, items: list[tuple[str, list[dict]]], sampling: dict, desc: str = "",
                         *, max_failure_fraction: float | None = None,
                         validate: Callable[[str], str | None] | None = None) -> dict[str, dict]:
        """Async :meth:`chat_many`."""
        from openai import AsyncOpenAI, DefaultAsyncHttpxClient
        from tqdm import tqdm

        frac = self.max_failure_fraction if max_failure_fraction is None else max_failure_fraction
        ids = [rid for rid, _ in items]
        if len(set(ids)) != len(ids):
            dup = next(r for r in ids if ids.count(r) > 1)
            raise ValueError(f"chat_many: prompt id {dup!r} appears more than once")
        t0 = time.time()
        results: dict[str, dict] = {}
        todo: dict[str, tuple[list[dict], list[str]]] = {}  # key -> (messages, ids), one request per key
        corrupt0 = self.cache.corrupt
        keys: dict[str, str] = {}  # id -> cache key
        for rid, msgs in items:
            key = keys[rid] = self.cache_key(msgs, sampling)
            if key in todo:
                todo[key][1].append(rid)
                continue
            hit = self.cache.get(key)
            if hit is not None and (text_problem(hit["content"]) or self.secret_problem(hit["content"]) or
                                    (validate and validate(hit["content"]))):
                # re-validated on every read, as a fresh answer is: junk that older code or a failed stage
                # cached, or an answer holding a secret, is dropped and asked for again
                self.stats.cache_rejected += 1
                self.cache.drop(key)
                hit = None
            if hit is not None:
                results[rid] = hit
                self.stats.cache_hits += 1
            else:
                todo[key] = (msgs, [rid])
        self.stats.cache_corrupt += self.cache.corrupt - corrupt0
        n = len(items)
        allowed_failures = frac * n
        queue = list(todo.items())
        queue.reverse()  # pop() from the end, in the callers' order
        stop: dict[str, Any] = {}
        failed_here: list[str] = []
        bar = tqdm(total=n, initial=len(results), desc=desc or self.what, unit="req", mininterval=1.0,
                   disable=not self.progress)

        hits_here = len(results)  # ids of this call served without a request

        def postfix() -> None:
            bar.set_postfix(hit_rate=f"{hits_here / max(1, bar.n):.0%}", retries=self.stats.retries,
                            failed=len(failed_here), refresh=False)

        postfix()

        async def worker(client: Any) -> None:
            nonlocal hits_here
            while queue and not stop:
                key, (msgs, rids) = queue.pop()
                try:
                    out, reason = await self._fetch(client, msgs, sampling, rids[0], stop, validate)
                except _Stop as e:
                    stop.setdefault("reason", str(e))
                    stop.setdefault("kind", "budget")
                    return
                except EndpointError as e:
                    stop.setdefault("reason", str(e))
                    stop["kind"] = "endpoint"
                    stop["error"] = e
                    return
                if out is not None:
                    out = self.cache.put(key, out, {"endpoint": self.cache_host, "model": self.model})  # at once
                    self.stats.responses += 1
                    for i, rid in enumerate(rids):
                        results[rid] = out
                        if i:
                            self.stats.cache_hits += 1
                            hits_here += 1
                else:
                    for rid in rids:
                        self.stats.failures += 1
                        self.stats.failure_reasons[reason] += 1
                        self.stats.failed_ids.append(rid)
                        failed_here.append(rid)
                    log.warning("%s request %s failed after retries (%s)", self.what, rids[0], reason)
                    if len(failed_here) > allowed_failures:
                        stop.setdefault("reason", "failures")
                        stop.setdefault("kind", "failures")
                bar.update(len(rids))
                postfix()

        try:
            if queue:
                http = DefaultAsyncHttpxClient(transport=_Attempts(httpx2.AsyncHTTPTransport()))
                async with AsyncOpenAI(base_url=self.base_url, api_key=self._api_key, timeout=self.timeout,
                                       max_retries=self.policy.max_retries, http_client=http) as client:
                    await asyncio.gather(*(worker(client) for _ in range(min(self.concurrency, len(queue)))))
        finally:
            bar.close()
            self.stats.seconds += time.time() - t0
            self._account(results, keys)
        kind = stop.get("kind")
        if kind == "endpoint":
            raise stop["error"]
        if kind == "budget":
            raise BudgetExceeded(
                f"{self.what}: {stop['reason']}; stopped cleanly with {len(results)} of {n} responses done "
                f"(all cached: re-running costs nothing for them). Raise teacher.budget_* in params.yaml "
                f"(0 = no cap) and re-run to continue.", results)
        if len(failed_here) > allowed_failures:
            shown = ", ".join(failed_here[:10]) + (" ..." if len(failed_here) > 10 else "")
            reasons = dict(Counter(self.stats.failure_reasons))
            raise TooManyFailures(
                f"{self.what}: {len(failed_here)} of {n} requests failed after retries "
                f"({len(failed_here) / max(1, n):.1%} > teacher.max_failure_fraction = {frac:g}); "
                f"reasons so far: {reasons}; failed ids: {shown}. Good responses are cached; fix the endpoint "
                f"or raise teacher.max_retries / teacher.malformed_retries and re-run.", results)
        return results

    def chat_many(self, items: list[tuple[str, list[dict]]], sampling: dict, desc: str = "",
                  *, max_failure_fraction: float | None = None,
                  validate: Callable[[str], str | None] | None = None) -> dict[str, dict]:
        """Run many chats with bounded concurrency and a progress bar; return ``{id: response}``.

        A response is ``{'content', 'prompt_tokens', 'completion_tokens'}``.  Ids whose
        response stayed bad are left out and listed in ``stats.failed_ids``; if they are
        more than ``max_failure_fraction`` (default: the client's) of ``items``,
        :class:`TooManyFailures` is raised.  A budget cap raises :class:`BudgetExceeded`.
        ``validate(text)`` returns why an answer is unusable (a short reason) or None: an
        answer it rejects is a malformed response (retried, never cached), and a cached one it
        rejects is asked for again.
        """
        return _run_sync(self.achat_many(items, sampling, desc, max_failure_fraction=max_failure_fraction,
                                         validate=validate))

    def chat(self, messages: list[dict], sampling: dict) -> dict | None:
        """One chat completion: ``{'content', 'prompt_tokens', 'completion_tokens'}``, or None if it stayed bad."""
        progress, self.progress = self.progress, False
        try:
            got = self.chat_many([("chat", messages)], sampling, max_failure_fraction=1.0)
        finally:
            self.progress = progress
        return got.get("chat")
