"""Qwen2-VL: the family checks on both config.json layouts, plus what only Qwen2-VL has (its vision tower, its
checkpoint names, frame-numbered video positions)."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import ml_dtypes
import numpy as np
import paddle
import pytest
from family_checks import FamilyChecks, rope_oracle
from PIL import Image
from safetensors.numpy import save_file

from paddlemix.auto import AutoModelMIX
from paddlemix.models import adapter_for
from paddlemix.models.qwen2_vl.modeling import Qwen2VLModel
from paddlemix.models.qwen2_vl.vision import patch_positions
from paddlemix.testing.tiny_qwen2_vl import build_tiny_qwen2_vl
from paddlemix.utils.io import load_safetensors, to_numpy, write_json


class TestQwen2VL(FamilyChecks):
    @pytest.fixture(scope="class")
    def model_dir(self, tiny_qwen2_vl_dir: Path) -> Path:
        return tiny_qwen2_vl_dir

    def test_checkpoint_uses_original_names(self, model_dir: Path) -> None:
        names = set(load_safetensors(model_dir / "model.safetensors"))
        assert {n.split(".")[0] for n in names} == {"model", "visual", "lm_head"}
        # Qwen2-VL's own tower: LayerNorms with bias, an fc1/fc2 MLP, a LayerNorm merger.
        assert {"visual.blocks.1.norm2.bias", "visual.blocks.1.mlp.fc1.weight", "visual.merger.ln_q.bias"} <= names

    def test_vision_tower_parameters(self, model) -> None:
        names = {n for n, _ in model.named_parameters() if n.startswith("model.visual.")}
        per_block = {n.split(".", 4)[-1] for n in names if n.startswith("model.visual.blocks.0.")}
        assert per_block == {f"{layer}.{part}" for layer in ("norm1", "norm2", "attn.qkv", "attn.proj", "mlp.fc1",
                                                              "mlp.fc2") for part in ("weight", "bias")}  # fmt: skip
        assert len(names) == 1 + 12 * model.config.vision_config.depth + 6  # patch embedding, blocks, merger

    def test_images_of_a_batch_do_not_see_each_other(self, model, processor) -> None:
        """Attention spans one frame: the features of two images encoded together equal each encoded alone."""
        rng = np.random.default_rng(0)
        images = [Image.fromarray(rng.integers(0, 255, size, dtype=np.uint8)) for size in [(84, 56, 3), (56, 112, 3)]]
        alone = [processor.image_processor(images=[im], return_tensors="np") for im in images]
        both = processor.image_processor(images=images, return_tensors="np")
        visual = model.model.visual
        with paddle.no_grad():
            together = visual(paddle.to_tensor(both["pixel_values"]), paddle.to_tensor(both["image_grid_thw"]))
            each = [visual(paddle.to_tensor(a["pixel_values"]), paddle.to_tensor(a["image_grid_thw"])) for a in alone]
        np.testing.assert_allclose(together.numpy(), paddle.concat(each).numpy(), atol=1e-5)

    def test_lora_targets_match_language_model_layers(self, model, model_dir: Path) -> None:
        from paddlemix.peft.lora import lora_modules

        modules = lora_modules(model_dir, adapter_for(model_dir), None)
        assert len(modules) == 7 * model.config.text_config.num_hidden_layers  # q, k, v, o, gate, up, down
        assert all(m.startswith("model.language_model.layers.") for m in modules)

    def test_video_frames_take_consecutive_positions(self, model, processor) -> None:
        """Qwen2-VL numbers a video's temporal patches 0, 1, 2 (Qwen2.5-VL would scale them by its frame rate)."""
        config = model.config
        grid = np.array([[3, 4, 6]])  # 3 temporal patches of 2 x 3 merged patches
        ids = np.array([5, 6, config.vision_start_token_id, *[config.video_token_id] * 18, config.vision_end_token_id,
                        7])  # fmt: skip
        expected = rope_oracle(ids, config.video_token_id, grid, processor.image_processor.merge_size)
        # The processor's seconds per temporal patch (here 2.0) must not change Qwen2-VL's positions.
        for seconds in (None, paddle.to_tensor([2.0])):
            position_ids, _ = Qwen2VLModel.get_rope_index(
                SimpleNamespace(config=config), input_ids=paddle.to_tensor(ids[None]),
                video_grid_thw=paddle.to_tensor(grid), second_per_grid_ts=seconds,
            )  # fmt: skip
            np.testing.assert_array_equal(position_ids[:, 0].numpy(), expected)


