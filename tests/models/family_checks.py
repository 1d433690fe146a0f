"""Checks every model family must pass, as a mixin (in the spirit of transformers' ModelTesterMixin): a family's
test class inherits them and defines a class-scoped `model_dir` fixture naming its tiny folder
(see tests/models/test_qwen3_vl.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import paddle
import pytest
from PIL import Image

from paddlemix.auto import AutoConfigMIX, AutoModelMIX, AutoProcessorMIX
from paddlemix.datasets.conversation import Message, Sample
from paddlemix.models import adapter_for
from paddlemix.peft.freeze import matches
from paddlemix.processors.chat_template import template_for
from paddlemix.utils.io import load_safetensors, to_numpy

# (width, height): small, odd, wide, tall, and larger than the tiny processors' max_pixels.
IMAGE_SIZES = [(56, 84), (28, 28), (300, 40), (33, 190), (640, 480)]


def rope_oracle(input_ids: np.ndarray, image_token: int, grids: np.ndarray, merge: int) -> np.ndarray:
    """Qwen-VL's 3-D positions written out plainly: text advances all three axes by one; an image of t x h x w
    merged patches takes (start + t', start + h', start + w'); the text after it starts at start + max(t, h, w)."""
    rows: list[tuple[int, int, int]] = []
    start, i, images = 0, 0, iter(grids)
    while i < len(input_ids):
        if input_ids[i] != image_token:
            rows.append((start, start, start))
            start, i = start + 1, i + 1
            continue
        t, h, w = (int(x) for x in next(images))
        h, w = h // merge, w // merge
        rows += [(start + a, start + b, start + c) for a in range(t) for b in range(h) for c in range(w)]
        start, i = start + max(t, h, w), i + t * h * w
    return np.asarray(rows, dtype="int64").T


class FamilyChecks:
    """Loading, weight export/import, config preparation, module groups, image grids and positions."""

    @pytest.fixture(scope="class")
    def model(self, model_dir: Path):
        return AutoModelMIX.from_pretrained(model_dir)

    @pytest.fixture(scope="class")
    def processor(self, model_dir: Path):
        return AutoProcessorMIX.from_pretrained(model_dir)

    @pytest.fixture(scope="class")
    def two_images(self, model_dir: Path, processor, tmp_path_factory) -> dict[str, np.ndarray]:
        """A training sample with two images of different shapes between text, encoded as for training."""
        folder = tmp_path_factory.mktemp("images")
        paths = [folder / "a.png", folder / "b.png"]
        for path, size in zip(paths, [(56, 84), (120, 40)]):
            Image.new("RGB", size, (200, 30, 30)).save(path)
        sample = Sample(
            (Message("user", "<image>What is this?<image>And this?"), Message("assistant", "red")),
            tuple(str(p) for p in paths),
        )
        return adapter_for(model_dir).sample_processor(processor, 4096)(sample, template_for(processor))

    def test_export_inverts_loading_exactly(self, model, model_dir: Path) -> None:
        """Loading fuses and transposes HF tensors; exporting must give back the checkpoint bit for bit."""
        state = {k: to_numpy(v) for k, v in model.state_dict().items()}
        exported = adapter_for(model_dir).export_state_dict(state, model.config)
        original = load_safetensors(model_dir / "model.safetensors")
        assert set(exported) == set(original)
        for name, value in original.items():
            np.testing.assert_array_equal(exported[name], value, err_msg=name)

    def test_import_inverts_export_and_loads_the_same_model(self, model, model_dir: Path, monkeypatch) -> None:
        """Under data parallelism (PADDLE_TRAINERS_NUM > 1) every process loads the same parameters."""
        adapter = adapter_for(model_dir)
        state = {k: to_numpy(v) for k, v in model.state_dict().items()}
        imported = adapter.import_state_dict(load_safetensors(model_dir / "model.safetensors"), model.config,
                                             set(state))  # fmt: skip
        assert set(imported) == set(state)
        for name, value in state.items():
            np.testing.assert_array_equal(imported[name], value, err_msg=name)
        monkeypatch.setenv("PADDLE_TRAINERS_NUM", "2")
        replicated = AutoModelMIX.from_pretrained(model_dir)
        for name, value in replicated.state_dict().items():
            np.testing.assert_array_equal(to_numpy(value), state[name], err_msg=name)

    def test_config_prepared_for_cpu(self, model_dir: Path) -> None:
        config = AutoConfigMIX.from_pretrained(model_dir, device="cpu")
        assert config.text_config.fuse_rms_norm is False and config.vision_config.fuse_rms_norm is False

    def test_module_groups_cover_every_parameter_once(self, model, model_dir: Path) -> None:
        groups = adapter_for(model_dir).module_groups
        assert set(groups) == {"vision", "projector", "llm"}
        for name, _ in model.named_parameters():
            owners = [g for g, patterns in groups.items() if matches(name, patterns)]
            assert len(owners) == 1, (name, owners)

    @pytest.mark.parametrize("size", IMAGE_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
    def test_image_grid_equals_processor_output(self, model_dir: Path, processor, size: tuple[int, int]) -> None:
        """Lengths are planned from image headers; they must match what the processor does with the pixels."""
        image = Image.new("RGB", size, (10, 200, 30))
        out = processor.image_processor(images=[image], return_tensors="np")
        grid = adapter_for(model_dir).image_grid(processor.image_processor, *size)
        assert tuple(int(x) for x in out["image_grid_thw"][0]) == grid
        assert np.asarray(out["pixel_values"]).shape[0] == int(np.prod(grid))

    def test_positions_follow_the_rope_rule(self, model, model_dir: Path, processor, two_images) -> None:
        adapter = adapter_for(model_dir)
        image_token = processor.tokenizer.convert_tokens_to_ids(adapter.image_token)
        ids, grids = two_images["input_ids"], two_images["image_grid_thw"]
        positions = adapter.position_fn(model.config)(ids, grids)
        merge = processor.image_processor.merge_size
        np.testing.assert_array_equal(positions, rope_oracle(ids, image_token, grids, merge))
        text_only = adapter.position_fn(model.config)(ids[:5], None)
        np.testing.assert_array_equal(text_only, np.tile(np.arange(5), (3, 1)))

    def test_given_positions_equal_the_models_own(self, model, model_dir: Path, two_images) -> None:
        """Packing passes positions [3, B, L] explicitly; they must mean what the model computes by itself."""
        inputs = {k: paddle.to_tensor(v[None] if k == "input_ids" else v) for k, v in two_images.items()
                  if k != "labels"}  # fmt: skip
        positions = adapter_for(model_dir).position_fn(model.config)(
            two_images["input_ids"], two_images["image_grid_thw"]
        )
        with paddle.no_grad():
            own = model(**inputs).logits
            given = model(**inputs, position_ids=paddle.to_tensor(positions[:, None])).logits
        np.testing.assert_allclose(given.numpy(), own.numpy(), atol=1e-6)
