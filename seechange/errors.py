"""The one family of "bad input" errors every stage raises.

A :class:`BadInput` says the *message or its product* is wrong (a corrupt or missing file, a row that does
not exist, an impossible value): a service dead-letters it and goes on. Anything else a stage raises is a
bug or an outage, and the run loop treats it so (retry, then stop; never dead-letter).

Each subclass also derives from the built-in error it refines (``ValueError``, ``FileNotFoundError``), so
callers catching those keep working.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "BadInput",
    "BadMessage",
    "CorruptFile",
    "ImpossibleValue",
    "MissingFile",
    "MissingRow",
    "UnusableImage",
    "file_errors_as_bad_input",
    "is_bad_input",
]


class BadInput(Exception):
    """Base of every error caused by the input rather than by the code or its dependencies."""


class BadMessage(BadInput):
    """A message that cannot be handled as given (the general case)."""


class MissingFile(BadInput, FileNotFoundError):
    """A file the message names (or needs) does not exist."""


class CorruptFile(BadInput, ValueError):
    """A file exists but cannot be read as what it should be (not FITS, truncated, no image)."""


class MissingRow(BadInput, ValueError):
    """A message names a database row that does not exist."""


class ImpossibleValue(BadInput, ValueError):
    """A value (header card, record field) that cannot be right."""


class UnusableImage(BadInput, ValueError):
    """An image with nothing to work on: every pixel masked, smaller than its PSF, not two-dimensional."""


def is_bad_input(exc: BaseException) -> bool:
    """True when ``exc`` belongs to the bad-input family (dead-letter it and go on)."""
    return isinstance(exc, BadInput)


@contextmanager
def file_errors_as_bad_input() -> Iterator[None]:
    """At a stage's boundary: turn the built-in errors of reading a missing or corrupt file into the family.

    ``FileNotFoundError`` becomes :class:`MissingFile`; an ``OSError`` without an ``errno`` (what astropy
    raises for a file that is not FITS, or is empty or truncated) becomes :class:`CorruptFile`. An
    ``OSError`` with an ``errno`` (a failing disk, a full file system) and connection errors and time-outs
    are not the input's fault and pass unchanged, as does everything else.
    """
    try:
        yield
    except BadInput:
        raise
    except FileNotFoundError as exc:
        raise MissingFile(_one_line(exc)) from exc
    except (ConnectionError, TimeoutError):
        raise
    except OSError as exc:
        if exc.errno is None:
            raise CorruptFile(_one_line(exc)) from exc
        raise


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
