"""A failure inside paddle's data loader ends the process with exit code 2 and its message, in the loader thread
(`num_workers` 0) and in worker processes; unguarded, the same failure in the thread stalls the loop forever."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from paddlemix.datasets.loader_guard import stop_run_on_failure, worker_failure
from paddlemix.utils.errors import UserError

SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, paddle
    from paddlemix.datasets.loader_guard import stop_run_on_failure, worker_failure
    from paddlemix.utils.errors import UserError, exit_on_user_error

    class Data(paddle.io.Dataset):
        def __len__(self):
            return 64
        def __getitem__(self, i):
            with stop_run_on_failure():
                if i == 37:
                    raise UserError("planted failure at item 37")
                return np.array([i], dtype="int64")

    @exit_on_user_error
    def main():
        try:
            for _ in paddle.io.DataLoader(Data(), batch_size=4, num_workers=int(sys.argv[1])):
                pass
        except SystemError as err:
            raise worker_failure(err) or err from None
        print("finished without noticing")

    main()
    """
)


@pytest.mark.parametrize("workers", [0, 2], ids=["thread", "workers"])
def test_loader_failure_exits_2_with_its_message(workers: int) -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(workers)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "planted failure at item 37" in proc.stderr
    assert "finished without noticing" not in proc.stdout


def test_main_thread_failures_raise_as_usual() -> None:
    with pytest.raises(UserError, match="plain"), stop_run_on_failure():
        raise UserError("plain")


def test_worker_failure_is_recognised_only_for_loader_errors() -> None:
    killed = SystemError("(Fatal) Blocking queue is killed because the data reader raises an exception.")
    assert isinstance(worker_failure(killed), UserError)
    assert worker_failure(SystemError("something else")) is None
    assert worker_failure(ValueError("Blocking queue is killed")) is None
