"""Tiny fleet programs run by test_cpu_collectives.py, once as one plain process and once as 2 CPU processes through
paddle.distributed.launch with the stand-ins installed. Each prints `RESULT <json>`; the test compares the two.

    python fleet_toys.py tp|pp|sharding|collectives
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np
import paddle
import paddle.distributed as dist
from paddle.distributed import fleet

WORLD = int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))
RNG = np.random.default_rng(0)


def init(**degrees: int) -> None:
    from paddlemix.distributed import cpu_collectives

    assert cpu_collectives.install("cpu", {}, force=True)
    strategy = fleet.DistributedStrategy()
    strategy.hybrid_configs = {"dp_degree": 1, "mp_degree": 1, "pp_degree": 1, "sharding_degree": 1, **degrees}
    if degrees.get("pp_degree", 1) > 1:
        strategy.pipeline_configs = {"accumulate_steps": 2, "micro_batch_size": 4}
    fleet.init(is_collective=True, strategy=strategy)


def my_slice(w: np.ndarray, axis: int) -> np.ndarray:
    n = w.shape[axis] // WORLD
    rank = dist.get_rank() if WORLD > 1 else 0
    return np.take(w, range(rank * n, (rank + 1) * n), axis=axis)


def gathered(t: paddle.Tensor, axis: int) -> np.ndarray:
    """The full tensor from every rank's slice along `axis` (the tensor itself in one process)."""
    if WORLD == 1:
        return t.numpy()
    parts: list[paddle.Tensor] = []
    dist.all_gather(parts, t)
    return np.concatenate([p.numpy() for p in parts], axis=axis)


def tensor_parallel() -> dict:
    """Vocab-parallel embedding, column + row parallel MLP, a column-parallel head into ParallelCrossEntropy, and a
    gathered head output (c_identity, c_split via the row layer, c_concat, c_softmax_with_cross_entropy)."""
    from paddle.distributed.fleet.meta_parallel import (
        ColumnParallelLinear,
        ParallelCrossEntropy,
        RowParallelLinear,
        VocabParallelEmbedding,
    )

    vocab, hidden, ffn = 8, 6, 4
    emb_w, w1, w2, wo = (RNG.standard_normal(s).astype("float32") for s in ((vocab, hidden), (hidden, ffn),
                                                                            (ffn, hidden), (hidden, vocab)))  # fmt: skip
    ids = paddle.to_tensor(RNG.integers(0, vocab, (2, 3)))
    labels = RNG.integers(0, vocab, (2, 3, 1))
    labels[0, 0, 0] = -100  # ignored position: no loss, no gradient
    labels = paddle.to_tensor(labels)
    if WORLD > 1:
        init(mp_degree=WORLD)
        emb = VocabParallelEmbedding(vocab, hidden)
        emb.weight.set_value(my_slice(emb_w, 0))
        up = ColumnParallelLinear(hidden, ffn, has_bias=False, gather_output=True)
        up.weight.set_value(my_slice(w1, 1))
        down = RowParallelLinear(ffn, hidden, has_bias=False, input_is_parallel=False)
        down.weight.set_value(my_slice(w2, 0))
        head = ColumnParallelLinear(hidden, vocab, has_bias=False, gather_output=False)
        head.weight.set_value(my_slice(wo, 1))
        loss_fn = ParallelCrossEntropy(ignore_index=-100)
        full_head = ColumnParallelLinear(hidden, vocab, has_bias=False, gather_output=True)
        full_head.weight.set_value(my_slice(wo, 1))
    else:
        emb = paddle.nn.Embedding(vocab, hidden)
        emb.weight.set_value(emb_w)
        up = paddle.nn.Linear(hidden, ffn, bias_attr=False)
        up.weight.set_value(w1)
        down = paddle.nn.Linear(ffn, hidden, bias_attr=False)
        down.weight.set_value(w2)
        head = full_head = paddle.nn.Linear(hidden, vocab, bias_attr=False)
        head.weight.set_value(wo)

        def loss_fn(logits: paddle.Tensor, y: paddle.Tensor) -> paddle.Tensor:
            return paddle.nn.functional.cross_entropy(logits, y, reduction="none", ignore_index=-100)

    x = emb(ids)
    h = down(paddle.nn.functional.relu(up(x)))
    loss = loss_fn(head(h), labels).sum() / 5
    total = full_head(h).sum()
    (loss + 0.01 * total).backward()
    return {
        "loss": float(loss),
        "total": float(total),
        "grad_emb": gathered(emb.weight.grad, 0).tolist(),
        "grad_up": gathered(up.weight.grad, 1).tolist(),
        "grad_down": gathered(down.weight.grad, 0).tolist(),
    }


