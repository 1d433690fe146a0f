"""The pipeline description of the Qwen-VL families (paddlemix/distributed/pipeline.py), in one process: the stage
split, the names each stage maps to, and the stages run one after the other giving the one-process model's logits
(padded rows with images, and MIXToken packs), plus the refusals before any model loads."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import paddle
import pytest

from paddlemix import arguments
from paddlemix.auto import AutoModelMIX, AutoProcessorMIX
from paddlemix.datasets.collator import pad_batch
from paddlemix.datasets.conversation import Message, Sample
from paddlemix.datasets.packing import build_pack, pack_batch
from paddlemix.distributed.pipeline import (
    DecoderStage,
    EmbeddingStage,
    FirstStage,
    HeadStage,
    NormStage,
    TokenLoss,
    _prepare_inputs,
    stage_bounds,
    stage_descs,
    tied_head,
)
from paddlemix.models import ADAPTERS, adapter_for
from paddlemix.processors.chat_template import template_for
from paddlemix.testing.tiny_qwen2_vl import build_tiny_qwen2_vl
from paddlemix.trainer.chunked_loss import token_loss_sum
from paddlemix.utils.errors import UserError

FAMILIES = {"qwen2_5_vl": "tiny_model_dir", "qwen2_vl": "tiny_qwen2_vl_dir", "qwen2_vl_tied": "tied_qwen2_vl_dir"}


@pytest.fixture(scope="module")
def tied_qwen2_vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen2-VL whose head is its embedding matrix (as Qwen2-VL-2B); the checkpoint has no lm_head."""
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("tied_qwen2_vl"), tie_word_embeddings=True)


@pytest.mark.parametrize(
    ("layers", "stages", "expected"),
    [
        (2, 2, [(0, 1), (1, 2)]),
        (28, 4, [(0, 7), (7, 14), (14, 21), (21, 28)]),
        (36, 6, [(0, 6), (6, 12), (12, 18), (18, 24), (24, 30), (30, 36)]),
    ],
)
def test_stage_bounds_split_layers_evenly(layers: int, stages: int, expected: list[tuple[int, int]]) -> None:
    assert stage_bounds(layers, stages) == expected
    with pytest.raises(ValueError, match="do not divide"):
        stage_bounds(layers + 1, stages)


def test_paddle_segments_like_stage_bounds() -> None:
    """Paddle's `layer:DecoderStage` segmentation (what PipelineLayer uses) puts the first stage's vision tower and
    embeddings, and the last stage's norm and head, around the decoder layers that `stage_bounds` gives."""
    from paddle.distributed.fleet.meta_parallel.parallel_layers.pp_layers import SegmentLayers

    for layers, stages, tied in ((2, 2, False), (28, 4, True), (36, 6, False)):
        text = SimpleNamespace(num_hidden_layers=layers, tie_word_embeddings=tied)
        descs = stage_descs(SimpleNamespace(text_config=text), None)
        assert [type(d).__name__ for d in (descs[0], descs[-1])] == ["SharedLayerDesc" if tied else "LayerDesc"] * 2
        parts = SegmentLayers(descs, num_parts=stages, method="layer:DecoderStage").do_segment()
        # layers: 0 embeddings, 1 vision + merge + positions, 2 .. layers + 1 decoders, then norm and head
        decoders = [(max(a - 2, 0), min(b - 2, layers)) for a, b in zip(parts[:-1], parts[1:])]
        assert decoders == stage_bounds(layers, stages)
        assert parts[0] == 0 and parts[1] >= 3 and parts[-1] == layers + 4


def test_prepare_inputs_keeps_one_entry_per_micro_batch() -> None:
    a = {"input_ids": 1, "labels": 2, "attention_mask": 3, "pixel_values": 4, "image_grid_thw": 5}
    b = {"input_ids": 6, "labels": 7, "attention_mask": 8}
    first, labels = _prepare_inputs([a, b])
    assert labels == [2, 7]
    assert (
        first["input_ids"] == [1, 6] and first["pixel_values"] == [4, None] and first["position_ids"] == [None, None]
    )


