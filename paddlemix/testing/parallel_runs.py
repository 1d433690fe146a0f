"""One process against N CPU processes through `train.sh`, on the same global batch: the harness of the
multi-device tests (data parallel, sharding stages, tensor and pipeline parallel).

    single, parallel = run_single_and_parallel(workspace, config, common, single_args, parallel_args)
    assert_same_training(single, parallel)

`common` holds the arguments both runs share (data, steps, learning rate, ...); `single_args` and `parallel_args`
what differs (per-device batch size, parallel degrees), so that both train on the same global batch per step.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "paddlemix" / "tools"


@dataclass
class Run:
    """What one training run left: its output folder, per-step log records and (for N processes) worker logs."""

    output_dir: Path
    steps: dict[int, dict] = field(default_factory=dict)  # step -> train_log.jsonl record with a "loss"
    worker_logs: list[str] = field(default_factory=list)  # N processes: workerlog.0, workerlog.1, ...
    console: str = ""  # one process: what it printed

    def losses(self) -> dict[int, float]:
        return {step: record["loss"] for step, record in self.steps.items()}

    def grad_norms(self) -> dict[int, float]:
        """Step -> the logged `grad_norm` (the global norm of the step's gradients before clipping)."""
        return {step: record["grad_norm"] for step, record in self.steps.items()}

    def weights(self, name: str = "model.safetensors") -> dict[str, np.ndarray]:
        from paddlemix.utils.io import load_safetensors

        return load_safetensors(self.output_dir / name)


MEMORY = re.compile(r"rank (\d+) of (\d+) holds parameters (\d+) bytes, optimizer state (\d+) bytes")


def memory_of(log: str) -> tuple[int, int]:
    """(parameter bytes, optimizer state bytes) a process logged after its first step."""
    found = MEMORY.search(log)
    assert found, "no per-rank memory line in the log"
    return int(found.group(3)), int(found.group(4))


def read_steps(output_dir: Path) -> dict[int, dict]:
    records = [json.loads(line) for line in (output_dir / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in records if "loss" in r}


def run_single(workspace: Path, config: Path, args: list[str], output: str, timeout: float = 900) -> Run:
    """`python supervised_finetune.py config *args --output_dir output` in `workspace`."""
    proc = subprocess.run([sys.executable, str(TOOLS / "supervised_finetune.py"), str(config), *args,
                           "--output_dir", output], cwd=workspace, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, f"single process failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    out = workspace / output
    return Run(out, read_steps(out), console=proc.stdout + proc.stderr)


def run_launched(workspace: Path, config: Path, args: list[str], output: str, nproc: int = 2,
                 timeout: float = 1500, check: bool = True) -> Run:  # fmt: skip
    """`NPROC=nproc sh train.sh config *args --output_dir output` in `workspace` (CPU processes over gloo)."""
    env = {**os.environ, "NPROC": str(nproc), "PYTHON": sys.executable}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run(["sh", str(TOOLS / "train.sh"), str(config), *args, "--output_dir", output],
                          cwd=workspace, env=env, capture_output=True, text=True, timeout=timeout)  # fmt: skip
    out = workspace / output
    logs = out / "launch_logs"
    texts = [(logs / f"workerlog.{i}").read_text() for i in range(nproc) if (logs / f"workerlog.{i}").is_file()]
    if check:
        detail = "\n".join(f"--- workerlog.{i}\n{t[-4000:]}" for i, t in enumerate(texts))
        assert proc.returncode == 0, (
            f"{nproc} processes failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}\n{detail}"
        )
    steps = read_steps(out) if (out / "train_log.jsonl").is_file() else {}
    return Run(out, steps, texts)


def run_single_and_parallel(workspace: Path, config: Path, common: list[str], single_args: list[str],
                            parallel_args: list[str], nproc: int = 2, name: str = "parallel") -> tuple[Run, Run]:  # fmt: skip
    """The same training as one process (output `single`) and as `nproc` processes through train.sh (`name`)."""
    single = run_single(workspace, config, [*common, *single_args], "single")
    parallel = run_launched(workspace, config, [*common, *parallel_args], name, nproc)
    return single, parallel


def checkpoint_tensors(folder: Path) -> dict[str, np.ndarray]:
    """The tensors of one part of a flex checkpoint (`checkpoint-N/model_state`, `optimizer_state`), each whole
    in float32: every rank's piece (a block of the tensor, or a range of its flattened values, as sharding stage 3
    saves its slices) put in its place. Places no piece covers stay NaN, so an incomplete save shows.
    The `.metadata` and `.distcp` files are Paddle pickles: read only a checkpoint this process's tests wrote."""
    import paddle

    (metadata_file,) = folder.glob("*.metadata")
    metadata = paddle.load(str(metadata_file))
    out = {key: np.full(pieces[0].global_shape, np.nan, dtype=np.float32)
           for key, pieces in metadata.state_dict_metadata.items()}  # fmt: skip
    by_file: dict[str, list] = {}
    for index, file in metadata.storage_metadata.items():
        by_file.setdefault(file, []).append(index)
    for file, indices in by_file.items():
        data = paddle.load(str(folder / file))
        for index in indices:
            value, target = data[index.tensor_key].numpy(), out[index.tensor_key]
            if index.is_flattened:
                start, end = index.flattened_range
                target.reshape(-1)[start:end] = value.reshape(-1)
            else:
                block = tuple(slice(o, o + n) for o, n in zip(index.global_offset, index.local_shape))
                target[block] = value.reshape(index.local_shape)
    return out


def assert_same_checkpoint(single: Path, parallel: Path, weight_tol: float = 1e-4, state_rtol: float = 1e-3,
                           state_atol: float = 1e-7) -> None:  # fmt: skip
    """Two flex checkpoints of the same step hold the same tensors: names, shapes, every value present (no NaN),
    the model's within `weight_tol` (absolute), the optimizer's moments within `state_rtol` / `state_atol`."""
    for part, rtol, atol in (("model_state", 0.0, weight_tol), ("optimizer_state", state_rtol, state_atol)):
        one, many = checkpoint_tensors(single / part), checkpoint_tensors(parallel / part)
        assert sorted(many) == sorted(one), f"{part}: tensor names differ: {sorted(set(many) ^ set(one))[:6]}"
        for key, value in one.items():
            assert many[key].shape == value.shape, f"{part}:{key} shape {many[key].shape} vs {value.shape}"
            assert not np.isnan(many[key]).any(), f"{part}:{key}: part of the tensor was not saved"
            np.testing.assert_allclose(many[key], value, rtol=rtol, atol=atol, err_msg=f"{part}:{key}")


def output_files(folder: Path) -> set[str]:
    """The files of an output folder a user keeps: not checkpoints, launcher logs or staging folders."""
    return {p.name for p in folder.iterdir() if not p.name.startswith(("checkpoint-", "launch_logs", "."))}


def assert_same_training(single: Run, parallel: Run, base: Path | None = None, loss_tol: float = 1e-5,
                         weight_tol: float = 1e-4, files: tuple[str, ...] = ("model.safetensors",),
                         min_steps: int = 3, norm_tol: float = 1e-4) -> None:  # fmt: skip
    """Per-step losses equal within `loss_tol` (relative), logged gradient norms within `norm_tol` (relative), saved
    tensors within `weight_tol` (absolute), the same
    output files and tensor names; with `base` (the starting model.safetensors) also that training really moved the
    weights, so equality is not the equality of two no-ops."""
    assert len(single.steps) >= min_steps, single.steps
    assert output_files(parallel.output_dir) == output_files(single.output_dir), "the output folders differ"
    assert sorted(parallel.steps) == sorted(single.steps), (sorted(parallel.steps), sorted(single.steps))
    for step, loss in single.losses().items():
        got = parallel.losses()[step]
        assert abs(got - loss) <= loss_tol * max(abs(loss), 1.0), f"step {step}: loss {got} vs one process {loss}"
    for step, norm in single.grad_norms().items():
        got = parallel.grad_norms()[step]
        assert abs(got - norm) <= norm_tol * norm, f"step {step}: grad_norm {got} vs one process {norm}"
    for name in files:
        one, many = single.weights(name), parallel.weights(name)
        assert sorted(many) == sorted(one), f"{name}: tensor names differ"
        for key in one:
            assert many[key].shape == one[key].shape, f"{name}:{key} shape {many[key].shape} vs {one[key].shape}"
            np.testing.assert_allclose(many[key], one[key], atol=weight_tol, rtol=0, err_msg=f"{name}:{key}")
    if base is not None and files:
        from paddlemix.utils.io import load_safetensors

        start, one = load_safetensors(base), single.weights(files[0])
        moved = max(float(np.abs(one[k] - start[k]).max()) for k in one if k in start)
        assert moved > 1e-3, f"training moved no weight of {files[0]} (largest change {moved})"
