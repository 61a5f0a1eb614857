"""Errors that reach the user, each with the process exit code a scheduler can act on.

Exit codes (documented in the README):
  0 success · 1 runtime failure · 2 command-line usage (click) · 3 bad input data ·
  4 bad configuration · 5 run directory locked by another run.
"""

EXIT_RUNTIME = 1
EXIT_BAD_INPUT = 3
EXIT_BAD_CONFIG = 4
EXIT_LOCKED = 5


class LancetError(Exception):
    """An error whose message tells the user what failed, where, and what to do."""

    exit_code = EXIT_RUNTIME


class BadInputError(LancetError):
    """The training corpus or the queries cannot be read as asked."""

    exit_code = EXIT_BAD_INPUT


class BadRecordError(BadInputError):
    """A record failed validation under the fail-fast bad-record policy."""


class ConfigError(LancetError):
    """A model directory, DeepSpeed config or option is unusable."""

    exit_code = EXIT_BAD_CONFIG


class RecordProblem(Exception):
    """Raised by schema adapters and the encoder for one record; the bad-record policy decides."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class LockedError(LancetError):
    """Another run holds the run directory's lock."""

    exit_code = EXIT_LOCKED
