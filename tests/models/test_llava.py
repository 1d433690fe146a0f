"""Unit tests of the Paddle LLaVA (paddlemix/models/llava): weights, feature layers, image tokens, LoRA, packing,
generation, and one sample through the processor, collator and generator. Folders come from `build_llava` on tiny
CLIP and LM folders; feature-layer tests build models from configs (HF parity: tests/parity/test_llava_parity.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import paddle
import pytest
from family_checks import FamilyChecks
from PIL import Image

from paddlemix.auto import AutoConfigMIX, AutoModelMIX, AutoProcessorMIX
from paddlemix.datasets.collator import BATCH_META, Collator, to_tensors
from paddlemix.datasets.conversation import Message, Sample
from paddlemix.datasets.packing import startend_row_indices
from paddlemix.inference.decoding import GenerationSettings, PromptBatch, decode, settings_for
from paddlemix.inference.generation import Generator
from paddlemix.models import adapter_for, llava
from paddlemix.models.llava.build import build_llava
from paddlemix.models.llava.modeling import LlavaConfig, LlavaForConditionalGeneration
from paddlemix.peft.lora import apply_lora, fold_adapter, lora_modules, save_adapter
from paddlemix.peft.merge import merge_adapter
from paddlemix.processors.chat_template import template_for
from paddlemix.testing.lora import perturb_lora
from paddlemix.testing.tiny_llava import build_tiny_causal_lm, build_tiny_clip_vision
from paddlemix.utils.io import load_safetensors

TOKENS_PER_IMAGE = 4  # (28 / 14)^2 patches, class token dropped


def tiny_spec(text_type: str, **overrides) -> dict:
    """A tiny LlavaConfig: a 3-layer CLIP tower on 28 px images and a 2-layer LM."""
    text = {
        "model_type": text_type,
        "vocab_size": 64,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    }
    vision = {"hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 3, "num_attention_heads": 2,
              "image_size": 28, "patch_size": 14}  # fmt: skip
    return {"vision_config": vision, "text_config": text, "image_token_index": 63, **overrides}


def build_model(spec: dict, seed: int = 0) -> LlavaForConditionalGeneration:
    config = LlavaConfig(**copy.deepcopy(spec))
    llava.prepare_config(config, "cpu")
    paddle.seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.eval()
    return model


@pytest.fixture(scope="module", params=[("qwen2", False), ("llama", True)], ids=["qwen2", "llama-tied"])
def model_dir(request, tmp_path_factory) -> Path:
    """A LLaVA folder from `build_llava`: a 3-layer CLIP on 28 px images and a Qwen2 (untied) or Llama (tied) LM."""
    family, tie = request.param
    tmp = tmp_path_factory.mktemp(f"llava_{family}")
    clip = build_tiny_clip_vision(tmp / "clip", hidden_size=16, num_layers=3, image_size=28)
    lm = build_tiny_causal_lm(tmp / "lm", family, hidden_size=32, intermediate_size=48, tie_word_embeddings=tie)
    return build_llava(clip, lm, tmp / "llava")


@pytest.fixture(scope="module")
def model(model_dir: Path):
    return AutoModelMIX.from_pretrained(model_dir)


def image_batch(model, rows: int = 1, images_at: int = 2, length: int = 10, seed: int = 0) -> dict[str, paddle.Tensor]:
    """`rows` rows of random text with one image's tokens at `images_at`, and one random image per row."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, 200, size=(rows, length))
    ids[:, images_at : images_at + TOKENS_PER_IMAGE] = model.config.image_token_index
    pixels = rng.normal(0, 1, (rows, 3, 28, 28)).astype("float32")
    return {"input_ids": paddle.to_tensor(ids), "pixel_values": paddle.to_tensor(pixels)}


def logits(model, **inputs) -> np.ndarray:
    with paddle.no_grad():
        return model(**inputs).logits.numpy()


class TestLlavaWeights:
    """FamilyChecks' family-independent checks on LLaVA folders (its other checks are Qwen-VL's mRoPE and grids)."""

    test_export_inverts_loading_exactly = FamilyChecks.test_export_inverts_loading_exactly
    test_import_inverts_export_and_loads_the_same_model = (
        FamilyChecks.test_import_inverts_export_and_loads_the_same_model
    )
    test_module_groups_cover_every_parameter_once = FamilyChecks.test_module_groups_cover_every_parameter_once


def test_tied_head_is_not_written_and_shares_the_embeddings(model, model_dir: Path) -> None:
    tied = model.config.text_config.tie_word_embeddings
    assert ("language_model.lm_head.weight" in load_safetensors(model_dir / "model.safetensors")) != tied
    shares = model.lm_head.weight is model.model.language_model.embed_tokens.weight
    assert shares == tied


