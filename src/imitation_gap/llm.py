"""Teacher and judge calls through the ``openai`` client: cached, retried, accounted.

* Every response is cached on disk, keyed by a hash of (endpoint host, model, messages,
  sampling params), under ``<repo root>/.cache/llm``; the repo root is shared by
  ``dvc exp run --temp/--queue`` copies (see :func:`common.repo_root`), so an
  interrupted or repeated run never pays twice.  Entries are written atomically.
* Retries with exponential backoff on 429 (honouring ``Retry-After``), 5xx and
  timeouts come from the ``openai`` client (``max_retries``).
* A malformed response (no choices, empty content) is retried, then counted as a
  failure with its prompt id; it never becomes a data row.
* The API key is read from the environment variable named in params; it is never
  written to the cache, the manifest, MLflow or logs.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from .common import log, repo_root
from .config import EndpointError

MALFORMED_RETRIES = 2


@dataclass
class CallStats:
    requests: int = 0
    cache_hits: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    failed_ids: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"requests": self.requests, "cache_hits": self.cache_hits, "failures": self.failures,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "seconds": round(self.seconds, 2), "failed_ids": self.failed_ids[:50]}


class ResponseCache:
    def __init__(self, root: Path):
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        path = self._path(key)
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def put(self, key: str, value: dict) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(value, f)
        os.replace(tmp, path)  # atomic: readers see the old entry or the whole new one


class LLMClient:
    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 30.0,
                 max_retries: int = 5, concurrency: int = 8, cache_dir: Path | None = None, what: str = "teacher"):
        from openai import OpenAI

        self.base_url, self.model, self.what = base_url, model, what
        self.concurrency = concurrency
        key = os.environ.get(api_key_env) or "EMPTY"  # local servers (embedded, vLLM) need none
        self.client = OpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=max_retries)
        self.host = urlparse(base_url).netloc
        self.cache = ResponseCache(cache_dir or repo_root() / ".cache" / "llm")
        self.stats = CallStats()

    def check_reachable(self, key_hint: str) -> None:
        """Fail at once, with the key to fix, if the endpoint does not answer."""
        import openai

        try:
            self.client.with_options(max_retries=1, timeout=10).models.list()
        except openai.APIConnectionError as e:
            raise EndpointError(f"{key_hint} = {self.base_url!r}: cannot reach the {self.what} endpoint ({e}); "
                                f"start the server or set {key_hint} to a reachable OpenAI-compatible URL "
                                f"(or 'embedded')") from None
        except openai.AuthenticationError:
            raise EndpointError(f"{key_hint} = {self.base_url!r}: the endpoint refused the API key; set the "
                                "environment variable named by api_key_env") from None
        except openai.APIStatusError:
            pass  # some servers have no /models; the calls themselves will tell

    def cache_key(self, messages: list[dict], sampling: dict) -> str:
        blob = json.dumps({"host": self.host, "model": self.model, "messages": messages, "sampling": sampling},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def chat(self, messages: list[dict], sampling: dict) -> dict | None:
        """One chat completion: ``{'content', 'prompt_tokens', 'completion_tokens'}`` or None if malformed."""
        key = self.cache_key(messages, sampling)
        hit = self.cache.get(key)
        if hit is not None:
            self.stats.cache_hits += 1
            return hit
        for _ in range(MALFORMED_RETRIES + 1):
            self.stats.requests += 1
            resp = self.client.chat.completions.create(model=self.model, messages=messages, **sampling)
            content = resp.choices[0].message.content if resp.choices else None
            if isinstance(content, str) and content.strip():
                usage = resp.usage
                out = {"content": content, "prompt_tokens": getattr(usage, "prompt_tokens", 0) or 0,
                       "completion_tokens": getattr(usage, "completion_tokens", 0) or 0}
                self.stats.prompt_tokens += out["prompt_tokens"]
                self.stats.completion_tokens += out["completion_tokens"]
                self.cache.put(key, out)
                return out
        return None

    def chat_many(self, items: list[tuple[str, list[dict]]], sampling: dict, desc: str) -> dict[str, dict]:
        """Run many chats with bounded concurrency and a progress bar; return ``{id: response}``.

        Ids whose response stayed malformed are left out and listed in ``stats.failed_ids``.
        """
        import openai
        from tqdm import tqdm

        t0 = time.time()
        results: dict[str, dict] = {}
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool, \
                tqdm(total=len(items), desc=desc, unit="req", mininterval=1.0) as bar:
            futures = {pool.submit(self.chat, msgs, sampling): rid for rid, msgs in items}
            for fut in as_completed(futures):
                rid = futures[fut]
                try:
                    out = fut.result()
                except openai.APIConnectionError as e:
                    raise EndpointError(f"{self.what} endpoint {self.base_url} stopped answering: {e}") from None
                except openai.APIStatusError as e:
                    log.warning("%s request %s failed after retries: %s", self.what, rid, e)
                    out = None
                if out is None:
                    self.stats.failures += 1
                    self.stats.failed_ids.append(rid)
                else:
                    results[rid] = out
                bar.update(1)
                bar.set_postfix(hits=self.stats.cache_hits, failed=self.stats.failures)
        self.stats.seconds += time.time() - t0
        return results