def pipeline_parallel() -> dict:
    """Four tanh layers in 2 stages, 2 micro-batches per step (p2p send/recv), 3 SGD steps."""
    from paddle.distributed.fleet.meta_parallel import LayerDesc, PipelineLayer

    weights = [RNG.standard_normal((4, 4)).astype("float32") * 0.5 for _ in range(4)]
    x, y = (paddle.to_tensor(RNG.standard_normal((8, 4)).astype("float32")) for _ in range(2))

    class Layer(paddle.nn.Layer):
        def __init__(self, i: int):
            super().__init__()
            self.linear = paddle.nn.Linear(4, 4, bias_attr=False)
            self.linear.weight.set_value(weights[i])

        def forward(self, h: paddle.Tensor) -> paddle.Tensor:
            return paddle.tanh(self.linear(h))

    def loss_fn(out: paddle.Tensor, target: paddle.Tensor) -> paddle.Tensor:
        return ((out - target) ** 2).mean()

    losses = []
    if WORLD > 1:
        init(pp_degree=WORLD)
        model = PipelineLayer([LayerDesc(Layer, i) for i in range(4)], num_stages=WORLD, loss_fn=loss_fn)
        opt = fleet.distributed_optimizer(paddle.optimizer.SGD(0.1, parameters=model.parameters()))
        model = fleet.distributed_model(model)
        for _ in range(3):
            losses.append(float(model.train_batch([x, y], opt)))
    else:
        model = paddle.nn.Sequential(*[Layer(i) for i in range(4)])
        opt = paddle.optimizer.SGD(0.1, parameters=model.parameters())
        for _ in range(3):
            loss = (loss_fn(model(x[:4]), y[:4]) + loss_fn(model(x[4:]), y[4:])) / 2
            loss.backward()
            opt.step()
            opt.clear_grad()
            losses.append(float(loss))
    return {"loss": losses}


