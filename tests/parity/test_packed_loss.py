"""MIXToken must not change what is learned: a packed batch gives the token-weighted loss and the gradients of
the same samples run one by one (float32, CPU)."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from paddlemix.auto import AutoModelMIX, AutoProcessorMIX
from paddlemix.datasets.collator import pad_batch
from paddlemix.datasets.conversation import Message, Sample, VideoRef
from paddlemix.datasets.packing import build_pack, pack_batch
from paddlemix.models import ADAPTERS, adapter_for
from paddlemix.processors.chat_template import template_for
from paddlemix.processors.sample_processor import IGNORE_INDEX
from paddlemix.processors.video_sampling import VideoOptions
from paddlemix.testing.synthetic_video import moving_square, write_clip

# model_type -> (tiny folder fixture, parameters whose gradients are compared: head, LLM, projector(s))
FAMILIES = {
    "qwen2_vl": (
        "tiny_qwen2_vl_dir",
        ("lm_head.weight", "model.language_model.layers.0.self_attn.qkv_proj.weight", "model.visual.merger.mlp.0.weight",
         "model.visual.merger.ln_q.bias"),
    ),
    "qwen2_5_vl": (
        "tiny_model_dir",
        ("lm_head.weight", "model.language_model.layers.0.self_attn.qkv_proj.weight", "model.visual.merger.mlp.0.weight"),
    ),
    "qwen3_vl": (
        "tiny_qwen3_vl_dir",
        ("lm_head.weight", "model.language_model.layers.0.self_attn.qkv_proj.weight",
         "model.visual.merger.linear_fc1.weight", "model.visual.deepstack_merger_list.1.linear_fc1.weight"),
    ),
    "paddleocr_vl": (
        "tiny_paddleocr_vl_dir",
        ("lm_head.weight", "model.layers.0.self_attn.q_proj.weight", "mlp_AR.linear_1.weight",
         "visual.vision_model.encoder.layers.0.self_attn.q_proj.weight"),
    ),
}  # fmt: skip


@pytest.fixture(scope="module", params=list(FAMILIES))
def setup(request, shapes_data: dict):
    fixture, params = FAMILIES[request.param]
    model_dir = request.getfixturevalue(fixture)
    processor = AutoProcessorMIX.from_pretrained(model_dir)
    adapter = adapter_for(model_dir)
    encoder = adapter.sample_processor(processor, 512)
    template = template_for(processor)
    model = AutoModelMIX.from_pretrained(model_dir)
    images = sorted(str(p) for p in (shapes_data["train"].parent / "images").glob("train_*.png"))
    positions = adapter.position_fn(model.config)
    return encoder, template, model, positions, images, processor.tokenizer.pad_token_id, params


def samples(kind: str, images: list[str]) -> list[Sample]:
    text = [Sample((Message("user", "What is two plus two?"), Message("assistant", "four"))),
            Sample((Message("user", "Name a colour."), Message("assistant", "red"), Message("user", "Another?"),
                    Message("assistant", "blue")))]  # fmt: skip
    single = [Sample((Message("user", f"<image>What color is the {s}?"), Message("assistant", c)), (images[i],))
              for i, (s, c) in enumerate([("circle", "red"), ("square", "green"), ("triangle", "blue")])]  # fmt: skip
    multi = [Sample((Message("user", "<image><image>Same colour?"), Message("assistant", "no")), tuple(images[3:5])),
             Sample((Message("user", "<image>first<image>second<image>third"), Message("assistant", "three")),
                    tuple(images[5:8]))]  # fmt: skip
    return {"text": text, "single": single, "multi": multi + single[:1] + text[:1]}[kind]


def loss_and_grads(
    model, batches: list[tuple[dict, float]], names: tuple[str, ...]
) -> tuple[float, dict[str, np.ndarray]]:
    """Sum of weight * loss over batches, and the gradients of that sum for the parameters `names`."""
    model.clear_gradients()
    total = 0.0
    for batch, weight in batches:
        loss = model(**{k: paddle.to_tensor(v) for k, v in batch.items()}).loss * weight
        loss.backward()
        total += float(loss)
    params = dict(model.named_parameters())
    grads = {name: params[name].grad for name in names}
    return total, {name: np.zeros(1) if g is None else g.numpy().copy() for name, g in grads.items()}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("clips")
    return [str(write_clip(folder / f"{d}.mp4", moving_square(d, 12, 56), fps=4)) for d in ("left", "right")]


def video_samples(images: list[str], clips: list[str]) -> list[Sample]:
    """Videos (small frames: 56x56), a video with an image, and a text sample, to pack together."""
    small = VideoOptions(min_pixels=3136, max_pixels=3136)
    left, right = VideoRef(clips[0], small), VideoRef(clips[1], VideoOptions(min_pixels=3136, max_pixels=3136, fps=1))
    return [Sample((Message("user", "<video>Which way?"), Message("assistant", "left")), videos=(left,)),
            Sample((Message("user", "<image>then<video>?"), Message("assistant", "right")), (images[0],),
                   videos=(right,)),
            samples("text", images)[0]]  # fmt: skip


@pytest.mark.parametrize("kind", ["text", "single", "multi", "video"])
def test_packed_equals_token_weighted_unpacked(setup, clips, kind: str) -> None:
    encoder, template, model, positions, images, pad_id, names = setup
    if kind == "video" and ADAPTERS[model.config.model_type].video_tokens is None:
        pytest.skip("this family takes images only")
    chosen = video_samples(images, clips) if kind == "video" else samples(kind, images)
    encoded = [encoder(s, template) for s in chosen]
    n_labels = [int((e["labels"] != IGNORE_INDEX).sum()) for e in encoded]
    total = sum(n_labels)
    one_by_one = [(pad_batch([e], pad_id, 1), n / total) for e, n in zip(encoded, n_labels)]
    length = sum(len(e["input_ids"]) for e in encoded) + 5  # a few pad slots as well
    packed = [(pack_batch([build_pack(encoded, positions)], pad_id, length), 1.0)]
    loss_u, grads_u = loss_and_grads(model, one_by_one, names)
    loss_p, grads_p = loss_and_grads(model, packed, names)
    assert abs(loss_p - loss_u) <= 1e-5
    for name in names:
        if kind == "text" and ("visual" in name or "mlp_AR" in name):  # no image, no vision gradient
            continue
        assert np.abs(grads_u[name]).max() > 0, name
        np.testing.assert_allclose(grads_p[name], grads_u[name], atol=1e-6, rtol=1e-4, err_msg=name)


def test_packing_without_isolation_would_differ(setup) -> None:
    """The check above can fail: drop the per-sample mask and positions and the loss moves."""
    encoder, template, model, positions, images, pad_id, _ = setup
    encoded = [encoder(s, template) for s in samples("single", images)]
    packed = pack_batch([build_pack(encoded, positions)], pad_id, sum(len(e["input_ids"]) for e in encoded))
    leaky = {k: v for k, v in packed.items() if k not in ("attn_mask_startend_row_indices", "position_ids")}
    with paddle.no_grad():
        isolated = float(model(**{k: paddle.to_tensor(v) for k, v in packed.items()}).loss)
        mixed = float(model(**{k: paddle.to_tensor(v) for k, v in leaky.items()}).loss)
    assert abs(isolated - mixed) > 1e-4
