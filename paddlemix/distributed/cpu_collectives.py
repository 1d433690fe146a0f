"""CPU stand-ins for what Paddle 3.3's CPU build lacks for fleet hybrid parallel (tensor, pipeline, sharding 1-3).

With them, a multi-device argument file runs as several CPU processes over gloo (`NPROC=8 sh train.sh ARGS.json`),
which checks the configuration (degrees, shapes, checkpoints, losses against one process) before paying for GPUs.
They are slow: every collective is a blocking gloo call, several are composed from two. They are never loaded on
GPU/NPU/XPU runs (`install` returns without touching anything there).

What is supplied, each patched at runtime (Paddle's files are never edited) with its reason next to it:
- gloo entry points that do not exist: every `*_on_calc_stream` variant (there is no calculation stream on CPU; the
  blocking call is the same thing), `reduce_scatter`, `all_to_all` (composed from all_reduce / send / recv);
- the four CPU kernels that only raise (`c_identity`, `c_concat`, `c_split`, `c_softmax_with_cross_entropy`), as
  autograd-correct Python versions built from existing ops and gloo collectives;
- device asserts: `hybrid_parallel_util.broadcast_input_data`, `ParallelEnv._device_id`, the `group_sharded`
  device checks and the `.cuda()` of stage-3 gradient clipping; `Tensor.cuda()` (which only raises on a CPU
  build) leaves the tensor on CPU, for the flex-checkpoint resharder that resumes sharded checkpoints;
- copies that are none on CPU: stage 3's parameter storage and its `_device2cpu` (the stage-3 checkpoint gather)
  take `.cpu()` for a copy and then clear the original, which on a CPU build is the same tensor.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

NOTE = (
    "CPU stand-ins for Paddle's GPU collectives are on (tensor x pipeline x sharding degrees %s): slow, for "
    "checking a multi-device configuration in CPU processes, not for speed"
)
MODES = ("tensor", "pipeline", "sharding")
_installed = False


def install(device: str, degrees: dict[str, int], force: bool = False) -> bool:
    """Patch Paddle so fleet tensor/pipeline parallel and sharding stages 1-3 run in CPU processes over gloo.

    Args:
        device: the run's device (`cpu`, `gpu`, `npu`, `xpu`); anything but `cpu` leaves Paddle untouched.
        degrees: parallel degrees by name (e.g. {"tensor": 2, "pipeline": 1, "sharding": 1}); nothing is patched
            unless one of those three is above 1 (data parallel, "data", runs on gloo as shipped).
        force: patch whatever the degrees (tests of the stand-ins themselves).

    Returns:
        True when the stand-ins are in place (now or from an earlier call).

    Call before `fleet.init` and before the model is built. Idempotent; logs one line when it installs.
    """
    global _installed
    if device != "cpu" or not (force or any(degrees.get(k, 1) > 1 for k in MODES)):
        return False
    if _installed:
        return True
    _patch_process_group()
    _patch_kernels()
    _patch_device_checks()
    _installed = True
    logger.info(NOTE, " x ".join(f"{degrees.get(k, 1)}" for k in MODES))
    return True


class _Done:
    """What the blocking stand-ins return where Paddle expects an asynchronous task: already finished."""

    def wait(self, *args: Any, **kwargs: Any) -> bool:
        return True

    def is_completed(self) -> bool:
        return True

    def is_sync(self) -> bool:
        return True

    def synchronize(self) -> None:
        return None


# ---------------------------------------------------------------------------------------------------------------
# gloo process group: entry points that do not exist on CPU
# ---------------------------------------------------------------------------------------------------------------


def _copy_into(out: Any, value: Any) -> None:
    """Write `value` into the preallocated `out` in place (callers keep their reference to `out`)."""
    import paddle

    paddle.assign(value.reshape(out.shape).astype(out.dtype), output=out)


def _reduce_scatter_tensor(pg: Any, out: Any, inp: Any, op: Any) -> _Done:
    """reduce_scatter = all_reduce of a copy of the whole input, then this rank keeps its chunk along axis 0."""
    import paddle

    buffer = inp.clone()
    pg.all_reduce(buffer, op, True).wait()
    _copy_into(out, paddle.split(buffer, pg.size(), axis=0)[pg.rank()])
    return _Done()


def _reduce_scatter_list(pg: Any, out: Any, inputs: list[Any], op: Any) -> _Done:
    """The list form: input chunk i (for rank i) of every rank is reduced into rank i's `out`."""
    import paddle

    return _reduce_scatter_tensor(pg, out, paddle.concat([t.reshape([-1]) for t in inputs]), op)


