"""Load a Hugging Face model folder into a Paddle model: safetensors streamed tensor by tensor, no random init.

The model is built under `paddle.LazyGuard()` (its parameters get shapes and dtypes but no memory and no initial
values), then each parameter is filled from the checkpoint: one module's tensors are read at a time (so the q/k/v
and gate/up tensors that paddleformers fuses arrive together), converted by the family's `import_state_dict`
(rename, transpose, fuse), cast to the parameter's dtype and handed to the parameter; tensors the conversion
leaves as they are (embeddings, norms) are read straight into the parameter's memory. The peak memory is the model
plus about one module's tensors, never two copies of the model.

The folder is only read: config.json, the safetensors index and shards, generation_config.json. Nothing is written
there and nothing is unpickled (Paddle's own checkpoint loader unpickles any `*.metadata` file it finds and writes
a metadata cache into the folder, which is why it is not used).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from paddlemix.distributed.tensor_parallel import SINGLE, TensorParallel, configure, split_of
from paddlemix.utils.errors import UserError
from paddlemix.utils.io import read_json
from paddlemix.utils.safetensors_stream import (
    DTYPE_NAMES,
    NUMPY_DTYPES,
    TensorEntry,
    checkpoint_entries,
    read_tensor,
)

logger = logging.getLogger(__name__)

# Paddle names of the output head and the input embeddings every family shares; a checkpoint without a head (tied
# embeddings, as transformers saves them) gets a copy of the embeddings unless the model already shares them.
HEAD = "lm_head.weight"
EMBEDDINGS = "model.language_model.embed_tokens.weight"
FLOAT_DTYPES = ("float32", "bfloat16", "float16")

ImportFn = Callable[[dict[str, np.ndarray], Any, set[str]], dict[str, np.ndarray]]


class _HubLines(logging.Filter):
    """Drops paddleformers' hub lines ("Using download source: huggingface", "loading configuration file None")
    that it logs even for a local folder, where nothing is downloaded."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Using download source") or message == "loading configuration file None")


@contextlib.contextmanager
def local_folder_logs() -> Iterator[None]:
    """While loading configs and processors from a local folder, hide paddleformers' misleading hub lines.

    The one place that touches paddleformers' logger for this."""
    from paddleformers.utils.log import logger as paddleformers_logger

    hub_lines = _HubLines()
    paddleformers_logger.logger.addFilter(hub_lines)
    try:
        yield
    finally:
        paddleformers_logger.logger.removeFilter(hub_lines)


def checkpoint_tensors(folder: str | Path) -> dict[str, TensorEntry]:
    """Every weight tensor of a model folder by checkpoint name, from the safetensors headers only.

    Uses `model.safetensors.index.json` when present (its shards), else `model.safetensors`, else every
    `*.safetensors` file in the folder.

    Raises:
        UserError: a shard named by the index is missing, two files hold the same tensor name, or a tensor has a
            dtype Paddle cannot hold.
    """
    tensors: dict[str, TensorEntry] = {}
    for entry in checkpoint_entries(folder, prefer_single_file=True):
        if entry.dtype not in DTYPE_NAMES:
            raise UserError(
                f"{entry.file}: tensor {entry.name} has dtype {entry.dtype}, which this loader cannot read."
            )
        tensors[entry.name] = entry
    return tensors


def pickled_tensors(folder: Path) -> dict[str, np.ndarray]:
    """Every tensor of a folder whose weights exist only in pickle-based files, read whole (no streaming): only
    reached when the user set `allow_pickle_weights`. `*.pdparams` through `paddle.load`; `*.bin`, `*.pt`, `*.pth`
    (PyTorch) through `torch.load` when torch is installed.

    Raises:
        UserError: PyTorch files without torch installed, or no weight files at all.
    """
    import paddle

    tensors: dict[str, np.ndarray] = {}
    for file in sorted(folder.iterdir()):
        if file.suffix == ".pdparams":
            state = paddle.load(str(file), return_numpy=True)
        elif file.suffix in (".bin", ".pt", ".pth"):
            try:
                import torch
            except ImportError:
                raise UserError(
                    f"{file} is a PyTorch pickle and torch is not installed. Convert the folder to "
                    "safetensors (transformers: save_pretrained(safe_serialization=True))."
                ) from None
            state = {k: v.float().numpy() if v.is_floating_point() else v.numpy()
                     for k, v in torch.load(str(file), map_location="cpu", weights_only=False).items()}  # fmt: skip
        else:
            continue
        tensors.update({k: np.asarray(v) for k, v in state.items()})
    if not tensors:
        raise UserError(f"{folder} has no *.safetensors weight files.")
    return tensors


