"""PaddleOCR-VL: the family checks on the tiny folder, plus what only it has (original names, every tensor kept,
positions for several images per row, the CPU work-arounds, transformers 5.x names and config layout)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest
from family_checks import FamilyChecks, rope_oracle

from paddlemix.auto import AutoConfigMIX, AutoModelMIX
from paddlemix.models import adapter_for
from paddlemix.models.paddleocr_vl import paddle_name
from paddlemix.models.paddleocr_vl.modeling import flat_config
from paddlemix.peft.lora import lora_modules
from paddlemix.testing.tiny_paddleocr_vl import build_tiny_paddleocr_vl
from paddlemix.utils.io import load_safetensors, to_numpy


class TestPaddleOCRVL(FamilyChecks):
    @pytest.fixture(scope="class")
    def model_dir(self, tiny_paddleocr_vl_dir: Path) -> Path:
        return tiny_paddleocr_vl_dir

    def test_config_prepared_for_cpu(self, model_dir: Path) -> None:
        """The flat config holds the language model's settings; the vision config has its own flag."""
        config = AutoConfigMIX.from_pretrained(model_dir, device="cpu")
        assert config.fuse_rms_norm is False and config.vision_config.fuse_rms_norm is False
        assert getattr(AutoConfigMIX.from_pretrained(model_dir, device="gpu"), "fuse_rms_norm", None) is not False

    def test_checkpoint_keeps_original_names_and_every_tensor(self, model, model_dir: Path) -> None:
        names = set(load_safetensors(model_dir / "model.safetensors"))
        assert {n.split(".")[0] for n in names} == {"visual", "mlp_AR", "model", "lm_head"}
        state = {k: to_numpy(v) for k, v in model.state_dict().items()}
        exported = adapter_for(model_dir).export_state_dict(state, model.config)
        assert "visual.vision_model.embeddings.packing_position_embedding.weight" in exported

    def test_triton_stand_in_is_gone_after_import(self, model) -> None:
        """The stand-in is only there while paddleformers' module imports (no lasting change to sys.modules)."""
        import importlib.util

        if importlib.util.find_spec("triton") is None:
            assert "triton" not in sys.modules

    def test_lora_targets(self, model, model_dir: Path) -> None:
        adapter = adapter_for(model_dir)
        modules = lora_modules(model_dir, adapter, None)
        assert len(modules) == 7 * model.config.num_hidden_layers
        assert all(m.startswith("model.layers.") for m in modules)
        vision = lora_modules(model_dir, adapter, [r"visual\..*\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2)"])
        assert len(vision) == 6 * model.config.vision_config.num_hidden_layers
        assert lora_modules(model_dir, adapter, ["mlp_AR.linear_1", "mlp_AR.linear_2"]) == [
            "mlp_AR.linear_1", "mlp_AR.linear_2"]  # fmt: skip
        assert lora_modules(model_dir, adapter, [".*q_proj.*"]) == [m for m in modules if "q_proj" in m]

    def test_every_used_parameter_gets_a_gradient(self, model_dir: Path, two_images) -> None:
        model = AutoModelMIX.from_pretrained(model_dir)
        inputs = {k: paddle.to_tensor(v[None] if k in ("input_ids", "labels") else v) for k, v in two_images.items()}
        model(**inputs).loss.backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert missing == ["visual.vision_model.embeddings.packing_position_embedding.weight"]

    def test_own_positions_follow_the_rule_with_two_images(self, model, processor, two_images) -> None:
        """paddleformers' own rule handles one image per row; the family's model handles any number."""
        ids, grids = two_images["input_ids"], two_images["image_grid_thw"]
        position_ids, deltas = model.get_rope_index(paddle.to_tensor(ids[None]), paddle.to_tensor(grids))
        expected = rope_oracle(ids, model.config.image_token_id, grids, processor.image_processor.merge_size)
        np.testing.assert_array_equal(position_ids.numpy()[:, 0], expected)
        assert int(deltas.numpy()[0, 0]) == expected.max() + 1 - len(ids)


