"""User-facing errors.

Anything the user can fix (a path, a flag, a file format) raises `UserError`. The CLI
prints it as one line and exits with status 2, without a traceback unless `--debug`.
Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class UserError(Exception):
    """A problem with the user's input, with a message that says what to do."""

    exit_code = 2


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest valid name, or '' when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown(kind: str, name: str, choices: Iterable[str]) -> UserError:
    """The standard error for a name that is not in a fixed set."""
    choices = sorted(choices)
    return UserError(
        f"unknown {kind} {name!r}{did_you_mean(name, choices)}; valid: {', '.join(choices)}"
    )
