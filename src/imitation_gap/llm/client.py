"""Teacher and judge calls through the ``openai`` client: cached, retried, budgeted, accounted.

* **Cache.**  Every good response is cached on disk, keyed by a hash of (endpoint host,
  model, messages, sampling params), under ``<repo root>/.cache/llm``; the repo root is
  shared by ``dvc exp run --temp/--queue`` copies (see :func:`common.repo_root`), so an
  interrupted or repeated run never pays twice.  An entry is written to a temporary
  file, fsynced, then published atomically (first writer wins), so concurrent writers
  and a ``kill -9`` never leave a half-written entry; an entry that does not parse or
  fails its checksum is a miss, never data.
* **Resume.**  Each response is cached the moment it arrives, and at most
  ``concurrency`` prompts are in flight, so after ``kill -9`` a re-run re-sends at most
  ``concurrency`` requests.
* **Calls.**  ``asyncio`` + ``AsyncOpenAI`` with ``concurrency`` workers.  429 (honouring
  ``Retry-After``), 408/409, 5xx, timeouts and dropped connections are retried up to
  ``max_retries`` times with exponential backoff and jitter; every retry is counted.
* **Bad responses.**  Truncated JSON, no ``choices`` or empty text is retried
  ``malformed_retries`` times, then counted as a failure with its prompt id; it is never
  returned as data.  More than ``max_failure_fraction`` failures raise
  :class:`TooManyFailures`.
* **Budget.**  Caps on requests, tokens and dollars (from a price table); on reaching
  one, no new request starts, the ones in flight finish and are cached, and
  :class:`BudgetExceeded` says what to change.  Both errors are
  :class:`~imitation_gap.config.EndpointError`, which ``common.run_cli`` turns into a
  one-line message and exit code 2.
* **Secrets.**  The API key is read from the environment variable named in params; it
  is never written to the cache, the stats, the manifest or logs (error texts are
  redacted).
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import os
import random
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, TypeVar
from urllib.parse import urlparse

from .common import log, repo_root
from .config import ConfigError, EndpointError, Price

if TYPE_CHECKING:
    from .config import Teacher

T = TypeVar("T")

MALFORMED_RETRIES = 2  # default extra tries for a malformed answer
RETRY_AFTER_MAX = 600.0  # never sleep longer than this on a server's Retry-After (seconds)
RETRYABLE_STATUS = (408, 409, 429)  # and every 5xx
FATAL_STATUS = (401, 403, 404)  # a wrong key, permission or model name: no request can succeed
MAX_FAILED_IDS = 1000  # failed prompt ids kept in the stats


class BudgetExceeded(EndpointError):
    """A budget cap (requests, tokens or dollars) was reached; what was done is cached.

    ``results`` holds the responses obtained in the interrupted call.
    """

    def __init__(self, message: str, results: dict[str, dict] | None = None):
        super().__init__(message)
        self.results = results or {}


class TooManyFailures(EndpointError):
    """More requests failed after retries than ``max_failure_fraction`` allows."""

    def __init__(self, message: str, results: dict[str, dict] | None = None):
        super().__init__(message)
        self.results = results or {}


# ---------------------------------------------------------------------------------------
@dataclass
class CallStats:
    """What a client did; :meth:`as_dict` goes to the manifest and MLflow (no secrets in here)."""

    requests: int = 0  # HTTP requests sent, retries included
    responses: int = 0  # good fresh responses (each cached at once)
    cache_hits: int = 0  # prompt ids served without a request (cache, or a duplicate in the batch)
    retries: int = 0  # requests beyond the first for a prompt
    retry_reasons: Counter = field(default_factory=Counter)  # rate_limit, server_error, timeout, ...
    failures: int = 0  # prompt ids with no good response after retries
    failure_reasons: Counter = field(default_factory=Counter)
    failed_ids: list = field(default_factory=list)
    prompt_tokens: int = 0  # tokens paid for (fresh responses, bad ones included)
    completion_tokens: int = 0
    cost_usd: float | None = 0.0  # None when the model has no price
    cache_corrupt: int = 0  # unreadable cache entries met (treated as misses)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"requests": self.requests, "responses": self.responses, "cache_hits": self.cache_hits,
                "retries": self.retries, "retry_reasons": dict(sorted(self.retry_reasons.items())),
                "failures": self.failures, "failure_reasons": dict(sorted(self.failure_reasons.items())),
                "failed_ids": self.failed_ids[:MAX_FAILED_IDS],
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 6),
                "cache_corrupt": self.cache_corrupt, "seconds": round(self.seconds, 2)}


@dataclass
class Budget:
    """Spending caps (0 = no cap) and what was spent; share one between clients to cap a stage.

    ``max_requests`` is exact (checked before each request).  Tokens and dollars are
    known only when a response arrives, so they can overshoot by the requests already in
    flight when the cap is reached (at most ``concurrency``).
    """

    max_requests: int = 0
    max_tokens: int = 0
    max_usd: float = 0.0
    requests: int = 0
    tokens: int = 0
    usd: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def exhausted(self) -> str | None:
        """Why no further request may start, or None."""
        with self._lock:
            if self.max_requests and self.requests >= self.max_requests:
                return f"budget_requests = {self.max_requests} reached ({self.requests} requests sent)"
            if self.max_tokens and self.tokens >= self.max_tokens:
                return f"budget_tokens = {self.max_tokens} reached ({self.tokens} tokens paid)"
            if self.max_usd and self.usd >= self.max_usd:
                return f"budget_usd = {self.max_usd:g} reached (${self.usd:.4f} spent)"
        return None

    def charge_request(self) -> None:
        with self._lock:
            self.requests += 1

    def charge_tokens(self, tokens: int, usd: float) -> None:
        with self._lock:
            self.tokens += tokens
            self.usd += usd


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry: ``base * 2**n`` seconds (n = retries so far), capped, jittered."""

    max_retries: int = 5
    malformed_retries: int = MALFORMED_RETRIES
    backoff_base: float = 0.5
    backoff_max: float = 30.0

    def delay(self, retry: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (0-based): jittered backoff, or Retry-After if longer."""
        rng = rng or random
        cap = min(self.backoff_max, self.backoff_base * 2 ** min(retry, 30))
        wait = cap * (0.5 + 0.5 * rng.random())  # "equal jitter": spread the herd, never retry at once
        if retry_after is not None:
            wait = max(wait, min(retry_after, RETRY_AFTER_MAX))
        return wait


def parse_retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date); None if absent."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())


# ---------------------------------------------------------------------------------------
class ResponseCache:
    """One JSON file per key under ``root/<key[:2]>/<key>.json``.

    Writes go to a temporary file in the same directory, are fsynced, then published
    with a hard link (first writer wins; a later writer returns the stored entry, so
    every process sees one answer per key even at temperature > 0) or, where links are
    not supported or the stored entry is corrupt, ``os.replace``.  Readers therefore
    see no entry or a whole one.  An entry that does not parse, or whose key or checksum
    does not match, is a miss.
    """

    def __init__(self, root: Path, fsync: bool = True):
        self.root = Path(root)
        self.fsync = fsync
        self.corrupt = 0  # corrupt entries met by get()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    @staticmethod
    def _valid(key: str, entry: Any) -> dict | None:
        if not isinstance(entry, dict):
            return None
        content = entry.get("content")
        if not isinstance(content, str) or not content.strip():
            return None
        if not all(isinstance(entry.get(k), int) for k in ("prompt_tokens", "completion_tokens")):
            return None
        if "key" in entry and entry["key"] != key:
            return None
        if "sha256" in entry and entry["sha256"] != hashlib.sha256(content.encode()).hexdigest():
            return None
        return {"content": content, "prompt_tokens": entry["prompt_tokens"],
                "completion_tokens": entry["completion_tokens"]}

    def get(self, key: str) -> dict | None:
        """The cached response ``{'content', 'prompt_tokens', 'completion_tokens'}``, or None."""
        path = self._path(key)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            entry = self._valid(key, json.loads(raw))
        except (ValueError, UnicodeDecodeError):
            entry = None
        if entry is None:
            self.corrupt += 1
            log.warning("response cache: ignoring the unreadable entry %s (it will be fetched again)", path.name)
        return entry

    def put(self, key: str, value: dict) -> dict:
        """Store ``value`` under ``key`` unless a valid entry is there; return the stored response."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"key": key, "content": value["content"], "prompt_tokens": int(value["prompt_tokens"]),
                 "completion_tokens": int(value["completion_tokens"]),
                 "sha256": hashlib.sha256(value["content"].encode()).hexdigest()}
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(entry, f)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            try:
                os.link(tmp, path)  # atomic create-if-absent
                return self._valid(key, entry)  # type: ignore[return-value]
            except FileExistsError:
                stored = self.get(key)
                if stored is not None:
                    return stored  # first writer wins
                os.replace(tmp, path)  # the stored entry is corrupt: overwrite it atomically
            except OSError:
                os.replace(tmp, path)  # no hard links on this file system
            return self._valid(key, entry)  # type: ignore[return-value]
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