def test_transformers_5_names_and_nested_config_load_the_same(tmp_path: Path, tiny_paddleocr_vl_dir: Path) -> None:
    """A folder with transformers 5.x's in-memory names and nested `text_config` (rope_parameters) is the same model."""
    raw = json.loads((tiny_paddleocr_vl_dir / "config.json").read_text())
    text_keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "rms_norm_eps", "hidden_act", "max_position_embeddings")  # fmt: skip
    text = {k: raw.pop(k) for k in text_keys}
    text["rope_parameters"] = {**raw.pop("rope_scaling"), "rope_theta": raw.pop("rope_theta")}
    nested = {**raw, "text_config": text}
    for name in tiny_paddleocr_vl_dir.iterdir():
        if name.name not in ("config.json", "model.safetensors"):
            (tmp_path / name.name).write_bytes(name.read_bytes())
    (tmp_path / "config.json").write_text(json.dumps(nested))
    from safetensors.numpy import save_file

    renamed = {("model.language_model." + k[6:] if k.startswith("model.") else
                "model.projector." + k[7:] if k.startswith("mlp_AR.") else
                "model." + k if k.startswith("visual.") else k): v
               for k, v in load_safetensors(tiny_paddleocr_vl_dir / "model.safetensors").items()}  # fmt: skip
    assert {paddle_name(k) for k in renamed} == set(load_safetensors(tiny_paddleocr_vl_dir / "model.safetensors"))
    save_file(renamed, str(tmp_path / "model.safetensors"))
    assert flat_config(nested)["rope_scaling"]["mrope_section"] == text["rope_parameters"]["mrope_section"]
    ids = paddle.to_tensor(np.arange(3, 40)[None])
    with paddle.no_grad():
        a = AutoModelMIX.from_pretrained(tiny_paddleocr_vl_dir)(input_ids=ids).logits
        b = AutoModelMIX.from_pretrained(tmp_path)(input_ids=ids).logits
    np.testing.assert_array_equal(a.numpy(), b.numpy())


class TestPaddleOCRVLTied(FamilyChecks):
    """A tied head (no lm_head.weight in the file) is the embedding table itself, also while training."""

    @pytest.fixture(scope="class")
    def model_dir(self, tmp_path_factory) -> Path:
        return build_tiny_paddleocr_vl(tmp_path_factory.mktemp("tiny_ocr_tied"), tie_word_embeddings=True)

    test_config_prepared_for_cpu = TestPaddleOCRVL.test_config_prepared_for_cpu

    def test_head_is_the_embedding_table(self, model) -> None:
        assert model.lm_head.weight is model.model.embed_tokens.weight


def test_transformers_5_folder_without_packing_table_loads_with_zeros(tmp_path: Path, tiny_paddleocr_vl_dir) -> None:
    """transformers 5.x saves no packing_position_embedding and may keep SigLIP's head: zeros, head dropped."""
    from safetensors.numpy import save_file

    weights = load_safetensors(tiny_paddleocr_vl_dir / "model.safetensors")
    weights.pop("visual.vision_model.embeddings.packing_position_embedding.weight")
    weights["visual.vision_model.head.probe"] = np.ones((1, 1, 32), "float32")
    for name in tiny_paddleocr_vl_dir.iterdir():
        if name.name != "model.safetensors":
            (tmp_path / name.name).write_bytes(name.read_bytes())
    save_file(weights, str(tmp_path / "model.safetensors"))
    model = AutoModelMIX.from_pretrained(tmp_path)
    table = model.visual.vision_model.embeddings.packing_position_embedding.weight
    assert table.shape == [32768, 32] and not table.numpy().any()