def checkpoint_dtype(config: dict[str, Any], tensors: dict[str, TensorEntry]) -> str:
    """The dtype a checkpoint was saved in: config.json's `torch_dtype`/`dtype` (top level, then `text_config`),
    else the floating dtype holding most of the tensors' bytes, else float32."""
    for part in (config, config.get("text_config") or {}):
        for key in ("torch_dtype", "dtype"):
            if part.get(key) in FLOAT_DTYPES:
                return part[key]
    sizes: dict[str, int] = {}
    for info in tensors.values():
        name = DTYPE_NAMES[info.dtype]
        if name in FLOAT_DTYPES:
            sizes[name] = sizes.get(name, 0) + info.nbytes
    return max(sizes, key=sizes.get) if sizes else "float32"


@contextlib.contextmanager
def lazy_init(dtype: str) -> Iterator[None]:
    """Build layers with `dtype` parameters that have no storage and are never initialised: Paddle's LazyGuard
    defers every initialiser to an explicit `param.initialize()` that this loader never calls, and paddleformers'
    `no_init_weights` turns off its own `init_weights` pass."""
    import paddle
    from paddleformers.transformers.model_utils import dtype_guard, no_init_weights

    with no_init_weights(), dtype_guard(dtype), paddle.LazyGuard():
        yield


def build_model(cls: Any, config: Any, dtype: str) -> Any:
    """An instance of `cls` (a paddleformers-style model class) whose parameters are `dtype` and empty."""
    config.dtype = dtype
    for name in ("text_config", "vision_config"):
        if getattr(config, name, None) is not None:
            getattr(config, name).dtype = dtype
    with lazy_init(dtype):
        return cls(config)


def module_groups(tensors: dict[str, TensorEntry]) -> list[list[str]]:
    """Checkpoint names grouped by the module two levels up (`...self_attn` for `...self_attn.q_proj.weight`), so
    tensors that are fused into one Paddle parameter are converted together; groups in file order."""
    groups: dict[str, list[str]] = {}
    for name in sorted(tensors, key=lambda n: (str(tensors[n].file), tensors[n].start)):
        groups.setdefault(name.rsplit(".", 2)[0], []).append(name)
    return list(groups.values())


def to_paddle(value: np.ndarray, dtype: Any) -> Any:
    """A numpy array as a paddle tensor of `dtype` that owns its memory; `uint16` arrays are bfloat16 bits (see
    paddlemix.utils.safetensors_stream; Paddle reads uint16 numpy data as bfloat16).

    One copy is made: the cast reads a zero-copy view of the array, or, with no cast, `to_tensor` copies it. A
    zero-copy tensor itself cannot be handed to a parameter: its memory is freed with the numpy array.
    """
    import paddle

    on_cpu = paddle.get_device() == "cpu"
    tensor = paddle.Tensor(value, zero_copy=True) if on_cpu else paddle.to_tensor(value)
    if value.dtype == np.uint16 and tensor.dtype != paddle.bfloat16:
        raise TypeError(f"expected uint16 numpy data to become bfloat16, got {tensor.dtype}")
    if tensor.dtype != dtype:
        return tensor.astype(dtype)
    return paddle.to_tensor(value) if on_cpu else tensor


class ArraySource:
    """Checkpoint tensors as numpy arrays, handed to parameters by copy (`to_paddle`)."""

    def __init__(self, read: Callable[[str], np.ndarray]) -> None:
        self.read = read

    def as_paddle(self, value: np.ndarray, dtype: Any) -> Any:
        return to_paddle(value, dtype)

    def release(self) -> None:
        """Forget the tensors of the group just converted."""