# ---------------------------------------------------------------------------------------
class _Malformed(Exception):
    """A 200 answer that is not a usable chat completion."""


class _Stop(Exception):
    """Stop starting requests (budget reached, too many failures, endpoint down)."""


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
        self.stats = CallStats(cost_usd=0.0 if price is not None else None)
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
            raise ConfigError(f"params.yaml: teacher.budget_usd = {t.budget_usd:g} needs a price for model "
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
        s = str(text)
        if self._api_key and self._api_key != "EMPTY" and len(self._api_key) >= 4:
            s = s.replace(self._api_key, "***")
        return s

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

    def cache_key(self, messages: list[dict], sampling: dict) -> str:
        """sha256 of (endpoint host or ``cache_host``, model, messages, sampling): the response's cache key."""
        blob = json.dumps({"host": self.cache_host, "model": self.model, "messages": messages, "sampling": sampling},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        if self.price is None:
            return 0.0
        return (prompt_tokens * self.price.prompt + completion_tokens * self.price.completion) / 1e6

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
    async def _fetch(self, client: Any, messages: list[dict], sampling: dict, rid: str,
                     stop: dict) -> tuple[dict | None, str]:
        """One prompt with retries: ``(response, '')`` or ``(None, failure reason)``.

        Raises :class:`_Stop` when no further request may start (budget, stop flag) and
        :class:`EndpointError` when the endpoint cannot serve any request.
        """
        import openai

        transport = malformed = 0
        while True:
            if stop.get("reason"):
                raise _Stop(stop["reason"])
            why = self.budget.exhausted()
            if why:
                raise _Stop(why)
            if transport + malformed:
                self.stats.retries += 1
            self.stats.requests += 1
            self.budget.charge_request()
            retry_after = None
            try:
                resp = await client.chat.completions.create(model=self.model, messages=messages, **sampling)
                if getattr(resp, "usage", None) is not None:
                    self._charge(resp.usage)
                if not resp.choices:
                    raise _Malformed("empty_choices")
                content = resp.choices[0].message.content
                if not isinstance(content, str) or not content.strip():
                    raise _Malformed("empty_content")
                return {"content": content, "prompt_tokens": int(getattr(resp.usage, "prompt_tokens", 0) or 0),
                        "completion_tokens": int(getattr(resp.usage, "completion_tokens", 0) or 0)}, ""
            except (_Malformed, ValueError, openai.APIResponseValidationError) as e:
                reason = str(e) if isinstance(e, _Malformed) else "malformed_json"
                if malformed >= self.policy.malformed_retries:
                    return None, reason
                malformed += 1
                self.stats.retry_reasons[reason] += 1
                wait = self.policy.delay(malformed - 1, None, self._rng)
            except openai.APITimeoutError:
                reason = "timeout"
                if transport >= self.policy.max_retries:
                    return None, reason
                transport += 1
                self.stats.retry_reasons[reason] += 1
                wait = self.policy.delay(transport - 1, None, self._rng)
            except openai.APIConnectionError as e:
                if transport >= self.policy.max_retries:
                    raise EndpointError(f"{self.what} endpoint {self.redact(self.base_url)} stopped answering "
                                        f"({self.redact(e)}); what was done is cached, re-run to resume") from None
                transport += 1
                self.stats.retry_reasons["connection"] += 1
                wait = self.policy.delay(transport - 1, None, self._rng)
            except openai.APIStatusError as e:
                code = e.status_code
                if code in FATAL_STATUS:
                    hint = (f"set the environment variable {self.api_key_env}" if code in (401, 403) else
                            f"check the model name {self.model!r}")
                    raise EndpointError(f"{self.what} endpoint {self.redact(self.base_url)} answered {code} "
                                        f"({self.redact(e.message)}); {hint}") from None
                if code not in RETRYABLE_STATUS and code < 500:
                    log.warning("%s request %s refused (%s): %s", self.what, rid, code, self.redact(e.message))
                    return None, f"http_{code}"
                reason = "rate_limit" if code == 429 else "server_error" if code >= 500 else f"http_{code}"
                if transport >= self.policy.max_retries:
                    return None, reason
                transport += 1
                self.stats.retry_reasons[reason] += 1
                retry_after = parse_retry_after(getattr(e.response, "headers", None))
                wait = self.policy.delay(transport - 1, retry_after, self._rng)
            await asyncio.sleep(wait)

    # -- many prompts -------------------------------------------------------------------
    async def achat_many(self, items: list[tuple[str, list[dict]]], sampling: dict, desc: str = "",
                         *, max_failure_fraction: float | None = None) -> dict[str, dict]:
        """Async :meth:`chat_many`."""
        from openai import AsyncOpenAI
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
        for rid, msgs in items:
            key = self.cache_key(msgs, sampling)
            if key in todo:
                todo[key][1].append(rid)
                continue
            hit = self.cache.get(key)
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
                    out, reason = await self._fetch(client, msgs, sampling, rids[0], stop)
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
                    out = self.cache.put(key, out)  # at once: a kill -9 loses only what is in flight
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
                async with AsyncOpenAI(base_url=self.base_url, api_key=self._api_key, timeout=self.timeout,
                                       max_retries=0) as client:
                    await asyncio.gather(*(worker(client) for _ in range(min(self.concurrency, len(queue)))))
        finally:
            bar.close()
            self.stats.seconds += time.time() - t0
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
                  *, max_failure_fraction: float | None = None) -> dict[str, dict]:
        """Run many chats with bounded concurrency and a progress bar; return ``{id: response}``.

        A response is ``{'content', 'prompt_tokens', 'completion_tokens'}``.  Ids whose
        response stayed bad are left out and listed in ``stats.failed_ids``; if they are
        more than ``max_failure_fraction`` (default: the client's) of ``items``,
        :class:`TooManyFailures` is raised.  A budget cap raises :class:`BudgetExceeded`.
        """
        return _run_sync(self.achat_many(items, sampling, desc, max_failure_fraction=max_failure_fraction))

    def chat(self, messages: list[dict], sampling: dict) -> dict | None:
        """One chat completion: ``{'content', 'prompt_tokens', 'completion_tokens'}``, or None if it stayed bad."""
        progress, self.progress = self.progress, False
        try:
            got = self.chat_many([("chat", messages)], sampling, max_failure_fraction=1.0)
        finally:
            self.progress = progress
        return got.get("chat")
