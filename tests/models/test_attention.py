"""The CPU attention of the language models equals paddleformers' eager attention: values and gradients, for
MIXToken packs (FlashMask row indices), padded batches (4-D additive mask), plain causal rows and cached decoding."""

from __future__ import annotations

import attention_checks
import numpy as np
import paddle
import pytest
from attention_checks import Module, run
from paddleformers.nn.attention.eager_attention import eager_attention_forward

from paddlemix.datasets.packing import startend_row_indices
from paddlemix.models import attention


def qkv(batch: int, heads: int, kv_heads: int, length: int, keys: int, dim: int = 8) -> list[paddle.Tensor]:
    rng = np.random.default_rng(0)
    out = []
    for h, n in ((heads, length), (kv_heads, keys), (kv_heads, keys)):
        t = paddle.to_tensor(rng.normal(size=(batch, h, n, dim)).astype("float32"))
        t.stop_gradient = False
        out.append(t)
    return out


def assert_same(ours: tuple, eager: tuple) -> None:
    attention_checks.assert_same(ours, eager, atol=1e-5)


@pytest.mark.parametrize("heads, kv_heads", [(4, 2), (4, 4), (6, 1)])
def test_packs_see_only_their_own_sample(heads: int, kv_heads: int) -> None:
    length = 12
    rows = np.stack([startend_row_indices(lens, length)[None] for lens in ([5, 4], [3, 3, 4])]).astype("int32")
    tensors = qkv(2, heads, kv_heads, length, length)
    indices = paddle.to_tensor(rows)  # [B, 1, L]; row 1 ends in 2 padding slots
    ours = run(attention.sdpa_attention_forward, tensors, attn_mask_startend_row_indices=indices)
    eager = run(eager_attention_forward, tensors, attn_mask_startend_row_indices=indices)
    assert_same(ours, eager)


def test_packed_sample_equals_the_sample_alone() -> None:
    """The second sample of a pack attends exactly as it would in a row of its own."""
    q, k, v = qkv(1, 4, 2, 10, 10)
    indices = paddle.to_tensor(startend_row_indices([6, 4], 10)[None, None].astype("int32"))
    packed, _ = attention.sdpa_attention_forward(Module(2), q, k, v, attn_mask_startend_row_indices=indices)
    alone, _ = attention.sdpa_attention_forward(Module(2), q[:, :, 6:], k[:, :, 6:], v[:, :, 6:])
    np.testing.assert_allclose(packed.numpy()[:, 6:], alone.numpy(), rtol=1e-5, atol=1e-6)


def test_padded_batch_with_additive_mask() -> None:
    length = 8
    padding = np.ones((2, length), dtype="float32")
    padding[1, 5:] = 0
    causal = np.tril(np.ones((length, length), dtype="float32"))
    allowed = causal[None] * padding[:, None, :]  # [B, L, S]
    allowed[:, np.arange(length), np.arange(length)] = 1  # padded rows see themselves (no empty softmax)
    mask = paddle.to_tensor(np.where(allowed, 0.0, np.finfo("float32").min)[:, None].astype("float32"))
    tensors = qkv(2, 4, 2, length, length)
    assert_same(run(attention.sdpa_attention_forward, tensors, attention_mask=mask),
                run(eager_attention_forward, tensors, attention_mask=mask))  # fmt: skip


def test_no_mask_is_causal_and_aligned_to_the_last_key() -> None:
    """No mask: causal over a full row, and for 3 new queries after 5 cached keys each sees the cache and its past."""
    for length, keys in ((7, 7), (3, 8)):
        tensors = qkv(1, 4, 2, length, keys)
        allowed = np.tril(np.ones((length, keys)), k=keys - length)
        mask = paddle.to_tensor(np.where(allowed, 0.0, np.finfo("float32").min)[None, None].astype("float32"))
        assert_same(run(attention.sdpa_attention_forward, tensors),
                    run(eager_attention_forward, tensors, attention_mask=mask))  # fmt: skip


def test_the_mask_is_built_once_per_batch_and_renewed_for_the_next() -> None:
    q, k, v = qkv(1, 2, 1, 6, 6)
    first = paddle.to_tensor(startend_row_indices([3, 3], 6)[None, None].astype("int32"))
    second = paddle.to_tensor(startend_row_indices([6], 6)[None, None].astype("int32"))
    a, _ = attention.sdpa_attention_forward(Module(2), q, k, v, attn_mask_startend_row_indices=first)
    shared = attention._cache["mask"]
    attention.sdpa_attention_forward(Module(2), q, k, v, attn_mask_startend_row_indices=first)
    assert attention._cache["mask"] is shared  # the next layer reuses it
    b, _ = attention.sdpa_attention_forward(Module(2), q, k, v, attn_mask_startend_row_indices=second)
    assert not np.allclose(a.numpy()[:, 3:], b.numpy()[:, 3:])  # one sample of 6 sees what two of 3 did not


@pytest.mark.parametrize("folder", ["tiny_model_dir", "tiny_qwen2_vl_dir", "tiny_qwen3_vl_dir"])
def test_cpu_models_use_it_with_the_eager_logits_on_a_pack(request, folder: str) -> None:
    """A Qwen-VL model loaded for CPU runs this attention; on a two-sample pack its logits equal eager's."""
    from paddlemix.auto import AutoModelMIX
    from paddlemix.models import adapter_for

    path = request.getfixturevalue(folder)
    assert adapter_for(path).load_config(path, "cpu").text_config._attn_implementation == attention.NAME
    assert adapter_for(path).load_config(path, "gpu").text_config._attn_implementation != attention.NAME
    model = AutoModelMIX.from_pretrained(path)
    model.eval()
    ids = paddle.to_tensor(np.arange(3, 19)[None])  # two text samples of 10 and 6 tokens in one row
    positions = np.concatenate([np.arange(10), np.arange(6)])
    inputs = {
        "input_ids": ids,
        "position_ids": paddle.to_tensor(np.tile(positions, (3, 1, 1))),
        "attn_mask_startend_row_indices": paddle.to_tensor(
            startend_row_indices([10, 6], 16)[None, None].astype("int32")
        ),
    }
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return attention.sdpa_attention_forward(*args, **kwargs)

    from paddleformers.nn.attention.interface import AttentionInterface

    AttentionInterface.register(attention.NAME, counted)
    try:
        with paddle.no_grad():
            ours = model(**inputs, use_cache=False).logits.numpy()
            assert len(calls) == model.config.text_config.num_hidden_layers  # every layer ran it
            for layer in model.sublayers():  # the same model with paddleformers' eager attention
                if getattr(getattr(layer, "config", None), "_attn_implementation", None) == attention.NAME:
                    layer.config._attn_implementation = "eager"
            eager = model(**inputs, use_cache=False).logits.numpy()
            assert len(calls) == model.config.text_config.num_hidden_layers
    finally:
        attention.register()
    np.testing.assert_allclose(ours, eager, rtol=1e-4, atol=1e-5)
