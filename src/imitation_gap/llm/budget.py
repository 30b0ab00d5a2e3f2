"""What a client spent and may spend: :class:`CallStats` (counts, tokens, dollars) and :class:`Budget` (caps)."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

MAX_FAILED_IDS = 1000  # failed prompt ids kept in the stats


@dataclass
class CallStats:
    """What a client did (no secrets in here).

    Two views: :meth:`as_dict` is everything, for MLflow and the log (requests, retries, cache hits,
    seconds: they differ from run to run with the cache's state, the network and the machine);
    :meth:`data_dict` is the accounting of the answers themselves (how many, their tokens and
    price, the prompts that failed), the same whether an answer came fresh or from the cache, so a
    DVC output that holds it (``data/imitation/manifest.json``) is the same on every run.
    """

    requests: int = 0  # HTTP requests sent, retries included
    responses: int = 0  # good fresh responses (each cached at once)
    cache_hits: int = 0  # prompt ids served without a request (cache, or a duplicate in the batch)
    cache_rejected: int = 0  # cached answers that failed the answer checks (asked for again)
    retries: int = 0  # requests beyond the first for a prompt
    retry_reasons: Counter = field(default_factory=Counter)  # rate_limit, server_error, timeout, ...
    failures: int = 0  # prompt ids with no good response after retries
    failure_reasons: Counter = field(default_factory=Counter)
    failed_ids: list = field(default_factory=list)
    prompt_tokens: int = 0  # tokens paid for in this run (fresh responses, bad ones included)
    completion_tokens: int = 0
    cost_usd: float | None = 0.0  # dollars paid in this run; None when the model has no price
    cache_corrupt: int = 0  # unreadable cache entries met (treated as misses)
    seconds: float = 0.0
    answers: int = 0  # distinct answers obtained, fresh or cached
    answer_prompt_tokens: int = 0  # their tokens, as the endpoint counted them when it served them
    answer_completion_tokens: int = 0
    answer_cost_usd: float | None = 0.0  # their price at the price table (paid once, on the run that fetched them)

    def as_dict(self) -> dict:
        return {"requests": self.requests, "responses": self.responses, "cache_hits": self.cache_hits,
                "cache_rejected": self.cache_rejected,
                "retries": self.retries, "retry_reasons": dict(sorted(self.retry_reasons.items())),
                "failures": self.failures, "failure_reasons": dict(sorted(self.failure_reasons.items())),
                "failed_ids": self.failed_ids[:MAX_FAILED_IDS],
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 6),
                "cache_corrupt": self.cache_corrupt, "seconds": round(self.seconds, 2)}

    def data_dict(self) -> dict:
        return {"answers": self.answers, "prompt_tokens": self.answer_prompt_tokens,
                "completion_tokens": self.answer_completion_tokens,
                "cost_usd": None if self.answer_cost_usd is None else round(self.answer_cost_usd, 6),
                "failures": self.failures, "failed_ids": self.failed_ids[:MAX_FAILED_IDS]}


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
