"""The three errors a user can fix, each turned by :func:`imitation_gap.core.cli.run_cli` into one line and exit 2."""


class ConfigError(ValueError):
    """A bad value in params.yaml (or a -S override)."""


class DataError(ValueError):
    """A malformed input data file: the message names the file, the line and the fix."""


class EndpointError(ConnectionError):
    """The teacher or judge endpoint cannot be reached or keeps failing."""
