"""What the runnable demos in examples/ share: their command-line options and how they run a tool."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path


def demo_parser(description: str | None, n_train: int = 400, n_eval: int = 80) -> argparse.ArgumentParser:
    """The options every demo takes: `--workdir` (receives demo_run/), `--n_train` and `--n_eval` (records)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=".", help="folder that receives demo_run/ (default: current folder)")
    parser.add_argument("--n_train", type=int, default=n_train)
    parser.add_argument("--n_eval", type=int, default=n_eval)
    return parser


def step(title: str, command: list[str], cwd: Path) -> None:
    """Print `== title: command` and run it in `cwd`; raises CalledProcessError when it fails."""
    print(f"\n== {title}: {' '.join(command)}", flush=True)
    subprocess.run(command, cwd=cwd, check=True)