def _exchange(pg: Any, outgoing: list[Any], incoming: list[Any]) -> _Done:
    """All-to-all by pairwise send/recv: `outgoing[j]` goes to rank j, `incoming[j]` (preallocated) comes from j.
    Each pair exchanges with the lower rank sending first, which orders every pair the same way on both sides, so
    no cycle of waiting sends can form."""
    me = pg.rank()
    for peer in range(pg.size()):
        if peer == me:
            _copy_into(incoming[me], outgoing[me])
        elif me < peer:
            pg.send(outgoing[peer].contiguous(), peer, True).wait()
            pg.recv(incoming[peer], peer, True).wait()
        else:
            pg.recv(incoming[peer], peer, True).wait()
            pg.send(outgoing[peer].contiguous(), peer, True).wait()
    return _Done()


def _all_to_all_list(pg: Any, out_list: list[Any], in_list: list[Any]) -> _Done:
    import paddle

    if len(out_list) == 0:  # Paddle's list form may pass an empty list to be filled
        out_list.extend(paddle.empty_like(t) for t in in_list)
    return _exchange(pg, in_list, out_list)


def _all_to_all_tensor(pg: Any, out: Any, inp: Any) -> _Done:
    import paddle

    n = pg.size()
    incoming = [paddle.empty_like(c) for c in paddle.split(out, n, axis=0)]
    _exchange(pg, paddle.split(inp, n, axis=0), incoming)
    _copy_into(out, paddle.concat(incoming, axis=0))
    return _Done()


