"""The one exception type for mistakes a user can fix, so entry points print a paragraph instead of a traceback."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Iterable
from functools import wraps
from typing import Any

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A bad argument, file or device choice; the message says what is wrong and how to fix it."""


def closest(name: str, candidates: Iterable[str]) -> str:
    """Return ' Did you mean "x"?' for the nearest candidate, or an empty string."""
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f' Did you mean "{match[0]}"?' if match else ""


def exit_on_user_error(main: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a CLI main so a UserError ends the process with one readable paragraph and exit code 2."""

    @wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"\nerror: {err}\n", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    return wrapper
