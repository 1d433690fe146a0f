"""Run the fine-tuning tool on several processes, devices or nodes through `python -m paddle.distributed.launch`
with the console of the single-process tool.

Before anything is launched the argument file goes through the same `arguments.load` the tool runs (with the world
size the launch will have, so parallel degrees are checked against it), and the launch settings are checked; every
mistake is one paragraph and exit code 2, as with `paddlemix-sft`. Paddle's launcher then runs with its own output
in `LOG_DIR/launcher.log`; the console follows rank 0's log (`LOG_DIR/workerlog.0`) as it is written, carriage
returns kept so the progress bar updates in place, without the lines the single-process tool never prints (Paddle's
C++ log lines and distributed start-up notices, see `logging.LAUNCH_NOISE`); when a process fails, its rank, exit
code, last lines and log path are shown.

Usage: sh paddlemix/tools/train.sh ARGS.json [--key value ...]

Environment (all optional):
  GPUS=0,1,2,3     devices of this node (default: every visible GPU, or every NPU with DEVICE=npu)
  NPROC=2          processes on a machine without GPU/NPU (CPU data parallel over gloo; default 1)
  DEVICE=npu       use Ascend NPUs (paddle-custom-npu); exports PaddleMIX's NPU flags unless already set
  DEVICE=cpu       CPU processes (NPROC of them) even where GPUs are visible
  NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 MASTER_PORT=8090   several nodes (the same command on each)
  PYTHON=python3   the interpreter (default: python, the active environment's)
  LOG_DIR=DIR      where the launcher and every process log (default: OUTPUT_DIR/launch_logs)
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from paddlemix.utils.errors import UserError
from paddlemix.utils.logging import GLOG_LINE, LAUNCH_NOISE, quiet_console

TOOL = Path(__file__).resolve().parents[1] / "tools" / "supervised_finetune.py"
LAUNCHER_LOG = "launcher.log"
NOISE = re.compile(b"|".join(LAUNCH_NOISE))
GLOG = re.compile(GLOG_LINE)
FOLLOWED_LOG = "workerlog.0"
TAIL_LINES = 20
POLL_SECONDS = 0.2
# Paddle's launcher names the failed process in its log as
# "Container rank R status failed cmd [...] code C log LOG_DIR/workerlog.N" (paddle/distributed/launch/job/container.py).
FAILED_CONTAINER = re.compile(r"Container rank (\d+) status \w+ cmd .* code (-?\d+) log (\S+)")


@dataclass(frozen=True)
class LaunchPlan:
    """What one node launches: `nproc` processes (on `devices` when given) of `nnodes` nodes, logging to `log_dir`."""

    python: str
    args_file: str
    overrides: list[str]
    log_dir: Path
    nproc: int
    devices: str | None = None
    nnodes: int = 1
    node_rank: int = 0
    master: str = "127.0.0.1:8090"
    env: dict[str, str] = field(default_factory=dict)  # set for the processes, each written to launcher.log

    def command(self) -> list[str]:
        """`python -m paddle.distributed.launch ...` with the options in the order train.sh always echoed."""
        where = ["--devices", self.devices] if self.devices else ["--nproc_per_node", str(self.nproc)]
        nodes = ["--nnodes", str(self.nnodes), "--rank", str(self.node_rank), "--master", self.master]
        return [self.python, "-m", "paddle.distributed.launch", *where, *(nodes if self.nnodes > 1 else []),
                "--log_dir", str(self.log_dir), str(TOOL), self.args_file, *self.overrides]  # fmt: skip


def _int_env(environ: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = environ.get(name, "").strip() or str(default)
    if not raw.isdigit() or int(raw) < minimum:
        raise UserError(f"environment: {name}={raw!r} must be a whole number >= {minimum}; unset it or fix it.")
    return int(raw)


def require_paddle() -> None:
    """A Python without Paddle (another environment, or none activated) is one paragraph, not an ImportError."""
    if importlib.util.find_spec("paddle") is None:
        raise UserError(
            f"Paddle is not installed in {sys.executable}, the interpreter train.sh runs (PYTHON, default "
            '"python"). Activate the environment the package was installed into (. .venv/bin/activate), or set '
            'PYTHON=/path/to/that/env/bin/python, or install Paddle there (pip install "paddlepaddle==3.3.*").'
        )


def device_count(device: str | None) -> int:
    """GPUs (or NPUs with DEVICE=npu) visible to this process; 0 means CPU processes."""
    import paddle

    if device == "npu":
        return paddle.device.get_device_count("npu") if "npu" in paddle.device.get_all_custom_device_type() else 0
    return paddle.device.cuda.device_count() if paddle.device.is_compiled_with_cuda() else 0


def _devices(environ: Mapping[str, str], count: int) -> str:
    """The devices of GPUS (checked against the `count` visible ones), or all of them."""
    raw = environ.get("GPUS", "").strip()
    if not raw:
        return ",".join(str(i) for i in range(count))
    ids = [part.strip() for part in raw.split(",")]
    bad = [i for i in ids if not i.isdigit() or int(i) >= count]
    if bad or len(set(ids)) != len(ids):
        raise UserError(
            f"environment: GPUS={raw!r} must list distinct device ids from 0 to {count - 1} (this machine shows "
            f"{count}), separated by commas, e.g. GPUS=0,1."
        )
    return ",".join(ids)


def plan_launch(argv: list[str], environ: Mapping[str, str]) -> LaunchPlan:
    """Check the launch settings and the argument file (with the world size of the launch) and return the plan;
    raises UserError before anything starts."""
    if not argv or argv[0] in ("-h", "--help"):
        raise UserError("usage: sh paddlemix/tools/train.sh ARGS.json [--key value ...]; see --help.")
    require_paddle()
    from paddlemix.utils.io import read_json

    if not Path(argv[0]).is_file():  # the tool's own first checks, before Paddle is imported to count devices
        raise UserError(f"argument file {argv[0]} does not exist.")
    read_json(argv[0])
    device = environ.get("DEVICE", "").strip() or None
    if device not in (None, "gpu", "npu", "cpu"):
        raise UserError(f"environment: DEVICE={device!r}: use gpu (default when GPUs are visible), npu or cpu.")
    nnodes = _int_env(environ, "NNODES", 1, 1)
    node_rank = _int_env(environ, "NODE_RANK", 0, 0)
    if node_rank >= nnodes:
        raise UserError(f"environment: NODE_RANK={node_rank} must be below NNODES={nnodes} (nodes count from 0).")
    port = _int_env(environ, "MASTER_PORT", 8090, 1)
    count = 0 if device == "cpu" else device_count(device)
    devices = _devices(environ, count) if count else None
    if count and environ.get("NPROC"):
        raise UserError(
            f"environment: NPROC={environ['NPROC']} is for machines without GPU/NPU; this one shows {count}: "
            "choose devices with GPUS=0,1,... instead (one process each)."
        )
    nproc = len(devices.split(",")) if devices else _int_env(environ, "NPROC", 1, 1)
    args = validate_run(argv[0], argv[1:], nproc * nnodes)
    log_dir = Path(environ.get("LOG_DIR") or Path(args.training.output_dir) / "launch_logs")
    env = {"PYTHONUNBUFFERED": "1"}  # rank 0's console reaches its log, and so this console, as it is printed
    if device == "npu":
        from paddlemix.utils.device import NPU_ENV

        env.update({k: v for k, v in NPU_ENV.items() if k not in environ})
    master = f"{environ.get('MASTER_ADDR', '').strip() or '127.0.0.1'}:{port}"
    python = environ.get("PYTHON") or sys.executable
    return LaunchPlan(python, argv[0], list(argv[1:]), log_dir, nproc, devices, nnodes, node_rank, master, env)


def validate_run(args_file: str, overrides: list[str], world_size: int):  # noqa: ANN201 (RunArgs, imported late)
    """The tool's own checks (`arguments.load`), with parallel degrees checked against the launch's `world_size`."""
    from paddlemix import arguments

    return arguments.load(args_file, overrides, world_size=world_size)


class LogFollower:
    """Copy what a growing log file gains to `out`: whole lines, except those of LAUNCH_NOISE and Paddle's C++
    (glog) lines, and a line still being written when it holds a carriage return (a progress bar redrawn in
    place), so the bar moves on the console as it does in a terminal."""

    def __init__(self, path: Path, out: BinaryIO):
        self.path, self.out = path, out
        # Paddle's launcher appends to the logs of earlier launches into the same folder: follow what this one adds.
        self.start = path.stat().st_size if path.is_file() else 0
        self.file: BinaryIO | None = None
        self.pending = b""
        self.emitted = 0  # bytes of `pending` already written (a partly drawn progress bar)

    def poll(self) -> None:
        if self.file is None:
            if not self.path.is_file():
                return
            self.file = open(self.path, "rb")  # noqa: SIM115 (kept open while the log grows)
            if self.path.stat().st_size >= self.start:  # else rewritten from the start (PADDLE_LOG_OVERWRITE)
                self.file.seek(self.start)
        chunk = self.file.read()
        if not chunk:
            return
        self.pending += chunk
        while b"\n" in self.pending:
            line, self.pending = self.pending.split(b"\n", 1)
            self._complete(line)
        if b"\r" in self.pending[self.emitted :]:
            self.out.write(self.pending[self.emitted :])
            self.emitted = len(self.pending)
        self.out.flush()

    def _complete(self, line: bytes) -> None:
        rest = line[self.emitted :]
        glog = GLOG.search(rest)
        if glog is not None:  # drop it and its line end: a bar drawn before it goes on on this console line
            self.out.write(rest[: glog.start()])
        elif self.emitted or not NOISE.search(line):
            self.out.write(rest + b"\n")
        self.emitted = 0

    def close(self) -> None:
        self.poll()
        if self.pending[self.emitted :]:
            self.out.write(self.pending[self.emitted :])
        if self.emitted or self.pending:
            self.out.write(b"\n")
        self.out.flush()
        if self.file is not None:
            self.file.close()


def failed_process(launcher_log: Path) -> tuple[int, int, Path] | None:
    """(rank, exit code, log file) of the process Paddle's launcher reports as failed, if it names one."""
    text = launcher_log.read_text(encoding="utf-8", errors="replace") if launcher_log.is_file() else ""
    match = FAILED_CONTAINER.search(text)
    return (int(match[1]), int(match[2]), Path(match[3])) if match else None