def sharding() -> dict:
    """group_sharded_parallel stage 2 ("os_g") and stage 3 ("p_g_os") with global-norm clipping, 3 AdamW steps,
    each rank on its half of the batch. The middle layer has more than 2^20 weights, so stage 3 really splits it
    (smaller tensors stay whole); the final weights are compared too (stage 3's gathered whole by
    `paddlemix.distributed.stage3.whole_parameters`), and each rank's parameter and
    optimizer bytes are returned as `bytes_*`; the step's global gradient norm (`paddlemix.distributed.grad_norm`)
    equals one process's."""
    from paddlemix.distributed import grad_norm, stage3
    from paddlemix.distributed.memory import optimizer_state_bytes, parameter_bytes

    sizes = [(4, 1024), (1024, 1025), (1025, 4)]
    weights = [RNG.standard_normal(s).astype("float32") * (0.5 / np.sqrt(s[0])) for s in sizes]
    x, y = RNG.standard_normal((8, 4)).astype("float32"), RNG.standard_normal((8, 4)).astype("float32")
    if WORLD > 1:
        init(sharding_degree=WORLD)
        rank = dist.get_rank()
        x, y = x[rank * 4 : (rank + 1) * 4], y[rank * 4 : (rank + 1) * 4]
    out = {}
    for level in ("os_g", "p_g_os"):
        model = paddle.nn.Sequential(*[paddle.nn.Linear(*s) for s in sizes])
        for layer, w in zip(model, weights):
            layer.weight.set_value(w)
            layer.bias.set_value(np.zeros(w.shape[1], "float32"))
        clip = paddle.nn.ClipGradByGlobalNorm(0.5)
        opt = paddle.optimizer.AdamW(0.01, parameters=model.parameters(), grad_clip=clip)
        if WORLD > 1:
            from paddle.distributed.sharding import group_sharded_parallel

            group = fleet.get_hybrid_communicate_group().get_sharding_parallel_group()
            model, opt, _ = group_sharded_parallel(model, opt, level=level, group=group)
        losses, norms = [], []
        groups = grad_norm.NormGroups(sharding=group if WORLD > 1 else None)
        for _ in range(3):
            loss = ((model(paddle.to_tensor(x)) - paddle.to_tensor(y)) ** 2).mean()
            loss.backward()
            norms.append(grad_norm.global_norm(grad_norm.step_gradients(model, opt if WORLD > 1 else None), groups))
            opt.step()
            opt.clear_grad()
            losses.append(float(loss))
        out[level] = mean_over_ranks(losses)
        out[f"grad_norm_{level}"] = norms  # the global norm before clipping, as one process computes it
        out[f"bytes_{level}"] = [parameter_bytes(model), optimizer_state_bytes(opt)]
        with stage3.whole_parameters(model):  # stage 3's split weight whole again, on every rank
            out[f"weights_{level}"] = [float(p.sum()) for p in model.parameters()]
            out[f"weights_abs_{level}"] = [float(p.abs().sum()) for p in model.parameters()]
    out.update(stage3_checkpoints(x, y, group if WORLD > 1 else None))
    return out


def mean_over_ranks(values: list[float]) -> list[float]:
    """Each rank's per-step losses of its half of the batch -> the step's loss over the whole batch."""
    if WORLD == 1:
        return values
    out = []
    for value in values:
        t = paddle.to_tensor(value)
        dist.all_reduce(t)
        out.append(float(t) / WORLD)
    return out


def stage3_checkpoints(x: np.ndarray, y: np.ndarray, group: Any) -> dict:
    """Stage 3 through paddleformers' checkpoint moves, on a model with a frozen and a trainable weight that it
    splits (over 2^20 elements each): after steps 1 and 2 every weight is gathered whole as paddleformers' save
    does (`get_all_parameters`, inside `stage3.checkpoint_ready`) and training goes on; at the end the trainable
    tensors saved after step 1 are loaded back as a LoRA resume or `load_best_model_at_end` does
    (`stage3.loading_slices`, `stage3.keep_frozen_slices`). The saved weights, the losses after each save and
    the loaded weights equal one process's."""
    from paddlemix.distributed import stage3

    sizes = [(4, 1024), (1024, 1025), (1025, 1024), (1024, 4)]  # the middle two are split; the first is frozen
    weights = [RNG.standard_normal(s).astype("float32") * (0.5 / np.sqrt(s[0])) for s in sizes]
    model = paddle.nn.Sequential(*[paddle.nn.Linear(*s) for s in sizes])
    for layer, w in zip(model, weights):
        layer.weight.set_value(w)
        layer.bias.set_value(np.zeros(w.shape[1], "float32"))
    for p in model[1].parameters():
        p.stop_gradient = True
    # SGD: Adam would turn the summation-order noise of near-zero gradients into whole +-lr steps
    opt = paddle.optimizer.SGD(0.1, parameters=[p for p in model.parameters() if not p.stop_gradient])
    if group is not None:
        from paddle.distributed.sharding import group_sharded_parallel

        model, opt, _ = group_sharded_parallel(model, opt, level="p_g_os", group=group)
    losses, saved = [], []
    for step in range(3):
        loss = ((model(paddle.to_tensor(x)) - paddle.to_tensor(y)) ** 2).mean()
        loss.backward()
        opt.step()
        opt.clear_grad()
        losses.append(float(loss))
        if step < 2:  # a checkpoint after steps 1 and 2
            with stage3.checkpoint_ready(model):
                if group is not None:
                    model.get_all_parameters(convert2cpu=True, with_freeze_param=True)
                saved.append([p.numpy().copy() for p in model.parameters()])
    with stage3.loading_slices(model):  # the trainable tensors of the first checkpoint, as a LoRA one holds
        for p, value in zip(model.parameters(), saved[0]):
            if not p.stop_gradient:
                p.set_value(value)
        stage3.keep_frozen_slices(model)
    with stage3.whole_parameters(model):
        loaded = [float(p.sum()) for p in model.parameters()]
    return {
        "checkpoint_losses": mean_over_ranks(losses),
        "checkpoint_saved": [[float(v.sum()) for v in values] for values in saved],
        "checkpoint_saved_abs": [[float(np.abs(v).sum()) for v in values] for values in saved],
        "checkpoint_loaded": loaded,
    }