def test_lora_on_paddleformers_targets_merges_to_base_plus_adapter(tmp_path: Path, tiny_paddleocr_vl_dir) -> None:
    """LoRA on the language model, the vision tower and the projector (the ready argument file's targets), with
    perturbed adapters: the merge tool's model gives base + adapter's logits."""
    from paddlemix.peft.lora import apply_lora, save_adapter
    from paddlemix.peft.merge import merge_adapter
    from paddlemix.testing.lora import perturb_lora

    config = Path(__file__).resolve().parents[2] / "paddlemix" / "config" / "paddleocr_vl" / "lora_sft_argument.json"
    targets = json.loads(config.read_text())["lora_target_modules"]
    modules = lora_modules(tiny_paddleocr_vl_dir, adapter_for(tiny_paddleocr_vl_dir), targets)
    assert {m.split(".")[0] for m in modules} == {"model", "visual", "mlp_AR"}
    lora = apply_lora(AutoModelMIX.from_pretrained(tiny_paddleocr_vl_dir), modules, 4, 8)
    perturb_lora(lora, seed=0)
    save_adapter(lora, tmp_path / "adapter", tiny_paddleocr_vl_dir)
    merged = AutoModelMIX.from_pretrained(merge_adapter(tiny_paddleocr_vl_dir, tmp_path / "adapter", tmp_path / "m"))
    rng = np.random.default_rng(0)
    grid = np.asarray([[1, 4, 6]])
    image_id = lora.config.image_token_id
    ids = np.concatenate([[[5, 6]], np.full((1, 6), image_id), rng.integers(10, 300, (1, 8))], axis=1)
    inputs = {"input_ids": paddle.to_tensor(ids), "image_grid_thw": paddle.to_tensor(grid),
              "pixel_values": paddle.to_tensor(rng.normal(size=(24, 3, 14, 14)).astype("float32"))}  # fmt: skip
    base = AutoModelMIX.from_pretrained(tiny_paddleocr_vl_dir)
    with paddle.no_grad():
        expected, got, before = lora(**inputs).logits, merged(**inputs).logits, base(**inputs).logits
    assert float((expected - before).abs().max()) > 1e-4
    assert float((got - expected).abs().max()) <= 1e-5


def test_lora_targets_skip_the_pooling_head(tmp_path: Path) -> None:
    """PaddleFormers' vision targets (`...fc1|fc2`) select no layer of SigLIP's pooling head, which no model holds."""
    folder = build_tiny_paddleocr_vl(tmp_path / "release", pooling_head=True)
    vision = lora_modules(folder, adapter_for(folder), [r"visual\..*\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2)"])
    assert len(vision) == 6 * 2 and not any(".head." in m for m in vision)


def test_adapter_is_written_under_transformers_5_names(tmp_path: Path, tiny_paddleocr_vl_dir: Path) -> None:
    """The names PEFT on transformers 5.x loads (`hf5_name`); read back here with the same logits."""
    from paddlemix.peft.lora import apply_lora, load_adapter, save_adapter
    from paddlemix.testing.lora import perturb_lora

    adapter = adapter_for(tiny_paddleocr_vl_dir)
    modules = lora_modules(tiny_paddleocr_vl_dir, adapter, ["q_proj", r"visual\..*\.fc1"])
    model = apply_lora(AutoModelMIX.from_pretrained(tiny_paddleocr_vl_dir), modules, 4, 8, modules_to_save=["mlp_AR"])
    perturb_lora(model, seed=1)
    save_adapter(model, tmp_path / "adapter")
    names = load_safetensors(tmp_path / "adapter" / "adapter_model.safetensors")
    prefixes = {n.removeprefix("base_model.model.").split(".layers.")[0].split(".vision_model.")[0] for n in names}
    assert prefixes == {"model.language_model", "model.visual", "model.projector.pre_norm.weight",
                        "model.projector.pre_norm.bias", "model.projector.linear_1.weight", "model.projector.linear_1.bias",
                        "model.projector.linear_2.weight", "model.projector.linear_2.bias"}  # fmt: skip
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["model.projector"]
    ids = paddle.to_tensor(np.arange(3, 30)[None])
    back = load_adapter(AutoModelMIX.from_pretrained(tiny_paddleocr_vl_dir), tmp_path / "adapter")
    with paddle.no_grad():
        np.testing.assert_array_equal(model(input_ids=ids).logits.numpy(), back(input_ids=ids).logits.numpy())
