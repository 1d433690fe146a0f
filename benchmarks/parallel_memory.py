"""Per-rank parameter and optimizer-state bytes of the parallel modes, as a ratio to one process: full SFT of a
random-weight checkpoint with Qwen3-VL-2B-Instruct's config cut to 2 layers (built as benchmarks/real_size.py
builds it; no download), one optimizer step through the real entry points on CPU processes.

Usage:
  python benchmarks/parallel_memory.py [--layers 2] [--modes single,tp2,stage1,stage2,stage3] [--nproc 2]
                                       [--model DIR] [--workdir DIR] [--keep]

Each mode is one run: `single` is `supervised_finetune.py`, the others `NPROC=2 sh train.sh` with the mode's keys.
Every process logs "rank R of N holds parameters P bytes, optimizer state S bytes" after its first step
(paddlemix/distributed/memory.py); the table prints P and S per rank and their ratio to the single process. A mode
that does not run prints its error instead of figures, so the script measures whatever modes the code supports.

Memory: float32 training of the 2-layer 2B config (the 151,936 x 2,048 embedding dominates: 0.44 B parameters,
weights + gradients + Adam moments about 7 GB) passed 12 GB RSS in one process before its first step ended on the
CPU machine this was written on, so the 2-process modes need well over 20 GB; run it where that fits.
`--model DIR` measures another model folder (on a tiny model the script checks itself in a few minutes). Sharding
stage 3 splits only tensors of more than 2^20 elements (Paddle's `segment_size`), so a tiny model shows no stage-3
saving; the 2B config's large tensors do.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from paddlemix.testing.parallel_runs import MEMORY, run_launched, run_single  # noqa: E402

MODES = {
    "single": [],
    "tp2": ["--tensor_parallel_degree", "2"],
    "stage1": ["--sharding", "stage1"],
    "stage2": ["--sharding", "stage2"],
    "stage3": ["--sharding", "stage3"],
}


def write_run_files(workdir: Path, model: Path) -> Path:
    """A small shapes data set and the argument file every mode shares (one step, full SFT, float32, CPU)."""
    from paddlemix.testing.shapes import make_shapes_dataset

    data = make_shapes_dataset(workdir / "shapes", n_train=8, n_eval=1, seed=0)
    args = {
        "model_name_or_path": str(model),
        "dataset": {"train": [{"name": "chatml_dataset", "data_files": str(data["train"])}]},
        "output_dir": "out",
        "device": "cpu",
        "do_train": True,
        "do_eval": False,
        "max_length": 256,
        "max_steps": 1,
        "per_device_train_batch_size": 1,
        "learning_rate": 1e-5,
        "logging_steps": 1,
        "save_steps": 1000,
        "seed": 0,
        "report_to": "none",
    }
    path = workdir / "args.json"
    path.write_text(json.dumps(args, indent=2))
    return path


def measure(mode: str, workdir: Path, args_file: Path, nproc: int) -> list[tuple[int, int]] | str:
    """(parameter bytes, optimizer bytes) per rank, or the error that stopped the mode."""
    try:
        if mode == "single":
            logs = [run_single(workdir, args_file, MODES[mode], mode, timeout=7200).console]
        else:
            logs = run_launched(workdir, args_file, MODES[mode], mode, nproc, timeout=7200).worker_logs
    except AssertionError as err:
        lines = [line for line in str(err).splitlines() if "rror" in line]
        return (lines[-1] if lines else str(err).splitlines()[0])[:300]
    found = [MEMORY.search(log) for log in logs]
    if not all(found):
        return "no per-rank memory line in the logs"
    return [(int(m.group(3)), int(m.group(4))) for m in found]


def table(results: dict[str, list[tuple[int, int]] | str]) -> str:
    base = results.get("single")
    rows = ["| mode | rank | parameters (MiB) | optimizer state (MiB) | parameters / one process | optimizer / one process |",
            "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for mode, figures in results.items():
        if isinstance(figures, str):
            rows.append(f"| {mode} | - | did not run: {figures} | | | |")
            continue
        for rank, (params, state) in enumerate(figures):
            ratio = (f"{params / base[0][0]:.2f} | {state / base[0][1]:.2f}" if isinstance(base, list)
                     else "- | -")  # fmt: skip
            rows.append(f"| {mode} | {rank} | {params / 2**20:.1f} | {state / 2**20:.1f} | {ratio} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2, help="language-model layers and vision blocks (default 2)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {', '.join(MODES)}")
    parser.add_argument("--nproc", type=int, default=2, help="processes of the parallel modes (default 2)")
    parser.add_argument("--model", type=Path, help="measure this model folder instead of the 2B config")
    parser.add_argument("--workdir", type=Path, help="where to build and run (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint and outputs")
    args = parser.parse_args()
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown modes {unknown}; choose from {', '.join(MODES)}")
    if "single" not in modes:
        modes.insert(0, "single")
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="parallel_memory_"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        model = args.model.resolve() if args.model else workdir / "model"
        if not args.model and not (model / "config.json").is_file():
            sys.path.insert(0, str(HERE))
            from real_size import build_checkpoint

            model.mkdir(parents=True, exist_ok=True)
            build_checkpoint(model, args.layers, None)
        what = str(args.model) if args.model else f"Qwen3-VL-2B config cut to {args.layers} layers"
        print(f"{what}: full SFT, float32, one step; {args.nproc} CPU processes for the parallel modes", flush=True)
        args_file = write_run_files(workdir, model)
        results = {mode: measure(mode, workdir, args_file, args.nproc) for mode in modes}
        print(table(results))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