def collectives() -> dict:
    """reduce_scatter, all_to_all (list, tensor and uneven single forms) and calc-stream all_reduce / broadcast on
    the stand-ins; every rank's results are gathered, so each rank returns the whole picture. One process computes
    the same picture with numpy."""
    n = 2
    data = [np.arange(8, dtype="float32").reshape(4, 2) * (r + 1) for r in range(n)]  # rank r's input
    sizes = [[1, 3], [3, 1]]  # all_to_all_single: rank r sends sizes[r][j] rows to rank j (uneven, 4 received)
    if WORLD == 1:
        out = {"reduce_scatter": [], "all_to_all": [], "all_to_all_single": []}
        for r in range(n):
            out["reduce_scatter"].append(np.split(sum(data), n)[r].tolist())
            out["all_to_all"].append(np.concatenate([np.split(data[j], n)[r] for j in range(n)]).tolist())
            pieces = [np.split(data[j], np.cumsum(sizes[j])[:-1])[r] for j in range(n)]
            out["all_to_all_single"].append(np.concatenate(pieces).tolist())
        out["calc_all_reduce"] = sum(data).tolist()
        out["calc_broadcast"] = data[1].tolist()
        return out
    init(sharding_degree=WORLD)
    from paddle.distributed import stream

    rank = dist.get_rank()
    mine = paddle.to_tensor(data[rank])
    results = {}
    scattered = paddle.empty([2, 2], dtype="float32")
    dist.reduce_scatter(scattered, list(paddle.split(mine, n)))
    results["reduce_scatter"] = scattered
    received: list[paddle.Tensor] = []
    dist.alltoall(received, list(paddle.split(mine, n)))
    results["all_to_all"] = paddle.concat(received)
    incoming = [sizes[j][rank] for j in range(n)]
    single = paddle.empty([sum(incoming), 2], dtype="float32")
    dist.alltoall_single(single, mine, in_split_sizes=sizes[rank], out_split_sizes=incoming)
    results["all_to_all_single"] = single
    out = {}
    for key, value in results.items():
        parts: list[paddle.Tensor] = []
        dist.all_gather(parts, value.reshape([-1]))
        out[key] = [p.numpy().reshape(-1, 2).tolist() for p in parts]
    total = mine.clone()
    stream.all_reduce(total, use_calc_stream=True)
    out["calc_all_reduce"] = total.numpy().tolist()
    shared = mine.clone()
    stream.broadcast(shared, src=1, use_calc_stream=True)
    out["calc_broadcast"] = shared.numpy().tolist()
    return out


if __name__ == "__main__":
    paddle.set_device("cpu")
    paddle.seed(0)
    toys = {"tp": tensor_parallel, "pp": pipeline_parallel, "sharding": sharding, "collectives": collectives}
    result = toys[sys.argv[1]]()
    print("RESULT", json.dumps(result), flush=True)