def _all_to_all_single(pg: Any, out: Any, inp: Any, out_sizes: list[int], in_sizes: list[int]) -> _Done:
    import paddle

    n = pg.size()
    in_sizes = list(in_sizes) or [inp.shape[0] // n] * n
    out_sizes = list(out_sizes) or [out.shape[0] // n] * n
    incoming = [paddle.empty([s, *out.shape[1:]], dtype=out.dtype) for s in out_sizes]
    _exchange(pg, paddle.split(inp, in_sizes, axis=0), incoming)
    _copy_into(out, paddle.concat(incoming, axis=0))
    return _Done()


def _patch_process_group() -> None:
    from paddle.base import core

    pg_cls = core.ProcessGroupGloo
    sum_op = core.ReduceOp.SUM
    # Reason for all of these: gloo has no calculation stream and raises "does not support ... use_calc_stream";
    # on CPU the blocking call of the same collective is exactly what the calc-stream variant means.
    patches = {
        "all_reduce_on_calc_stream": lambda self, tensor, op=sum_op: self.all_reduce(tensor, op, True),
        "all_gather_into_tensor_on_calc_stream": lambda self, out, inp: self.all_gather_into_tensor(out, inp, True),
        "all_gather_on_calc_stream": lambda self, out, inp: self.all_gather(out, inp, True),
        "broadcast_on_calc_stream": lambda self, tensor, src: self.broadcast(tensor, src, True),
        "reduce_on_calc_stream": lambda self, tensor, dst, op=sum_op: self.reduce(tensor, dst, op, True),
        "send_on_calc_stream": lambda self, tensor, dst: self.send(tensor, dst, True),
        "recv_on_calc_stream": lambda self, tensor, src: self.recv(tensor, src, True),
        "scatter_on_calc_stream": lambda self, out, inp, src: self.scatter(out, inp, src, True),
        "scatter_tensor_on_calc_stream": lambda self, out, inp, src: self.scatter_tensor(out, inp, src, True),
        # gloo has no reduce_scatter and no all_to_all at all: composed from all_reduce and send/recv.
        "reduce_scatter_tensor": lambda self, out, inp, op, sync_op=True: _reduce_scatter_tensor(self, out, inp, op),
        "reduce_scatter_tensor_on_calc_stream": lambda self, out, inp, op=sum_op: _reduce_scatter_tensor(
            self, out, inp, op
        ),
        "reduce_scatter": lambda self, out, inputs, op, sync_op=True: _reduce_scatter_list(self, out, inputs, op),
        "reduce_scatter_on_calc_stream": lambda self, out, inputs, op=sum_op: _reduce_scatter_list(
            self, out, inputs, op
        ),
        "all_to_all": lambda self, out, inp, sync_op=True: _all_to_all_list(self, out, inp),
        "all_to_all_on_calc_stream": lambda self, out, inp: _all_to_all_list(self, out, inp),
        "all_to_all_tensor": lambda self, out, inp, sync_op=True: _all_to_all_tensor(self, out, inp),
        "all_to_all_tensor_on_calc_stream": lambda self, out, inp: _all_to_all_tensor(self, out, inp),
        "all_to_all_single": lambda self, out, inp, out_sizes, in_sizes, sync_op=True: _all_to_all_single(
            self, out, inp, out_sizes, in_sizes
        ),
        "all_to_all_single_on_calc_stream": lambda self, out, inp, out_sizes, in_sizes: _all_to_all_single(
            self, out, inp, out_sizes, in_sizes
        ),
    }
    for name, fn in patches.items():
        setattr(pg_cls, name, fn)


# ---------------------------------------------------------------------------------------------------------------
# the four model-parallel kernels whose CPU versions only raise
# ---------------------------------------------------------------------------------------------------------------


def _group(ring_id: int) -> Any:
    from paddle.distributed import collective

    group = collective._get_group_map().get(ring_id)
    if group is None or getattr(group, "process_group", None) is None:  # ring 0: the default (global) group
        group = collective._get_default_group()
    return group


def _gather_last_axis(tensor: Any, group: Any) -> Any:
    """All ranks' `tensor` concatenated along the last axis, in rank order (no autograd)."""
    import paddle

    parts = [paddle.empty_like(tensor) for _ in range(group.nranks)]
    group.process_group.all_gather(parts, tensor.contiguous(), True).wait()
    return paddle.concat(parts, axis=-1)


def _kernels() -> dict[str, Any]:
    """The stand-in kernels, built on first use (they subclass Paddle's PyLayer)."""
    import paddle
    from paddle.autograd import PyLayer
    from paddle.base import core

    class Concat(PyLayer):
        """c_concat: gather along the last axis; the gradient is this rank's slice of the incoming one."""

        @staticmethod
        def forward(ctx: Any, tensor: Any, rank: int, nranks: int, ring_id: int) -> Any:
            ctx.rank, ctx.nranks = rank, nranks
            return _gather_last_axis(tensor, _group(ring_id))

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            return paddle.split(grad, ctx.nranks, axis=-1)[ctx.rank]

    class SoftmaxCrossEntropy(PyLayer):
        """c_softmax_with_cross_entropy: softmax cross entropy over a vocabulary split along the last axis.
        logits [..., V/n] float, label [..., 1] int64 (global ids; `ignore_index` gives loss 0 and no gradient);
        returns (softmax [..., V/n], loss [..., 1])."""

        @staticmethod
        def forward(ctx: Any, logits: Any, label: Any, ignore_index: int, ring_id: int, rank: int,
                    nranks: int) -> tuple[Any, Any]:  # fmt: skip
            pg = _group(ring_id).process_group
            local = logits.astype("float32")
            width = local.shape[-1]
            peak = local.max(axis=-1, keepdim=True)
            pg.all_reduce(peak, core.ReduceOp.MAX, True).wait()
            shifted = local - peak
            exp = paddle.exp(shifted)
            total = exp.sum(axis=-1, keepdim=True)
            pg.all_reduce(total, core.ReduceOp.SUM, True).wait()
            label = label.astype("int64")
            start = rank * width
            mine = (label >= start) & (label < start + width)
            index = paddle.where(mine, label - start, paddle.zeros_like(label))
            picked = paddle.take_along_axis(shifted, index, axis=-1) * mine.astype("float32")
            pg.all_reduce(picked, core.ReduceOp.SUM, True).wait()
            kept = (label != ignore_index).astype("float32")
            loss = (paddle.log(total) - picked) * kept
            softmax = exp / total
            ctx.save_for_backward(softmax, index, mine, kept)
            return softmax.astype(logits.dtype), loss.astype(logits.dtype)

        @staticmethod
        def backward(ctx: Any, grad_softmax: Any, grad_loss: Any) -> Any:
            softmax, index, mine, kept = ctx.saved_tensor()
            onehot = paddle.nn.functional.one_hot(index.squeeze(-1), softmax.shape[-1]) * mine.astype("float32")
            grad = (softmax - onehot) * (grad_loss.astype("float32") * kept)
            return grad.astype(grad_loss.dtype), None

    class Split(PyLayer):
        """c_split: this rank's slice of the last axis; the gradient is every rank's slice gathered along it."""

        @staticmethod
        def forward(ctx: Any, tensor: Any, group: Any, rank: int, nranks: int) -> Any:
            ctx.group = group
            return paddle.split(tensor, nranks, axis=-1)[rank].contiguous()

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            return _gather_last_axis(grad, ctx.group)

    def c_identity(tensor: Any, ring_id: int, use_calc_stream: bool = True, use_model_parallel: bool = True) -> Any:
        # Forward of c_identity is a copy; Paddle calls it inside PyLayers whose backward does the all-reduce.
        return tensor.clone() if not tensor.stop_gradient else paddle.assign(tensor)

    def c_split(tensor: Any, rank: int, nranks: int, ring_id: int, use_model_parallel: bool = True) -> Any:
        # Called inside Paddle's c_split PyLayer (its backward gathers): this rank's slice of the last axis.
        return paddle.split(tensor, nranks, axis=-1)[rank].contiguous()

    def c_concat(tensor: Any, rank: int, nranks: int, ring_id: int, use_calc_stream: bool = True,
                 use_model_parallel: bool = True) -> Any:  # fmt: skip
        return Concat.apply(tensor, rank, nranks, ring_id)

    def c_softmax_with_cross_entropy(logits: Any, label: Any, ignore_index: int, ring_id: int, rank: int,
                                     nranks: int) -> tuple[Any, Any]:  # fmt: skip
        return SoftmaxCrossEntropy.apply(logits, label, ignore_index, ring_id, rank, nranks)

    return {
        "c_identity": c_identity,
        "c_split": c_split,
        "c_concat": c_concat,
        "c_softmax_with_cross_entropy": c_softmax_with_cross_entropy,
        "split_layer": Split,
    }


def _patch_kernels() -> None:
    from paddle import _C_ops

    # Reason: Paddle's CPU build registers these four kernels only to raise "not supported on CPU"; the model-parallel
    # layers call them through `paddle._C_ops` at run time, so the module attribute is what they resolve.
    from paddle.distributed.fleet.layers.mpu import mp_ops

    kernels = _kernels()
    # Reason: Paddle's c_split PyLayer gathers the gradient along axis 0 while the kernel splits the last axis, which
    # gives a wrong input gradient (RowParallelLinear with input_is_parallel=False); ours gathers the last axis.
    mp_ops.c_split_eager = kernels.pop("split_layer")
    for name, fn in kernels.items():
        setattr(_C_ops, name, fn)


# ---------------------------------------------------------------------------------------------------------------
# device checks
# ---------------------------------------------------------------------------------------------------------------


def _patch_device_checks() -> None:
    import paddle
    from paddle.distributed import parallel
    from paddle.distributed.fleet.utils import hybrid_parallel_util

    # Reason: ParallelEnv sets `_device_id` only for GPU/XPU/custom devices, and fleet's hybrid setup reads it.
    if not hasattr(parallel.ParallelEnv, "_device_id"):
        parallel.ParallelEnv._device_id = 0

    # Reason: broadcast_input_data asserts a GPU/XPU/custom device and builds its place from "gpu:N"; on CPU the
    # same broadcast over the model-parallel group works with a CPUPlace.
    def broadcast_input_data(hcg: Any, *inputs: Any, **kwargs: Any) -> tuple[Any, Any]:
        place = paddle.CPUPlace()
        if inputs:
            inputs = hybrid_parallel_util._broadcast_nested_data(hcg, "cpu", place, inputs)
        if kwargs:
            kwargs = hybrid_parallel_util._broadcast_nested_data(hcg, "cpu", place, kwargs)
        return inputs, kwargs

    hybrid_parallel_util.broadcast_input_data = broadcast_input_data
    from paddle.distributed.fleet.meta_parallel import tensor_parallel

    tensor_parallel.broadcast_input_data = broadcast_input_data  # it imported the name
    _patch_group_sharded()
    # Reason: the flex-checkpoint resharder (resuming a sharded or split checkpoint) stages every tensor it
    # broadcasts with `.cuda()`, which raises "No available device found" on a CPU build. There the tensor stays
    # where it is: on CPU, the same broadcast over gloo. Only builds without CUDA are touched.
    if not paddle.is_compiled_with_cuda():
        paddle.Tensor.cuda = lambda self, *args, **kwargs: self


class _View:
    """A module seen through a few replaced attributes; everything else is the module's own."""

    def __init__(self, module: Any, **overrides: Any):
        self._module, self._overrides = module, overrides

    def __getattr__(self, name: str) -> Any:
        return self._overrides[name] if name in self._overrides else getattr(self._module, name)


def _patch_group_sharded() -> None:
    """Sharding stages 2 and 3 (`group_sharded_parallel` and its classes) on CPU.

    Each of their modules gets its own view of `paddle` / `core` as its global (nothing else changes):
    - group_sharded.py asserts the device is GPU/XPU/custom: there `cpu` counts as a custom device type, so the
      assert passes and "cpu" is handed on to the stages;
    - the stages, their storage and their gradient clipping parse a device id from `paddle.get_device()` ("gpu:0");
      there "cpu" reads "cpu:0" (and setting "cpu:0" sets "cpu"), which also keeps stage 3's gradient clipping
      off its `.cuda()` branch;
    - the stage-2 optimizer and stage 3 assert `core.is_compiled_with_cuda()` (or XPU) in their constructors and
      nowhere else use it: there it answers True.
    """
    import paddle
    from paddle.base import core
    from paddle.distributed.fleet.meta_parallel.sharding import (
        group_sharded_optimizer_stage2,
        group_sharded_stage2,
        group_sharded_stage3,
        group_sharded_storage,
        group_sharded_utils,
    )
    from paddle.distributed.sharding import group_sharded

    def device_with_id() -> str:
        device = paddle.get_device()
        return "cpu:0" if device == "cpu" else device

    custom = paddle.device.get_all_custom_device_type
    group_sharded.paddle = _View(
        paddle, device=_View(paddle.device, get_all_custom_device_type=lambda: [*custom(), "cpu"])
    )

    def set_device(device: str) -> Any:
        return paddle.set_device("cpu" if device == "cpu:0" else device)

    with_id = _View(
        paddle,
        get_device=device_with_id,
        set_device=set_device,
        device=_View(paddle.device, get_device=device_with_id, set_device=set_device),
    )
    for module in (group_sharded_optimizer_stage2, group_sharded_stage2, group_sharded_stage3, group_sharded_storage,
                   group_sharded_utils):  # fmt: skip
        module.paddle = with_id
    for module in (group_sharded_optimizer_stage2, group_sharded_stage3):
        module.core = _View(core, is_compiled_with_cuda=lambda: True)

    # Reason: ParamStorage.add_rank_params copies each parameter to CPU (`param.cpu()`), clears the parameter, then
    # moves the flat buffer to the GPU. On CPU `.cpu()` returns the parameter itself, so clearing it empties the copy
    # too ("Tensor not initialized"). Its `convert_gpu=False` path (copy in place, no device move) is the CPU one.
    add_rank_params = group_sharded_storage.ParamStorage.add_rank_params

    def add_rank_params_on_cpu(self: Any, trainable_params: Any, param2align: Any, convert_gpu: bool = True) -> Any:
        return add_rank_params(self, trainable_params, param2align, convert_gpu and self._device != "cpu")

    group_sharded_storage.ParamStorage.add_rank_params = add_rank_params_on_cpu

    # Reason: stage 3's `_device2cpu` takes `tensor.cpu()` as a copy and then clears the tensor. On CPU `.cpu()`
    # returns the tensor itself, so the "copy" is emptied too. paddleformers saves every stage-3 checkpoint through
    # `get_all_parameters(convert2cpu=True)`, which gathers each split weight and hands it to the parameter this
    # way ("Tensor ... has not been initialized" at the first checkpoint); offload moves slices alike. On CPU the
    # copy is a real one.
    device2cpu = group_sharded_stage3._device2cpu

    def device2cpu_copying(tensor: Any, convert_dtype: bool = False) -> Any:
        if not tensor.place.is_cpu_place():
            return device2cpu(tensor, convert_dtype)
        if convert_dtype:
            tensor = paddle.cast(tensor, "float32")
        copy = tensor._copy_to(paddle.CPUPlace(), True)
        tensor._clear_data()
        return copy

    group_sharded_stage3._device2cpu = device2cpu_copying


# ---------------------------------------------------------------------------------------------------------------
# pipeline parallel: stage-to-stage send/recv
# ---------------------------------------------------------------------------------------------------------------

_pipeline_installed = False


def _send_async(tensor: Any, group: Any, dst: int, nranks: int = 1, rank_id: int = 0) -> Any:
    return group.process_group.send(tensor, group.get_group_rank(dst), False)


def _recv_async(tensor: Any, group: Any, src: int, nranks: int = 1, rank_id: int = 0) -> Any:
    return group.process_group.recv(tensor, group.get_group_rank(src), False)


def _batch_send_recv(ops: list[Any]) -> None:
    """Start every send and recv of one batch, then wait for all of them."""
    tasks = [op.op(op.tensor, op.group, op.peer, op.nranks, op.rank_id) for op in ops]
    for task in tasks:
        task.wait()


def install_pipeline(device: str, pipeline_degree: int) -> bool:
    """`install` plus the pipeline schedule's stage-to-stage transfers, for `pipeline_parallel_degree` > 1 on CPU.

    Reason: Paddle's 1F1B schedule sends activations and gradients between neighbouring stages as batches of
    send/recv "on the calculation stream", run one after the other; two neighbours that send to each other in the
    same batch (forward to the next stage while the next sends a gradient back) would each block in a blocking
    gloo send. Here every send and recv of a batch is started asynchronously on gloo, then all are waited for.

    Returns:
        True when the stand-ins are in place.
    """
    global _pipeline_installed
    if not install(device, {"pipeline": pipeline_degree}):
        return False
    if not _pipeline_installed:
        from paddle.distributed.fleet.meta_parallel.pp_utils import p2p_communication as p2p

        p2p._send_on_calc_stream = _send_async
        p2p._recv_on_calc_stream = _recv_async
        p2p.batch_send_recv_on_calc_stream = _batch_send_recv
        _pipeline_installed = True
    return True
