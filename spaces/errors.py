"""The signmix exception family.

Three outcomes of a proposal are kept apart everywhere (code, Ray results, MLflow):
*filtered* by the sign-conflict pre-filter, *stopped early* by the scheduler, and
*failed*. Only the last is an error; the first two are ordinary results.

Errors a user can fix (a bad config, a missing file, an impossible mixture) derive from
:class:`UsageError`: the CLI prints their message without a traceback and exits with 2.
Other :class:`SignmixError` s are runtime failures (exit 1).
"""

from __future__ import annotations


class SignmixError(Exception):
    """Base class of every error signmix raises on purpose."""

    exit_code = 1


class UsageError(SignmixError):
    """The user asked for something invalid; the message says what and how to fix it."""

    exit_code = 2


class SpecError(UsageError, ValueError):
    """A mixture specification is invalid (unknown member, bad ratio, missing target...)."""


class ConfigError(UsageError):
    """A configuration file is invalid. ``problems`` lists every problem found, one per line."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source} is not a valid signmix config ({len(self.problems)} problem(s)):\n{lines}")


class DataError(UsageError):
    """A domain's data cannot be used (missing split, missing column, bad labels...)."""


class StoreError(UsageError):
    """The adapter store is missing adapters, or holds adapters that cannot be mixed."""


class TrackingError(SignmixError):
    """The MLflow tracking store cannot be used, or holds no run of the kind asked for."""