class TestQwen2VLReleaseConfig(FamilyChecks):
    """The released Qwen2-VL-2B's flat config.json (`in_chans`, no `hidden_act`, `{"type": "mrope"}`) with the
    head tied to the embeddings: its checkpoint has no lm_head.weight."""

    @pytest.fixture(scope="class")
    def model_dir(self, tmp_path_factory) -> Path:
        folder = tmp_path_factory.mktemp("tiny_qwen2_vl_release")
        return build_tiny_qwen2_vl(folder, config_layout="release", tie_word_embeddings=True)

    def test_release_fields_are_read(self, model) -> None:
        vision = model.config.vision_config
        assert (vision.hidden_act, vision.in_channels, vision.embed_dim) == ("quick_gelu", 3, 32)
        assert model.config.text_config.rope_parameters["mrope_section"] == [2, 3, 3]

    def test_head_is_the_embedding_table(self, model, model_dir: Path) -> None:
        assert "lm_head.weight" not in load_safetensors(model_dir / "model.safetensors")
        state = model.state_dict()
        assert (state["lm_head.weight"] == state["model.language_model.embed_tokens.weight"]).all()


@pytest.mark.parametrize("grid", [[1, 2, 2], [1, 4, 6], [2, 6, 4]])
def test_patch_positions_follow_the_processors_patch_order(grid: list[int]) -> None:
    """The image processor emits patches frame by frame, 2 x 2 merge blocks in raster order, raster order inside
    each block; the tower's rotary positions must name the (row, column) of each patch in that order."""
    t, h, w = grid
    expected = [(r0 + dr, c0 + dc) for _ in range(t) for r0 in range(0, h, 2) for c0 in range(0, w, 2)
                for dr in range(2) for dc in range(2)]  # fmt: skip
    np.testing.assert_array_equal(patch_positions(np.array([grid]), 2), np.array(expected))


def test_sharded_bf16_checkpoint_loads(tiny_qwen2_vl_dir: Path, tmp_path: Path) -> None:
    """The released Qwen2-VL weights are bf16 safetensors in shards with an index; they load as float32 with
    exactly the bf16 values."""
    folder = tmp_path / "bf16"
    shutil.copytree(tiny_qwen2_vl_dir, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    weights = load_safetensors(tiny_qwen2_vl_dir / "model.safetensors")
    names = sorted(weights)
    index: dict[str, str] = {}
    for i, part in enumerate((names[::2], names[1::2])):
        file = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: weights[k].astype(ml_dtypes.bfloat16) for k in part}, str(folder / file), {"format": "pt"})
        index.update(dict.fromkeys(part, file))
    write_json({"metadata": {}, "weight_map": index}, folder / "model.safetensors.index.json")

    model = AutoModelMIX.from_pretrained(folder)
    state = {k: to_numpy(v) for k, v in model.state_dict().items()}
    rounded = {k: v.astype(ml_dtypes.bfloat16).astype(np.float32) for k, v in weights.items()}
    expected = adapter_for(folder).import_state_dict(rounded, model.config, set(state))
    assert not np.array_equal(rounded["visual.merger.mlp.0.weight"], weights["visual.merger.mlp.0.weight"])
    for name, value in expected.items():
        np.testing.assert_array_equal(state[name], value, err_msg=name)
