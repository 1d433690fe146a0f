"""Run `paddlemix/tools/serve.py` in a child process on a free loopback port, for tests and benchmarks; it is
always stopped on exit of the `running_server` block."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

SERVE = Path(__file__).resolve().parents[1] / "tools" / "serve.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health(base_url: str) -> dict:
    with urllib.request.urlopen(f"{base_url}/health", timeout=5) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def running_server(*args: str, startup_timeout: float = 300.0, log: Path | None = None) -> Iterator[str]:
    """Start serve.py with `args` (plus --host 127.0.0.1 --port FREE) and yield its base URL once /health answers;
    raises RuntimeError with the server's output when it exits or does not come up in `startup_timeout` s."""
    port = free_port()
    out = open(log, "w+") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, str(SERVE), *args, "--host", "127.0.0.1", "--port", str(port)],
                            stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"serve.py exited {proc.returncode}: {log.read_text()[-4000:] if log else ''}")
            try:
                health(base_url)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("serve.py did not answer /health in time") from None
                time.sleep(0.2)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            out.close()