def last_lines(path: Path, count: int = TAIL_LINES) -> list[str]:
    """The last `count` lines of a log as a terminal shows them (a redrawn progress bar is its last state)."""
    if not path.is_file():
        return []
    text = path.read_bytes()[-20000:].decode("utf-8", errors="replace")
    return [line.rsplit("\r", 1)[-1] for line in text.splitlines()][-count:]


def failure_report(plan: LaunchPlan, returncode: int) -> str:
    """One paragraph: which process failed, with its exit code, its log's last lines (unless it is the one the
    console followed) and where every log is."""
    launcher_log = plan.log_dir / LAUNCHER_LOG
    failed = failed_process(launcher_log)
    if failed is None:
        lines = "\n".join(f"  {line}" for line in last_lines(launcher_log))
        return f"the launch failed (exit code {returncode}); last lines of {launcher_log}:\n{lines}"
    rank, code, log = failed
    if log.name == FOLLOWED_LOG:
        return f"rank {rank} failed (exit code {code}); its output is above, and in {log}."
    lines = "\n".join(f"  {line}" for line in last_lines(log))
    return f"rank {rank} failed (exit code {code}); last lines of {log}:\n{lines}"


def run(plan: LaunchPlan, out: BinaryIO) -> int:
    """Launch, follow rank 0's log until the launcher exits, report a failure; return the exit code."""
    plan.log_dir.mkdir(parents=True, exist_ok=True)
    command = plan.command()
    print("+ " + " ".join(command), flush=True)
    print(f"launcher log: {plan.log_dir / LAUNCHER_LOG}; rank 0's output follows (every rank: "
          f"{plan.log_dir}/workerlog.N)", flush=True)  # fmt: skip
    with open(plan.log_dir / LAUNCHER_LOG, "wb") as log:
        for key, value in plan.env.items():
            log.write(f"set {key}={value}\n".encode())
        log.flush()
        follower = LogFollower(plan.log_dir / FOLLOWED_LOG, out)
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **plan.env})
        # A scheduler's SIGTERM goes to this process only: pass it on, so no training process is left behind.
        signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signal.SIGTERM))
        try:
            while proc.poll() is None:
                follower.poll()
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:  # the launcher and its processes got the same Ctrl-C; let them stop
            proc.wait()
        finally:
            follower.close()
    if proc.returncode == 0:
        return 0
    print(f"\nerror: {failure_report(plan, proc.returncode)}\n", file=sys.stderr, flush=True)
    failed = failed_process(plan.log_dir / LAUNCHER_LOG)
    return failed[1] if failed and failed[1] > 0 else proc.returncode or 1


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """train.sh's entry: plan (all checks), then launch and follow; a UserError is one paragraph, exit code 2."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    quiet_console()  # before Paddle is imported: its import-time notices would reach the console
    plan = plan_launch(argv, os.environ if environ is None else environ)
    return run(plan, sys.stdout.buffer)


if __name__ == "__main__":
    from paddlemix.utils.errors import exit_on_user_error

    sys.exit(exit_on_user_error(main)())
