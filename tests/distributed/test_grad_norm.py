"""Which gradients a rank counts toward the logged norm, and how its squared sums combine (one process; the sums over
tensor, sharding and pipeline groups run in the 2-process tests: tests/e2e/test_tensor_parallel_runs.py,
tests/e2e/test_sharding.py, tests/distributed/test_pipeline_parallel_runs.py and test_tensor_parallel.py)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import paddle
import pytest

from paddlemix.distributed import grad_norm
from paddlemix.distributed.grad_norm import Gradient, NormGroups
from paddlemix.distributed.memory import optimizer_chain


class Model(paddle.nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.a = paddle.nn.Linear(3, 4)  # weight [3, 4], bias [4]
        self.b = paddle.nn.Linear(4, 2)


def backward(model: Model) -> dict[str, np.ndarray]:
    x = paddle.to_tensor(np.arange(6, dtype="float32").reshape(2, 3) / 5)
    (model.b(model.a(x)) ** 2).sum().backward()
    return {name: p.grad.numpy() for name, p in model.named_parameters()}


def norm_of(arrays) -> float:
    return math.sqrt(sum(float((a.astype("float64") ** 2).sum()) for a in arrays))


def test_one_process_norm_is_the_norm_of_all_gradients() -> None:
    paddle.seed(0)
    model = Model()
    grads = backward(model)
    got = grad_norm.global_norm(grad_norm.step_gradients(model, None), NormGroups())
    assert got == pytest.approx(norm_of(grads.values()), rel=1e-6)


def test_squared_sums_keep_split_slices_apart() -> None:
    grads = [Gradient(paddle.to_tensor([3.0, 4.0]), split=True), Gradient(paddle.to_tensor([[1.0], [2.0]]))]
    split, whole = grad_norm.squared_sums(grads)
    assert float(split) == 25.0 and float(whole) == 5.0
    split, whole = grad_norm.squared_sums([])
    assert float(split) == float(whole) == 0.0


def test_tensor_parallel_slices_are_marked_split() -> None:
    paddle.seed(0)
    model = Model()
    backward(model)
    model.a.weight.is_distributed = True
    marks = [g.split for g in grad_norm.step_gradients(model, None)]
    assert marks == [True, False, False, False]


def test_half_precision_gradients_are_summed_in_float32() -> None:
    grads = [Gradient(paddle.full([4096], 300.0, dtype="float16"))]  # 4096 * 300^2 overflows float16
    assert grad_norm.global_norm(grads, NormGroups()) == pytest.approx(300.0 * 64, rel=1e-6)


def test_master_grad_and_stage3_slices_are_read_first() -> None:
    p = SimpleNamespace(grad=paddle.ones([2]), main_grad=None, bw_storage=None)
    assert float(grad_norm.held_gradient(p).sum()) == 2.0
    p.main_grad = paddle.full([2], 2.0)
    assert float(grad_norm.held_gradient(p).sum()) == 4.0
    p.bw_storage = paddle.full([1], 5.0)  # sharding stage 3: this rank's slice; `grad` was released
    assert float(grad_norm.held_gradient(p).sum()) == 5.0
    assert grad_norm.held_gradient(SimpleNamespace()) is None


def test_tied_pipeline_weight_counts_on_its_first_stage_only() -> None:
    paddle.seed(0)
    model = Model()
    grads = backward(model)
    model.b.weight.is_firstly_shared = False
    got = grad_norm.global_norm(grad_norm.step_gradients(model, None), NormGroups())
    assert got == pytest.approx(norm_of(v for k, v in grads.items() if k != "b.weight"), rel=1e-6)


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_sharded_optimizer_counts_only_the_parameters_its_rank_updates(stage: str) -> None:
    """Stage 1 reduces each gradient onto the rank that updates its parameter; the others keep stale local values,
    which must not count. Stage 2 likewise (group_sharded's optimizer, its own `param2rank`)."""
    paddle.seed(0)
    model = Model()
    grads = backward(model)
    names = {p.name: n for n, p in model.named_parameters()}
    owners = {p.name: i % 2 for i, p in enumerate(model.parameters())}  # a.weight, b.weight on rank 0
    if stage == "stage1":
        sharded = SimpleNamespace(_param2rank=owners, _sharding_rank=1)
        optimizer = SimpleNamespace(_inner_opt=sharded)  # fleet's HybridParallelOptimizer around it
    else:
        optimizer = SimpleNamespace(param2rank=owners, _rank=1, _optim=SimpleNamespace())
    got = grad_norm.global_norm(grad_norm.step_gradients(model, optimizer), NormGroups())
    mine = [grads[names[n]] for n, r in owners.items() if r == 1]
    assert got == pytest.approx(norm_of(mine), rel=1e-6)
    assert got < 0.99 * norm_of(grads.values())


def test_stage2_gradients_count_as_the_step_will_scale_them() -> None:
    """Stage 2 reduces gradients onto their owner as sums and divides them by the degree only inside the step."""
    paddle.seed(0)
    model = Model()
    grads = backward(model)
    model._grad_scale, model._world_size_scaling, model.scale_in_opt = (lambda: None), 0.5, True
    got = grad_norm.global_norm(grad_norm.step_gradients(model, None), NormGroups())
    assert got == pytest.approx(0.5 * norm_of(grads.values()), rel=1e-6)
    model.scale_in_opt = False  # fp16 gradients: divided while reduced
    got = grad_norm.global_norm(grad_norm.step_gradients(model, None), NormGroups())
    assert got == pytest.approx(norm_of(grads.values()), rel=1e-6)
    model._dp_group = SimpleNamespace(nranks=2)  # the data-parallel reduction too happens only in the step
    with pytest.raises(NotImplementedError, match="data parallel"):
        grad_norm.step_gradients(model, None)


def test_stage1_with_split_param_is_refused() -> None:
    optimizer = SimpleNamespace(_inner_opt=SimpleNamespace(_comm_buffer_list=[]))
    with pytest.raises(NotImplementedError, match="split_param"):
        grad_norm.owner_check(optimizer)


def test_optimizer_chain_follows_wrappers_once() -> None:
    inner = SimpleNamespace()
    middle = SimpleNamespace(_optim=inner)
    outer = SimpleNamespace(_inner_opt=middle)
    inner._inner_opt = outer  # a cycle ends the walk
    assert list(optimizer_chain(outer)) == [outer, middle, inner]
    assert list(optimizer_chain(None)) == []


def test_degree_one_needs_no_group() -> None:
    assert grad_norm.hybrid_groups(1, 1, 1) == NormGroups()


def trainer_like(optimizer=None, scale: float | None = None) -> SimpleNamespace:
    args = SimpleNamespace(tensor_model_parallel_size=1, sharding_parallel_size=1, pipeline_model_parallel_size=1,
                           sharding=[])  # fmt: skip
    scaler = SimpleNamespace(_scale=paddle.to_tensor(scale or 1.0))
    return SimpleNamespace(args=args, optimizer=optimizer, do_grad_scaling=scale is not None, scaler=scaler,
                           grad_norm_note=False)  # fmt: skip


def test_trainer_logs_the_norm_without_the_fp16_loss_scale() -> None:
    from paddlemix.trainer.trainer import MIXTrainer

    paddle.seed(0)
    model = Model()
    grads = backward(model)
    expected = norm_of(grads.values())
    assert MIXTrainer.gradient_norm(trainer_like(), model) == pytest.approx(expected, rel=1e-6)
    with paddle.no_grad():
        for p in model.parameters():  # as under fp16 loss scaling, before the scaler's step unscales them
            p.grad.scale_(1024.0)
    assert MIXTrainer.gradient_norm(trainer_like(scale=1024.0), model) == pytest.approx(expected, rel=1e-6)


def test_trainer_leaves_out_a_norm_it_cannot_compute() -> None:
    from paddlemix.trainer.trainer import MIXTrainer

    model = Model()
    backward(model)
    trainer = trainer_like(SimpleNamespace(_inner_opt=SimpleNamespace(_comm_buffer_list=[])))
    assert MIXTrainer.gradient_norm(trainer, model) is None and trainer.grad_norm_note


def test_trainer_leaves_out_the_norm_before_fleet_reduces_fp16_gradients() -> None:
    from paddlemix.trainer.trainer import MIXTrainer

    model = Model()
    backward(model)
    trainer = trainer_like(SimpleNamespace(_sharding_enable=True, _dp_enable=False), scale=1024.0)
    assert MIXTrainer.gradient_norm(trainer, model) is None
