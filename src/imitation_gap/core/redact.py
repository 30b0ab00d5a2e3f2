"""API keys out of every line a stage writes: its logs, its prints, its tracebacks, and what libraries log.

:func:`imitation_gap.core.config.load_params` registers the values of the environment variables that
params name as API keys (``teacher.api_key_env``, ``eval.judge.api_key_env`` and the hub's);
:func:`install` (called by ``run_cli`` before logging is set up) wraps ``sys.stdout`` and
``sys.stderr`` so that each registered value is written as ``***``.  Logging handlers write to those
streams, so lm-eval's warnings (which quote the bodies of failed requests, and an endpoint may echo
the request's headers there), tracebacks and progress bars are covered alike.
"""

from __future__ import annotations

import os
import sys
import threading

MIN_LEN = 8  # shorter values are not treated as secrets (they would mask ordinary words)
_SECRETS: set[str] = set()
_LOCK = threading.Lock()


def register(*values: str | None) -> None:
    """Treat each value (of at least :data:`MIN_LEN` characters) as a secret from now on."""
    with _LOCK:
        _SECRETS.update(v for v in values if v and len(v) >= MIN_LEN)


def register_env(*names: str) -> None:
    """Treat the values of these environment variables as secrets."""
    register(*(os.environ.get(n) for n in names if n))


def holds_secret(text: object, *extra: str | None) -> bool:
    """Whether ``text`` contains a registered secret or one of ``extra`` (values of at least :data:`MIN_LEN`):
    an endpoint's answer that does is refused, never cached, written or logged (an endpoint that echoes the
    request's headers into its answer would otherwise put the API key into the data)."""
    if not isinstance(text, str):
        return False
    return any(s in text for s in (*_SECRETS, *(v for v in extra if v and len(v) >= MIN_LEN)))


def redact(text: str) -> str:
    """``text`` with every registered secret written as ``***``."""
    for s in sorted(_SECRETS, key=len, reverse=True):
        if s in text:
            text = text.replace(s, "***")
    return text


class _Redacting:
    """A text stream that redacts what is written to it; everything else is the wrapped stream's."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text) if _SECRETS and isinstance(text, str) else text)
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def install() -> None:
    """Wrap ``sys.stdout`` and ``sys.stderr`` (once) so that registered secrets are never written."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _Redacting):
            setattr(sys, name, _Redacting(stream))