def test_token_loss_is_sum_over_divisor() -> None:
    logits = paddle.to_tensor(np.random.default_rng(0).normal(size=(1, 4, 7)).astype("float32"))
    labels = paddle.to_tensor([[1, -100, 3, 6]])
    loss = TokenLoss()
    loss.divisor = 4.0
    value = float(loss(logits, labels))
    expected = float(token_loss_sum(logits, labels))
    assert value == pytest.approx(expected / 4.0, rel=1e-6)
    assert loss.take_sums() == [pytest.approx(expected, rel=1e-6)] and loss.take_sums() == []


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, shapes_data: dict):
    model_dir = request.getfixturevalue(FAMILIES[request.param])
    processor = AutoProcessorMIX.from_pretrained(model_dir)
    adapter = adapter_for(model_dir)
    model = AutoModelMIX.from_pretrained(model_dir)
    model.eval()
    config = model.config
    parts = adapter.pipeline()
    embeddings = EmbeddingStage(config, parts)
    stages = [embeddings, FirstStage(config, parts)]
    stages += [DecoderStage(config, parts, i) for i in range(config.text_config.num_hidden_layers)]
    tied = config.text_config.tie_word_embeddings
    stages += [NormStage(config, parts), embeddings if tied else HeadStage(config)]
    full = model.state_dict()
    for stage in stages:
        for name, param in stage.state_dict().items():
            ours = next(o + name[len(local) :] for local, o in stage.PREFIXES if name.startswith(local))
            param.set_value(full[ours])
        stage.eval()
    images = sorted(str(p) for p in (shapes_data["train"].parent / "images").glob("train_*.png"))
    encoder = adapter.sample_processor(processor, 512)
    template = template_for(processor)
    samples = [
        Sample((Message("user", "<image>What color is the circle?"), Message("assistant", "red")), (images[0],)),
        Sample((Message("user", "Name a colour."), Message("assistant", "blue and a long answer, more tokens"))),
        Sample((Message("user", "<image><image>Same colour?"), Message("assistant", "no")), tuple(images[1:3])),
    ]
    encoded = [encoder(s, template) for s in samples]
    pad_id = processor.tokenizer.pad_token_id
    return model, stages, encoded, pad_id, adapter.position_fn(config)


def run_stages(stages: list, batch: dict) -> np.ndarray:
    inputs = {k: paddle.to_tensor(v) for k, v in batch.items() if k != "labels"}
    args = stages[0](inputs)
    for stage in stages[1:-1]:
        args = stage(args)
    head = stages[-1]
    return (tied_head(head, args) if head is stages[0] else head(args)).numpy()


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_stages_in_sequence_equal_the_one_process_model(family, packed: bool) -> None:
    """The stages give the model's own logits: images merged, 3-D positions carried, and the causal (per-sample,
    for packs) mask rebuilt on every decoder stage. Without the mask (what paddleformers' pipeline decoders pass
    to eager attention) the logits differ, so this comparison can fail."""
    model, stages, encoded, pad_id, positions = family
    if packed:
        batch = pack_batch([build_pack(encoded, positions)], pad_id, sum(len(e["input_ids"]) for e in encoded) + 3)
    else:
        batch = pad_batch(encoded, pad_id, 8)
    with paddle.no_grad():
        expected = model(**{k: paddle.to_tensor(v) for k, v in batch.items() if k != "labels"}).logits.numpy()
        got = run_stages(stages, batch)
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
        hidden, pos, mask = stages[1](stages[0]({k: paddle.to_tensor(v) for k, v in batch.items() if k != "labels"}))
        layer = stages[2]
        unmasked = layer.layer(hidden, attention_mask=None, position_embeddings=layer.rotary(hidden, pos))[0]
        assert np.abs(unmasked.numpy() - layer((hidden, pos, mask))[0].numpy()).max() > 1e-4


def test_stage_prefixes_cover_every_one_process_parameter(family) -> None:
    model, stages, *_ = family
    names = set()
    for stage in stages:
        for name in stage.state_dict():
            names.add(next(o + name[len(local) :] for local, o in stage.PREFIXES if name.startswith(local)))
    expected = set(model.state_dict())
    if model.config.text_config.tie_word_embeddings:
        expected.discard("lm_head.weight")  # the embeddings themselves (one tensor in the saved model)
    assert names == expected


def write_args(tmp_path: Path, model_dir: Path, shapes: Path, **extra) -> Path:
    args = {
        "model_name_or_path": str(model_dir),
        "dataset": {"train": [{"name": "chatml_dataset", "data_files": str(shapes)}]},
        "output_dir": str(tmp_path / "out"),
        "device": "cpu",
        "pipeline_parallel_degree": 2,
        **extra,
    }
    path = tmp_path / "args.json"
    path.write_text(json.dumps(args))
    return path


@pytest.mark.parametrize("fixture", ["tiny_llava_dir", "tiny_qwen3_vl_dir"])
def test_family_without_pipeline_description_is_refused_before_loading(
    tmp_path: Path, shapes_data: dict, fixture: str, request, monkeypatch
) -> None:
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "2")
    model_dir = request.getfixturevalue(fixture)
    with pytest.raises(UserError) as err:
        arguments.load(write_args(tmp_path, model_dir, shapes_data["train"]))
    message = str(err.value)
    assert "has no pipeline description" in message and "pipeline_parallel_degree" in message
    assert "data parallelism" in message and "sharding" in message and "tensor_parallel_degree" in message
    with_pp = sorted(t for t, a in ADAPTERS.items() if a.pipeline is not None)
    assert with_pp == ["qwen2_5_vl", "qwen2_vl"] and ", ".join(with_pp) in message


