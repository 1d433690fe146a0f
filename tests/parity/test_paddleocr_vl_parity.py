"""Parity with Hugging Face transformers 5.x (`PaddleOCRVLForConditionalGeneration`; 4.57 has no PaddleOCR-VL) on a
tiny PaddleOCR-VL that transformers itself saved (CPU, float32), through paddleformers' classes and processor.

The checks are in hf_parity.py: processor ids, grids and pixels, the training encoder's ids, logits for text only
and image + text (max abs diff <= 1e-4), and transformers loading our merged-LoRA export with no missing or
unexpected keys; here also our saved full model, saves that carry SigLIP's pooling head, and the PEFT round trip
both ways (PEFT 0.21 on transformers 5.x). The tiny model ties its head to the embeddings, as transformers 5.x builds
every PaddleOCR-VL.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from hf_parity import (
    ANSWER,
    INPUT_KEYS,
    LOGITS_ATOL,
    QUESTION,
    HFParity,
    chat,
    check_peft_round_trip,
    lora_on,
    paddle_logits,
    reference,
    reference_python,
)
from PIL import Image

from paddlemix.auto import AutoModelMIX, AutoProcessorMIX
from paddlemix.datasets.conversation import Message, Sample
from paddlemix.models import adapter_for
from paddlemix.models.paddleocr_vl import paddle_name
from paddlemix.peft.lora import load_adapter, save_adapter
from paddlemix.peft.merge import merge_adapter
from paddlemix.peft.peft_format import PREFIX as PEFT_PREFIX
from paddlemix.processors.chat_template import template_for
from paddlemix.processors.sample_processor import IGNORE_INDEX
from paddlemix.testing.lora import perturb_lora
from paddlemix.testing.tiny_paddleocr_vl import build_tiny_paddleocr_vl
from paddlemix.trainer.sft import save_full_model
from paddlemix.utils.io import load_safetensors, save_safetensors, to_numpy

pytestmark = pytest.mark.slow  # a transformers process per check (about 2 minutes in all)


class TestPaddleOCRVLParity(HFParity):
    references = ("hf5",)

    @pytest.fixture(scope="class", params=["hf5"])
    def ref_python(self, request) -> str:
        return reference_python(request.param)

    @pytest.fixture(scope="class")
    def source_dir(self, tmp_path_factory) -> Path:
        return build_tiny_paddleocr_vl(tmp_path_factory.mktemp("tiny_ocr_parity"), tie_word_embeddings=True)

    def test_hf_loads_our_saved_model(self, model, model_dir: Path, hf_out, ref_python: str, tmp_path: Path) -> None:
        """Our full-model export (every tensor, packing_position_embedding included) loads in transformers with no
        missing or unexpected keys and gives our logits."""
        state = {k: to_numpy(v) for k, v in model.state_dict().items()}
        exported = adapter_for(model_dir).export_state_dict(state, model.config)
        assert "visual.vision_model.embeddings.packing_position_embedding.weight" in exported
        folder = tmp_path / "saved"
        shutil.copytree(model_dir, folder, ignore=shutil.ignore_patterns("*.safetensors"))
        save_safetensors(exported, folder / "model.safetensors")
        inputs = tmp_path / "inputs.npz"
        np.savez(inputs, **{k: hf_out[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")})
        hf_saved = reference(folder, tmp_path, ref_python, inputs=str(inputs))
        diff = np.abs(hf_saved["logits"] - paddle_logits(model, hf_out)).max()
        print(f"max |HF(our saved model) - paddle| = {diff:.2e}")
        assert diff <= LOGITS_ATOL

    def test_training_encoder_matches_hf(self, model_dir: Path, image_path: Path, hf_out) -> None:
        """Equal ids up to the answer. The v1 prompt ends with a space ("Assistant: "): training keeps the
        inference prompt's tokens (`... ":" " "` then the answer), where tokenizing the whole text as transformers'
        processor does merges the space into the answer (`" red"`)."""
        processor = AutoProcessorMIX.from_pretrained(model_dir)
        encoder = adapter_for(model_dir).sample_processor(processor, 4096)
        sample = Sample((Message("user", "<image>" + QUESTION), Message("assistant", ANSWER)), (str(image_path),))
        ours = encoder(sample, template_for(processor))
        start = int(np.argmax(ours["labels"] != IGNORE_INDEX))  # labels are shifted: the prompt's last token
        hf_ids, tokenizer = hf_out["input_ids"][0], processor.tokenizer
        np.testing.assert_array_equal(ours["input_ids"][:start], hf_ids[:start])
        assert tokenizer.decode(ours["input_ids"][start:]) == tokenizer.decode(hf_ids[start:]) == f" {ANSWER}</s>"
        assert len(ours["input_ids"]) == len(hf_ids) + 1
        np.testing.assert_allclose(ours["pixel_values"], hf_out["pixel_values"], atol=self.pixel_atol)

    def test_peft_round_trip(self, model_dir: Path, hf_out, ref_python: str, tmp_path: Path) -> None:
        """PEFT on transformers 5.x loads our adapter (written under 5.x's in-memory names, `hf5_name`) with no
        missing or unexpected keys and gives our logits; PEFT's own adapter gives PEFT's logits here, merged too.
        The language model's q/v/gate/down, the vision tower's q_proj and fc1, and the projector fully trained."""
        targets = ["q_proj", "v_proj", "gate_proj", "down_proj", r"visual\..*\.(q_proj|fc1)"]
        spec = {
            "r": 4,
            "lora_alpha": 8,
            "target_modules": ["q_proj", "v_proj", "fc1"],
            "modules_to_save": ["projector"],
        }
        check_peft_round_trip(model_dir, hf_out, tmp_path, targets, ["mlp_AR"], spec, model_dir.name, ref_python)
        # the PEFT adapter under the checkpoint's original names (as PaddleFormers names modules) reads the same
        theirs = tmp_path / "theirs"
        original = tmp_path / "theirs_original_names"
        shutil.copytree(theirs, original)
        tensors = load_safetensors(theirs / "adapter_model.safetensors")
        renamed = {PEFT_PREFIX + paddle_name(k.removeprefix(PEFT_PREFIX)): v for k, v in tensors.items()}
        assert any(k.startswith(PEFT_PREFIX + "model.layers.") for k in renamed)
        save_safetensors(renamed, original / "adapter_model.safetensors")
        logits = [
            paddle_logits(load_adapter(AutoModelMIX.from_pretrained(model_dir), d), hf_out) for d in (theirs, original)
        ]
        np.testing.assert_array_equal(logits[0], logits[1])


def test_hf_loads_saves_that_carry_the_pooling_head(tmp_path: Path) -> None:
    """A release with SigLIP's pooling head (`visual.vision_model.head.*`, in no model): transformers 5.x ignores
    `vision_model.head` on load (`_keys_to_ignore_on_load_unexpected`), so it reports no missing or unexpected keys
    for the release itself; our full save and our merge, which carry the head unchanged, load the same way
    (hf_reference.py asserts a clean load) and give our logits."""
    python = reference_python("hf5")
    source = build_tiny_paddleocr_vl(tmp_path / "release", tie_word_embeddings=True, pooling_head=True)
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (84, 56, 3), dtype=np.uint8)).save(image)
    original = reference(source, tmp_path, python, messages=chat(with_image=True), images=[str(image)])
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, **{k: original[k] for k in INPUT_KEYS})

    model = AutoModelMIX.from_pretrained(source)
    adapter = adapter_for(source)
    saved = tmp_path / "saved"
    shutil.copytree(source, saved, ignore=shutil.ignore_patterns("*.safetensors"))
    exported = adapter.export_state_dict({k: to_numpy(v) for k, v in model.state_dict().items()}, model.config)
    save_full_model(exported, str(source), adapter, model.config, saved)
    lora = lora_on(source)
    perturb_lora(lora, seed=0)
    save_adapter(lora, tmp_path / "adapter")
    merged = merge_adapter(source, tmp_path / "adapter", tmp_path / "merged")
    for folder, ours in ((saved, model), (merged, lora)):
        assert any(".head." in n for n in load_safetensors(folder / "model.safetensors")), folder.name
        hf = reference(folder, tmp_path, python, inputs=str(inputs))
        diff = np.abs(hf["logits"] - paddle_logits(ours, original)).max()
        print(f"{folder.name}: max |HF 5.x - paddle| = {diff:.2e}")
        assert diff <= LOGITS_ATOL
