"""Make a failure inside the data loader end the run at once instead of stalling it.

Paddle's DataLoader (2.x-3.x) runs the dataset and the collator in a reader thread (`num_workers` 0) or in worker
processes. An exception in that thread ends the thread without waking the training loop, which then waits forever
on an empty queue: the run hangs with no output. Per-record problems are skips and never get here; what does is a
failure of the loader itself (no usable sample left, a spent skip budget, a bug). Inside a loader thread or worker
such a failure is printed as one paragraph and the process exits with code 2; a worker's exit makes paddle raise a
`SystemError` in the trainer within seconds, which `worker_failure` turns into a UserError (exit code 2). In the main thread
(preflight, check_data, tests) exceptions propagate as usual.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from paddlemix.utils.errors import EXIT_USER_ERROR, UserError

logger = logging.getLogger(__name__)


def in_loader() -> bool:
    """True inside a data-loader worker process or any thread other than the main one."""
    from paddle.io import get_worker_info

    return get_worker_info() is not None or threading.current_thread() is not threading.main_thread()


def stop_run(message: str) -> NoReturn:
    """Print `message` as the run's error and end this process with exit code 2, without unwinding (an
    exception would only end the loader thread)."""
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    sys.stdout.flush()
    sys.stderr.write(f"\nerror: {message}\n")
    sys.stderr.flush()
    os._exit(EXIT_USER_ERROR)


def loader_failure_message(err: BaseException) -> str:
    if isinstance(err, UserError):
        return str(err)
    where = "".join(traceback.format_exception(type(err), err, err.__traceback__)[-3:]).strip()
    return f"the data loader failed ({type(err).__name__}: {err}); the run stops instead of hanging.\n{where}"


@contextlib.contextmanager
def stop_run_on_failure() -> Iterator[None]:
    """Around loader code: in a loader thread or worker, any exception ends the process (see module docstring)."""
    try:
        yield
    except Exception as err:
        if not in_loader():
            raise
        stop_run(loader_failure_message(err))


class GuardedCollator:
    """A collator whose failures stop the run instead of stalling it (it runs in the loader thread or worker)."""

    def __init__(self, collate: Callable[[Any], Any]):
        self.collate = collate

    def __call__(self, features: Any) -> Any:
        with stop_run_on_failure():
            return self.collate(features)


def worker_failure(err: BaseException) -> UserError | None:
    """The UserError for a trainer exception caused by a data-loader worker that stopped the run (its own message
    was printed by the worker), else None."""
    text = str(err)
    # paddle's two reports of a worker that exited: the SIGCHLD check, or the reader thread's killed queue.
    if isinstance(err, SystemError) and ("Blocking queue is killed" in text or "exited unexpectedly" in text):
        return UserError(
            "a data-loader worker stopped the run; its error is printed above. "
            f"(paddle reported: {text.splitlines()[0][:200]})"
        )
    return None