def test_config_prepared_for_cpu(model_dir: Path) -> None:
    assert AutoConfigMIX.from_pretrained(model_dir, device="cpu").text_config.fuse_rms_norm is False


def perturb(layer: paddle.nn.Layer) -> None:
    for param in layer.parameters():
        param.set_value(param + 0.5)


@pytest.mark.parametrize("layer, changes_with", [(-1, (2, 3)), (-2, (2,)), (2, (2,)), (0, ()), ([0, 2], (2,))])
def test_feature_layer_selects_the_hidden_state_of_that_layer(layer, changes_with) -> None:
    """Features of layer k depend on encoder layers <= k only (HF numbering: 0 = embeddings, -1 = last of 3)."""
    spec = tiny_spec("qwen2", vision_feature_layer=layer)
    pixels = paddle.randn([1, 3, 28, 28])
    base = build_model(spec).model.image_features(pixels).numpy()
    for index in (2, 3):
        model = build_model(spec)
        perturb(model.model.vision_tower.vision_model.encoder.layers[index - 1])
        changed = not np.allclose(model.model.image_features(pixels).numpy(), base)
        assert changed == (index in changes_with), (layer, index)
    assert base.shape == (TOKENS_PER_IMAGE, 32)


def test_full_strategy_keeps_the_class_token() -> None:
    pixels = paddle.randn([1, 3, 28, 28])
    default = build_model(tiny_spec("qwen2")).model.image_features(pixels).numpy()
    full = build_model(tiny_spec("qwen2", vision_feature_select_strategy="full")).model.image_features(pixels).numpy()
    assert full.shape[0] == TOKENS_PER_IMAGE + 1
    np.testing.assert_allclose(full[1:], default, atol=1e-6)


def test_image_token_count_must_match_the_features(model) -> None:
    batch = image_batch(model)
    ids = batch["input_ids"].numpy()
    ids[0, 2] = 5  # one image token short
    with pytest.raises(ValueError, match=r"3 image tokens .* 1 images give 4 visual features"):
        model(input_ids=paddle.to_tensor(ids), pixel_values=batch["pixel_values"])
    with pytest.raises(ValueError, match=r"4 image tokens .* 0 images"):
        model(input_ids=batch["input_ids"])


def test_images_fill_their_tokens_in_order(model) -> None:
    """Swapping the two images of a batch swaps the rows' logits: features go to the image tokens in order."""
    batch = image_batch(model, rows=2)
    ids = paddle.concat([batch["input_ids"][:1]] * 2)
    pixels = batch["pixel_values"]
    out = logits(model, input_ids=ids, pixel_values=pixels)
    swapped = logits(model, input_ids=ids, pixel_values=paddle.flip(pixels, axis=0))
    np.testing.assert_allclose(out[0], swapped[1], atol=1e-5)
    assert np.abs(out[0] - out[1]).max() > 1e-4


def test_loss_is_the_mean_over_labelled_positions(model) -> None:
    batch = image_batch(model, rows=2)
    labels = np.full((2, 10), -100)
    labels[0, 7:], labels[1, 8] = [3, 4, 5], 6
    out = model(**batch, labels=paddle.to_tensor(labels))
    log_probs = out.logits.numpy() - np.log(np.exp(out.logits.numpy()).sum(-1, keepdims=True))
    expected = -np.mean([log_probs[r, t, labels[r, t]] for r, t in zip(*np.nonzero(labels != -100))])
    np.testing.assert_allclose(float(out.loss), expected, rtol=1e-5)


def test_packed_row_matches_separate_samples(model) -> None:
    """A MIXToken pack (positions restarting per sample, block-causal FlashMask rows) gives each sample's logits."""
    first, second = image_batch(model, length=9, seed=1), image_batch(model, length=7, images_at=1, seed=2)
    ids = paddle.concat([first["input_ids"], second["input_ids"]], axis=1)
    positions = np.concatenate([np.arange(9), np.arange(7)])[None, None]  # [1 row, B, L]
    startend = startend_row_indices([9, 7], 16)[None, None]  # [B, 1, L]
    packed = logits(
        model,
        input_ids=ids,
        pixel_values=paddle.concat([first["pixel_values"], second["pixel_values"]]),
        position_ids=paddle.to_tensor(positions),
        attn_mask_startend_row_indices=paddle.to_tensor(startend),
    )
    np.testing.assert_allclose(packed[:, :9], logits(model, **first), atol=1e-5)
    np.testing.assert_allclose(packed[:, 9:], logits(model, **second), atol=1e-5)


