"""Shared by the attention tests: call an attention function the way paddleformers' layers do, and compare its
output and gradients with paddleformers' eager function."""

from __future__ import annotations

import numpy as np
import paddle


class Module:
    """What the attention functions read from their calling layer."""

    def __init__(self, groups: int = 1):
        self.num_key_value_groups = groups
        self.training = True


def run(fn, tensors: list[paddle.Tensor], **kwargs) -> tuple[np.ndarray, list[np.ndarray]]:
    """Output and gradients of q, k, v for a fixed random weighting of the output (float32)."""
    q, k, v = tensors
    out, _ = fn(Module(q.shape[1] // k.shape[1]), q, k, v, scaling=q.shape[-1] ** -0.5, **kwargs)
    weight = paddle.to_tensor(np.random.default_rng(1).normal(size=out.shape).astype("float32"))
    (out * weight).sum().backward()
    grads = [t.grad.numpy().copy() for t in tensors]
    for t in tensors:
        t.clear_gradient()
    return out.numpy(), grads


def assert_same(ours: tuple, eager: tuple, atol: float) -> None:
    """Outputs within rtol 1e-5, gradients within rtol 1e-4, both within `atol`."""
    np.testing.assert_allclose(ours[0], eager[0], rtol=1e-5, atol=atol)
    for a, b in zip(ours[1], eager[1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=atol)