def test_pipeline_with_lora_or_eval_is_refused_in_one_message(tmp_path: Path, tiny_model_dir: Path,
                                                             shapes_data: dict, monkeypatch) -> None:  # fmt: skip
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "2")
    path = write_args(tmp_path, tiny_model_dir, shapes_data["train"], lora=True, do_eval=True,
                      dataset={"train": [{"name": "chatml_dataset", "data_files": str(shapes_data["train"])}],
                               "eval": [{"name": "chatml_dataset", "data_files": str(shapes_data["eval"])}]})  # fmt: skip
    with pytest.raises(UserError) as err:
        arguments.load(path)
    assert '"lora": true is not supported' in str(err.value) and '"do_eval": true is not supported' in str(err.value)


def test_pipeline_arguments_pass_with_a_described_family(tmp_path: Path, tiny_model_dir: Path, shapes_data: dict,
                                                        monkeypatch) -> None:  # fmt: skip
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "2")
    args = arguments.load(write_args(tmp_path, tiny_model_dir, shapes_data["train"]))
    assert args.training.variable_seq_lengths is True


# Qwen2.5-VL-7B-Instruct's released config.json (the fields that size the model), built without memory.
QWEN2_5_VL_7B = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl", "hidden_size": 3584,
    "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
    "vocab_size": 152064, "max_position_embeddings": 128000, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "use_sliding_window": False, "sliding_window": 32768, "max_window_layers": 28,
    "hidden_act": "silu", "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
    "vision_start_token_id": 151652, "vision_end_token_id": 151653, "vision_token_id": 151654,
    "image_token_id": 151655, "video_token_id": 151656,
    "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
                      "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14,
                      "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
                      "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2, "temporal_patch_size": 2},
}  # fmt: skip


def test_stages_of_a_real_config_hold_exactly_the_one_process_parameters(tmp_path: Path) -> None:
    """Qwen2.5-VL-7B (28 layers, untied head) split in 4: the stages together hold every parameter of the
    one-process model under its name and shape, each once; built lazily (no memory, no initialisation)."""
    from paddlemix.models.adapter import import_object
    from paddlemix.models.loading import build_model

    (tmp_path / "config.json").write_text(json.dumps(QWEN2_5_VL_7B))
    adapter = ADAPTERS["qwen2_5_vl"]
    whole = build_model(import_object(adapter.model_class), adapter.load_config(tmp_path), "bfloat16")
    expected = {name: tuple(p.shape) for name, p in whole.state_dict().items()}
    config, parts = adapter.load_config(tmp_path), adapter.pipeline()
    layers = config.text_config.num_hidden_layers
    got: dict[str, tuple[int, ...]] = {}
    for stage, (start, end) in enumerate(stage_bounds(layers, 4)):

        def build(config, stage=stage, start=start, end=end):
            held = [DecoderStage(config, parts, i) for i in range(start, end)]
            held = ([EmbeddingStage(config, parts), FirstStage(config, parts)] if stage == 0 else []) + held
            return held + ([NormStage(config, parts), HeadStage(config)] if stage == 3 else [])

        held = build_model(build, config, "bfloat16")
        for layer in held:
            for name, param in layer.state_dict().items():
                ours = next(o + name[len(local) :] for local, o in layer.PREFIXES if name.startswith(local))
                assert ours not in got, ours
                got[ours] = tuple(param.shape)
    assert got == expected


def test_recompute_on_decoder_stages_keeps_gradients(family) -> None:
    """`"recompute": true` reaches the decoder stages (they call their layer themselves, not the text model's loop):
    the same gradients, with the layer run again in backward."""
    model, stages, encoded, pad_id, _ = family
    batch = pad_batch(encoded, pad_id, 8)
    inputs = {k: paddle.to_tensor(v) for k, v in batch.items() if k != "labels"}
    stage, config = stages[2], stages[2].text_config
    calls = []
    stage.layer.register_forward_post_hook(lambda *a: calls.append(1))
    grads = []
    try:
        for setting in (None, "full"):
            config.recompute_granularity = setting
            stage.train()
            with paddle.no_grad():
                hidden, pos, mask = stages[1](stages[0](inputs))
            hidden.stop_gradient = False
            out = stage((hidden, pos, mask))[0]
            (out**2).mean().backward()
            grads.append(stage.layer.mlp.down_proj.weight.grad.numpy().copy())
            stage.clear_gradients()
    finally:
        config.recompute_granularity = None
        stage.eval()
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-5, atol=1e-7)
    assert len(calls) == 3  # once without recompute, twice (forward, backward) with it