def cached_greedy(model, batch: dict, new_tokens: int, eos: tuple[int, ...] = ()) -> list[list[int]]:
    """Greedy tokens through the generic KV-cache loop (paddlemix/inference/decoding.py) for unpadded equal-length rows."""
    ids = batch["input_ids"].numpy()
    rows, length = ids.shape
    prompt = PromptBatch(ids, np.ones_like(ids), np.arange(length)[None, None].repeat(rows, 1),
                         np.full(rows, length), np.full(rows, length), {"pixel_values": batch["pixel_values"].numpy()})  # fmt: skip
    settings = GenerationSettings(max_new_tokens=new_tokens, eos_token_ids=eos)
    return decode(model, prompt, settings).tokens


def test_generate_with_cache_matches_greedy_full_forwards(model) -> None:
    batch = image_batch(model, rows=2)
    new_ids = cached_greedy(model, batch, 4)
    ids = batch["input_ids"]
    for _ in range(4):
        step = logits(model, input_ids=ids, pixel_values=batch["pixel_values"])[:, -1].argmax(-1)
        ids = paddle.concat([ids, paddle.to_tensor(step[:, None])], axis=1)
    np.testing.assert_array_equal(np.asarray(new_ids), ids[:, 10:].numpy())


def test_generate_stops_at_eos(model_dir: Path) -> None:
    model = AutoModelMIX.from_pretrained(model_dir)
    saved = json.loads((model_dir / "generation_config.json").read_text())
    assert settings_for(model_dir, model.config).eos_token_ids == (saved["eos_token_id"],)
    batch = image_batch(model)
    first = cached_greedy(model, batch, 1)[0][0]
    assert cached_greedy(model, batch, 5, eos=(first,)) == [[first]]


def test_lora_wraps_the_language_model_and_merges(model, model_dir: Path, tmp_path: Path) -> None:
    modules = lora_modules(model_dir, adapter_for(model_dir), None)
    lora = apply_lora(AutoModelMIX.from_pretrained(model_dir), modules, 4, 8)
    adapted = [name for name, _ in lora.named_parameters() if "lora_" in name]
    assert adapted and all(name.startswith("model.language_model.layers.") for name in adapted)
    assert all(p.stop_gradient == ("lora_" not in n) for n, p in lora.named_parameters())
    perturb_lora(lora, seed=0, std=0.1)
    batch = image_batch(model)
    expected = logits(lora, **batch)
    assert np.abs(expected - logits(model, **batch)).max() > 1e-3
    save_adapter(lora, tmp_path / "adapter")
    folder = merge_adapter(model_dir, tmp_path / "adapter", tmp_path / "merged")
    assert AutoProcessorMIX.from_pretrained(folder).image_token == "<image>"
    np.testing.assert_allclose(logits(AutoModelMIX.from_pretrained(folder), **batch), expected, atol=1e-5)
    np.testing.assert_allclose(logits(fold_adapter(lora), **batch), expected, atol=1e-5)


def test_sample_runs_through_processor_collator_model_and_generator(model, model_dir: Path, tmp_path: Path) -> None:
    """The generic path: encoder (image tokens from the adapter's rules), collator, loss, then a generated answer."""
    processor, adapter = AutoProcessorMIX.from_pretrained(model_dir), adapter_for(model_dir)
    Image.new("RGB", (60, 40), (200, 30, 30)).save(tmp_path / "red.png")
    sample = Sample(
        (Message("user", "<image>What color is it?"), Message("assistant", "red")), (str(tmp_path / "red.png"),)
    )
    template = template_for(processor)
    encoder = adapter.sample_processor(processor, 512)
    encoded = encoder(sample, template)
    assert int((encoded["input_ids"] == model.config.image_token_index).sum()) == TOKENS_PER_IMAGE
    assert encoder.length(sample, template) == len(encoded["input_ids"])
    batch = to_tensors(Collator(processor.tokenizer.pad_token_id)([encoded, encoded]))
    for key in BATCH_META:
        batch.pop(key)
    assert np.isfinite(float(model(**batch).loss))
    answer = Generator.from_parts(model, processor, adapter).answer("What color?", [str(tmp_path / "red.png")],
                                                                    max_new_tokens=3)  # fmt: skip
    assert isinstance(answer, str)


def test_adapter_tokens_per_image_and_positions(model_dir: Path) -> None:
    processor, adapter = AutoProcessorMIX.from_pretrained(model_dir), adapter_for(model_dir)
    assert adapter.image_grid(processor.image_processor, 640, 480) == (1, 2, 2)
    for strategy, count in (("default", 4), ("full", 5)):
        chosen = SimpleNamespace(image_processor=processor.image_processor, num_additional_image_tokens=1,
                                 vision_feature_select_strategy=strategy)  # fmt: skip
        assert adapter.vision_tokens(chosen).count((1, 2, 2)) == count
    np.testing.assert_array_equal(adapter.positions(None, np.zeros(5), None), [[0, 1, 2, 3, 4]])
