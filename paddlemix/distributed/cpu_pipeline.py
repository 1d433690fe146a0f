"""CPU stand-ins for the pieces of Paddle's pipeline-parallel engine that its CPU build lacks (gloo).

Paddle's pipeline schedule moves activations and their gradients between neighbouring stages with
`send_on_calc_stream` / `recv_on_calc_stream`, which gloo does not implement, and reads `ParallelEnv._device_id`,
which a CPU process never sets. Here those calls are routed to gloo's ordinary asynchronous send and recv: every
send and recv of one batch is started first, then all are waited for, so two neighbours that send to each other at
the same time cannot block one another. Slow stand-ins for checking a multi-device configuration on CPU processes,
not for speed; they are installed only when `device` is `cpu` and `pipeline_parallel_degree` is above 1, and
nothing on GPU or NPU ever imports this module.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

_INSTALLED = False


def _device_id(self: Any) -> int:
    """`ParallelEnv.device_id` on a CPU process: there is no device, the pipeline layer only records it."""
    return getattr(self, "_device_id", 0)


def _send(tensor: Any, group: Any, dst: int, nranks: int = 1, rank_id: int = 0) -> Any:
    """Start sending `tensor` to global rank `dst` of `group`; returns the gloo task."""
    return group.process_group.send(tensor, group.get_group_rank(dst), False)


def _recv(tensor: Any, group: Any, src: int, nranks: int = 1, rank_id: int = 0) -> Any:
    """Start receiving into `tensor` from global rank `src` of `group`; returns the gloo task."""
    return group.process_group.recv(tensor, group.get_group_rank(src), False)


def _batch_send_recv(ops: list[Any]) -> None:
    """Start every send and recv of the batch, then wait for all of them (Paddle's version runs them one by one on
    the device stream, which gloo has not)."""
    tasks = [op.op(op.tensor, op.group, op.peer, op.nranks, op.rank_id) for op in ops]
    for task in tasks:
        task.wait()


def install_pipeline_stand_ins() -> None:
    """Route the pipeline schedule's device-stream send/recv to gloo's asynchronous ones (once per process)."""
    global _INSTALLED
    if _INSTALLED:
        return
    import paddle.distributed as dist
    from paddle.distributed.fleet.meta_parallel.pp_utils import p2p_communication as p2p

    dist.ParallelEnv.device_id = property(_device_id)
    p2p._send_on_calc_stream = _send
    p2p._recv_on_calc_stream = _recv
    p2p.batch_send_recv_on_calc_stream = _batch_send_recv
    _INSTALLED = True
    logger.info(
        "pipeline parallel on CPU: the stage-to-stage send/recv runs on slow gloo stand-ins, for checking a "
        "multi-device configuration, not for speed"
    )
