"""LoRALinear's one-product-per-side forward equals the per-part formula it replaces, values and gradients."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from paddlemix.peft.layers import LoRALinear


def per_part_update(layer: LoRALinear, x: paddle.Tensor) -> paddle.Tensor:
    """The oracle: scaling x scatter_p(x @ A_p @ B_p), each part's columns put where the fused layer keeps them,
    columns of no part left at zero (the formula of the module docstring, one part at a time)."""
    out = paddle.zeros([*x.shape[:-1], layer.weight.shape[1]], dtype=x.dtype)
    for p in layer.parts:
        update = (x @ layer.lora_A[p] @ layer.lora_B[p]) * layer.scaling  # [..., len(part)]
        cols = paddle.to_tensor(layer.part_columns[p])
        out = out + paddle.zeros_like(out).put_along_axis(
            cols.reshape([1] * (x.ndim - 1) + [-1]).expand(update.shape), update, axis=-1
        )
    return out


# (output width, part columns): an interleaved fused q/k/v with one column of no part, two halves, one whole layer
LAYOUTS = {
    "interleaved_with_gap": (10, {"q_proj": [0, 1, 4, 5], "k_proj": [2, 6], "v_proj": [3, 7, 8]}),
    "halves": (8, {"gate_proj": [0, 1, 2, 3], "up_proj": [4, 5, 6, 7]}),
    "whole": (6, {"o_proj": list(range(6))}),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_forward_and_gradients_equal_the_per_part_formula(layout: str) -> None:
    out_features, parts = LAYOUTS[layout]
    rng = np.random.default_rng(0)
    base = paddle.nn.Linear(12, out_features)
    layer = LoRALinear(base, {k: np.asarray(v) for k, v in parts.items()}, rank=3, alpha=6.0)
    for p in layer.parts:
        layer.lora_A[p].set_value(rng.normal(size=layer.lora_A[p].shape).astype("float32"))
        layer.lora_B[p].set_value(rng.normal(size=layer.lora_B[p].shape).astype("float32"))
    x = paddle.to_tensor(rng.normal(size=(2, 5, 12)).astype("float32"))
    weight = paddle.to_tensor(rng.normal(size=(2, 5, out_features)).astype("float32"))

    def run(fn) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        y = fn()
        (y * weight).sum().backward()
        grads = {
            f"{p}.{m}": getattr(layer, m)[p].grad.numpy().copy() for p in layer.parts for m in ("lora_A", "lora_B")
        }
        layer.clear_gradients()
        return y.numpy(), grads

    fused, fused_grads = run(lambda: layer(x))
    oracle, oracle_grads = run(
        lambda: paddle.nn.functional.linear(x, base.weight, base.bias) + per_part_update(layer, x)
    )
    np.testing.assert_allclose(fused, oracle, rtol=1e-5, atol=1e-5)
    for name in oracle_grads:
        np.testing.assert_allclose(fused_grads[name], oracle_grads[name], rtol=1e-5, atol=1e-5, err_msg=name)
    if layout == "interleaved_with_gap":  # the column of no part gets exactly nothing
        np.testing.assert_array_equal(
            fused[..., 9], paddle.nn.functional.linear(x, base.weight, base.bias).numpy()[..., 9]
        )


def test_fused_b_holds_each_part_at_its_columns() -> None:
    out_features, parts = LAYOUTS["interleaved_with_gap"]
    layer = LoRALinear(paddle.nn.Linear(4, out_features), {k: np.asarray(v) for k, v in parts.items()}, 2, 2.0)
    for i, p in enumerate(layer.parts):
        layer.lora_B[p].set_value(np.full(layer.lora_B[p].shape, i + 1, dtype="float32"))
    b = layer.fused_b().numpy()  # [3 parts * r 2, 10]
    for i, p in enumerate(layer.parts):
        block = b[2 * i : 2 * i + 2]
        assert (block[:, parts[p]] == i + 1).all()
        assert (np.delete(block, parts[p], axis=1) == 0).all()
