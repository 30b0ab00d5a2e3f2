"""The errors a user can fix, each turned by :func:`imitation_gap.core.cli.run_cli` into one line and exit 2."""


class ConfigError(ValueError):
    """A bad value in params.yaml (or a -S override)."""


class DataError(ValueError):
    """A malformed input data file: the message names the file, the line and the fix."""


class EndpointError(ConnectionError):
    """The teacher or judge endpoint cannot be reached or keeps failing."""


class TooManyFailures(EndpointError):
    """More teacher or judge requests failed after retries than ``teacher.max_failure_fraction`` allows;
    ``results`` holds the good responses of the interrupted call (they are cached)."""

    def __init__(self, message: str, results: dict | None = None):
        super().__init__(message)
        self.results = results or {}


class DivergedError(ValueError):
    """Training produced a non-finite loss or weights (the message names the run and the likely cause)."""
