"""The stage process: logging, library telemetry off, and user errors as one line with exit code 2."""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable

from . import redact
from .errors import ConfigError, DataError, DivergedError, EndpointError
from .handoff import handoff

# No usage telemetry from the libraries: the study runs offline and talks only to 127.0.0.1
# (and to the endpoints named in params).
for _var, _value in (("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "true"),
                     ("HF_HUB_DISABLE_TELEMETRY", "1"), ("DVC_NO_ANALYTICS", "1")):
    os.environ.setdefault(_var, _value)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("httpx", "httpx2", "urllib3", "openai", "filelock", "datasets", "alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_cli(main: Callable[[list[str] | None], None]) -> None:
    """Run a stage's ``main``; turn known user errors into one clear line and exit 2.

    First, :func:`~imitation_gap.core.handoff.handoff`: under ``make run`` the command hands itself to
    the runner's warm server and exits with the code of the stage it ran there; with no server it
    returns at once and the stage runs here, the same way."""
    handoff()
    redact.install()  # before logging is set up: its handlers write to the wrapped streams
    setup_logging()
    try:
        main(None)
    except (ConfigError, DataError, DivergedError, EndpointError, FileNotFoundError) as e:
        # a bad param, missing input or unreachable endpoint: say what and how to fix it
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
