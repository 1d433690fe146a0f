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


# How alike a key and a suggestion must be (difflib's ratio: 2 x matched characters / total characters). 0.8 keeps
# typos (lora_rnak -> lora_rank 0.89, learning_rat -> learning_rate 0.96) and drops keys that merely share a word
# (max_samples -> max_steps 0.70, mm_projector_lr -> freeze_projector 0.65), which would point the wrong way.
SIMILARITY = 0.8


def closest(name: str, candidates: Iterable[str]) -> str:
    """Return ' Did you mean "x"?' for the candidate most like `name` (case and -/_ ignored) if it is at least
    SIMILARITY alike, else an empty string."""
    by_norm = {c.lower().replace("-", "_"): c for c in candidates}
    match = difflib.get_close_matches(name.lower().replace("-", "_"), list(by_norm), n=1, cutoff=SIMILARITY)
    return f' Did you mean "{by_norm[match[0]]}"?' if match else ""


class Problems:
    """Every mistake found in one argument file, reported together in one UserError (`raise_if_any`).

    Each problem names where it comes from: the file, or "command line" for a `--key value` override.
    """

    def __init__(self, file: str, cli_keys: set[str] | None = None):
        self.file = file
        self.cli_keys = cli_keys or set()
        self.items: list[str] = []
        self.keys: set[str] = set()  # keys with a problem already, so consequences are not reported twice

    def origin(self, key: str) -> str:
        """Where `key` was given: "command line" for overrides, else the file."""
        return "command line" if key.split(".")[0] in self.cli_keys else self.file

    def add(self, message: str, key: str = "") -> None:
        self.items.append(f"{self.origin(key)}: {message}")
        self.keys.add(key)

    def error(self, err: UserError) -> None:
        """Record a UserError raised by a helper (its message already names its origin)."""
        self.items.append(str(err))

    def raise_if_any(self) -> None:
        if len(self.items) == 1:
            raise UserError(self.items[0])
        if self.items:
            own = f"{self.file}: "
            listed = "\n".join(f"  {i}. {item.removeprefix(own)}" for i, item in enumerate(self.items, 1))
            raise UserError(f"{self.file}: {len(self.items)} problems, all listed here:\n{listed}")


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