class SafetensorsSource(ArraySource):
    """Safetensors tensors read straight into new CPU paddle tensors; `read` gives a numpy view of that memory.

    A tensor the family's conversion passes through unchanged (embeddings, norms, anything not transposed or
    fused) becomes the parameter itself, with no copy: loading the largest tensor (the embeddings) costs its size
    once, not twice. Converted tensors are copied by `to_paddle`. Off-CPU devices read into numpy and copy.
    """

    def __init__(self, tensors: dict[str, TensorEntry]) -> None:
        super().__init__(self._read)
        self.tensors = tensors
        self.owners: dict[int, tuple[Any, np.ndarray]] = {}  # id(view) -> (paddle tensor, the view itself)

    def _read(self, name: str) -> np.ndarray:
        import paddle

        info = self.tensors[name]
        if paddle.get_device() != "cpu" or info.nbytes == 0:
            return read_tensor(info)
        tensor = paddle.empty(list(info.shape), dtype=DTYPE_NAMES[info.dtype])
        memory = (ctypes.c_uint8 * info.nbytes).from_address(tensor.data_ptr())
        view = np.frombuffer(memory, dtype=NUMPY_DTYPES[info.dtype]).reshape(info.shape)
        with open(info.file, "rb", buffering=0) as f:
            f.seek(info.start)
            target, done = memoryview(memory).cast("B"), 0
            while done < info.nbytes:
                count = f.readinto(target[done:])
                if not count:
                    raise UserError(f"{info.file} ended inside tensor {name}. Re-download or re-save it.")
                done += count
        self.owners[id(view)] = (tensor, view)
        return view

    def as_paddle(self, value: np.ndarray, dtype: Any) -> Any:
        tensor, view = self.owners.get(id(value), (None, None))
        if view is not value:
            return to_paddle(value, dtype)
        return tensor if tensor.dtype == dtype else tensor.astype(dtype)

    def release(self) -> None:
        self.owners.clear()


def fill_parameters(
    model: Any,
    groups: list[list[str]],
    source: ArraySource,
    import_state_dict: ImportFn,
    folder: Path,
    state: dict[str, Any] | None = None,
    tp: TensorParallel = SINGLE,
    parts: Mapping[str, int] | None = None,
) -> None:
    """Fill every parameter and persistable buffer of `model` from the checkpoint, one group of checkpoint names at
    a time (see `module_groups`). Under tensor parallelism each split parameter gets only this rank's slice of the
    converted tensor (`paddlemix.distributed.tensor_parallel`), so a rank holds about 1/degree of the language model.

    Args:
        state: the tensors to fill by their one-process names; default `model.state_dict()`. A pipeline stage
            passes only its own (and only the groups it holds).

    Raises:
        UserError: a checkpoint tensor has no parameter, a parameter has no checkpoint tensor, or shapes differ.
    """
    import paddle

    state = model.state_dict() if state is None else state
    # The head is left out of the target so a group without the embeddings never tries to tie it (tied below).
    target = set(state) - {HEAD}
    filled: set[int] = set()
    unexpected: list[str] = []
    with paddle.no_grad():
        for group in groups:
            converted = import_state_dict({name: source.read(name) for name in group}, model.config, target)
            for name in list(converted):
                value = converted.pop(name)
                param = state.get(name)
                if param is None:
                    unexpected.append(name)
                    continue
                split = split_of(name, param, parts or {}) if tp.enabled else None
                if split is not None:
                    value = split.take(value, tp)  # this rank's slice of the full tensor
                if list(value.shape) != list(param.shape):
                    raise UserError(
                        f"{folder}: tensor {name} has shape {list(value.shape)} but the model built from config.json "
                        f"expects {list(param.shape)}. The weights and config.json come from different models."
                    )
                source.as_paddle(value, param.dtype)._share_buffer_to(param)
                filled.add(id(param))
            source.release()
        if HEAD in state and id(state[HEAD]) not in filled and id(state.get(EMBEDDINGS)) in filled:
            head = state[HEAD]
            state[EMBEDDINGS].clone()._share_buffer_to(head)
            filled.add(id(head))
    missing = [name for name, param in state.items() if id(param) not in filled]
    if missing or unexpected:
        raise UserError(
            f"{folder}: the weights do not fit the model built from its config.json (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}). Check that config.json belongs to these safetensors files."
        )


def read_generation_config(model: Any, folder: Path) -> None:
    """Set `model.generation_config` from generation_config.json when both exist (read as JSON: no hub lookup)."""
    path = folder / "generation_config.json"
    if path.is_file() and getattr(model, "generation_config", None) is not None:
        from paddleformers.generation import GenerationConfig

        model.generation_config = GenerationConfig.from_dict(read_json(path))


def load_weights_into(
    cls: Any,
    config: Any,
    folder: str | Path,
    import_state_dict: ImportFn,
    dtype: str | None,
    tp: TensorParallel = SINGLE,
    parts: Mapping[str, int] | None = None,
) -> Any:
    """Build `cls(config)` without initialisation and fill it from `folder`'s safetensors.

    Args:
        dtype: "float32", "bfloat16" or "float16" for floating parameters; None keeps the checkpoint's dtype
            (`checkpoint_dtype`). Integer tensors keep their own dtype.
        tp: this process's tensor-parallel degree and rank; above degree 1 the language model is built from
            parallel layers (`tensor_parallel.configure`) and each rank keeps its slices.
        parts: fused layer name -> number of separately split parts (`ModelAdapter.tensor_parallel_parts`).
    """
    folder = Path(folder)
    tensors = checkpoint_tensors(folder)
    dtype = dtype or checkpoint_dtype(read_json(folder / "config.json"), tensors)
    if dtype not in FLOAT_DTYPES:
        raise UserError(
            f'dtype "{dtype}" is not supported for loading {folder}; use one of {", ".join(FLOAT_DTYPES)}.'
        )
    if tp.enabled:
        configure(config, tp)
    model = build_model(cls, config, dtype)
    if tensors:
        groups, source = module_groups(tensors), SafetensorsSource(tensors)
    else:  # pickle-only weights, allowed by the caller (`check_safe_weights`): one group, read whole
        arrays = pickled_tensors(folder)
        groups, source = [list(arrays)], ArraySource(arrays.pop)
    fill_parameters(model, groups, source, import_state_dict, folder, tp=tp, parts=parts)
    read_generation_config(model, folder)
    logger.info("loaded %d tensors from %s as %s", len(tensors), folder, dtype)
    return model


def load_pipeline_stage(
    build: Callable[[Any], Any],
    config: Any,
    folder: str | Path,
    import_state_dict: ImportFn,
    parameter_name: Callable[[str], str],
    dtype: str | None,
) -> Any:
    """Build this process's pipeline stages (`build(config)`, a `QwenVLPipeline`) without initialisation and fill
    them from `folder`'s safetensors, reading only the tensors of the modules this stage holds.

    Args:
        parameter_name: checkpoint name -> one-process parameter name (the family adapter's), to pick the
            checkpoint groups of this stage before they are read.
    """
    folder = Path(folder)
    tensors = checkpoint_tensors(folder)
    if not tensors:
        raise UserError(f"{folder}: pipeline parallel loads safetensors weights only; convert the folder first.")
    dtype = dtype or checkpoint_dtype(read_json(folder / "config.json"), tensors)
    if dtype not in FLOAT_DTYPES:
        raise UserError(
            f'dtype "{dtype}" is not supported for loading {folder}; use one of {", ".join(FLOAT_DTYPES)}.'
        )
    model = build_model(build, config, dtype)
    owned = model.owned_prefixes()
    groups = [[n for n in group if parameter_name(n).startswith(owned)] for group in module_groups(tensors)]
    groups = [group for group in groups if group]
    state = model.one_process_state_dict()
    fill_parameters(model, groups, SafetensorsSource(tensors), import_state_dict, folder, state)
    logger.info("pipeline stage: loaded %d of %d tensors from %s as %s", sum(map(len, groups)), len(tensors), folder,
                dtype)  # fmt: skip
    return model
