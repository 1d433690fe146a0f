"""Parity checks against Hugging Face transformers 4.57.1 and 5.x (CPU, float32), as a mixin for each family's
test class.

The reference side runs `hf_reference.py` in separate environments named by PADDLEMIX_REF_PYTHON (transformers
4.57.1) and PADDLEMIX_REF5_PYTHON (the current 5.x), both built by scripts/run_tests.sh; the checks of a missing one
are skipped with the reason. A family's test class inherits `HFParity`, defines a class-scoped `source_dir` fixture
naming its tiny folder and may set `pixel_atol` (see test_qwen3_vl_parity.py); every check then runs once per
reference version, on a folder that version's transformers saved itself (`hf_make.py`: its config keys,
checkpoint names, processor and tokenizer files) from that source with every tensor randomised.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import paddle
import pytest
from PIL import Image

from paddlemix.auto import AutoModelMIX, AutoProcessorMIX
from paddlemix.datasets.conversation import Message, Sample
from paddlemix.models import adapter_for
from paddlemix.peft.lora import (
    apply_lora,
    fold_adapter,
    load_adapter,
    lora_modules,
    save_adapter,
)
from paddlemix.peft.merge import merge_adapter
from paddlemix.processors.chat_template import template_for
from paddlemix.testing.lora import perturb_lora

REF_PYTHON = os.environ.get("PADDLEMIX_REF_PYTHON")
requires_reference = pytest.mark.skipif(
    not REF_PYTHON, reason="PADDLEMIX_REF_PYTHON (a Python with torch + transformers 4.57.1) is not set"
)
# Reference versions (test ids) -> the variable naming their Python and what it must hold.
REFERENCES = {
    "hf4": ("PADDLEMIX_REF_PYTHON", "transformers 4.57.1"),
    "hf5": ("PADDLEMIX_REF5_PYTHON", "transformers 5.x"),
}
HERE = Path(__file__).parent
QUESTION, ANSWER = "What color is the circle?", "red"
INPUT_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")
LOGITS_ATOL = 1e-4


def reference_python(version: str) -> str:
    """The Python of reference `version` (a key of REFERENCES); skips the test when its variable is not set."""
    variable, what = REFERENCES[version]
    python = os.environ.get(variable)
    if not python:
        pytest.skip(f"{variable} (a Python with torch + {what}) is not set")
    return python


def available_references() -> dict[str, str]:
    """Reference version -> its Python, for the versions whose variable is set."""
    return {version: os.environ[variable] for version, (variable, _) in REFERENCES.items() if os.environ.get(variable)}


def make_hf_folder(python: str, source: Path, out: Path, seed: int = 0) -> Path:
    """A tiny folder saved by the transformers of `python` from `source` (see hf_make.py)."""
    proc = subprocess.run([python, str(HERE / "hf_make.py"), str(source), str(out), str(seed)],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def reference(model_dir: Path, tmp_path: Path, python: str | None = None, **request) -> dict[str, np.ndarray]:
    """Run hf_reference.py on `model_dir` with `request` (see its docstring) in `python` (default: the 4.57
    environment) and return its outputs."""
    request_path, out = tmp_path / "request.json", tmp_path / "ref.npz"
    request_path.write_text(json.dumps(request))
    proc = subprocess.run(
        [python or REF_PYTHON, str(HERE / "hf_reference.py"), str(model_dir), str(request_path), str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return dict(np.load(out))


def peft_reference(command: str, model_dir: Path, adapter_dir: Path, inputs: dict, tmp_path: Path, *spec: str,
                   python: str | None = None) -> dict:  # fmt: skip
    """Run hf_peft.py (`load` our adapter with PEFT, or `make` one with PEFT) on `inputs` in `python` (default: the
    4.57 environment); returns its outputs."""
    np.savez(tmp_path / "peft_inputs.npz", **{k: inputs[k] for k in INPUT_KEYS if k in inputs})
    out = tmp_path / "peft_out.npz"
    proc = subprocess.run(
        [python or REF_PYTHON, str(HERE / "hf_peft.py"), command, str(model_dir), str(adapter_dir),
         str(tmp_path / "peft_inputs.npz"), str(out), *spec],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return dict(np.load(out))


def lora_on(model_dir: Path, targets: list[str] | None = None, **kwargs):
    """The tiny model with LoRA (r=4, alpha=8) on `targets` (the family's defaults if None)."""
    modules = lora_modules(model_dir, adapter_for(model_dir), targets)
    return apply_lora(AutoModelMIX.from_pretrained(model_dir), modules, 4, 8, **kwargs)


def check_peft_round_trip(model_dir: Path, inputs: dict, tmp_path: Path, targets: list[str], to_save: list[str],
                          peft_spec: dict, what: str, python: str | None = None) -> None:  # fmt: skip
    """Both ways: PEFT loads our adapter (no missing or unexpected keys, same logits), and an adapter PEFT made
    with random non-zero weights gives PEFT's logits here, before and after merging."""
    ours = lora_on(model_dir, targets, modules_to_save=to_save)
    perturb_lora(ours, seed=5)
    params = dict(ours.named_parameters())
    rng = np.random.default_rng(6)
    for name in params:
        if any(name.startswith(m + ".") for m in to_save):
            params[name].set_value((params[name].numpy() + rng.normal(0, 0.05, params[name].shape)).astype("float32"))
    expected = paddle_logits(ours, inputs)
    save_adapter(ours, tmp_path / "ours", model_dir)
    loaded = peft_reference("load", model_dir, tmp_path / "ours", inputs, tmp_path, python=python)
    assert list(loaded["missing"]) == [] and list(loaded["unexpected"]) == []
    adapted = {name.removesuffix(".lora_A") for name in loaded["adapted"]}
    assert len(adapted) == len(ours.lora_spec.modules), f"PEFT adapted {sorted(adapted)[:4]}..., we have more"
    diff = np.abs(loaded["logits"] - expected).max()
    print(f"{what}: max |PEFT(our adapter) - paddle(base+LoRA)| = {diff:.2e}")
    assert diff <= LOGITS_ATOL

    made = peft_reference("make", model_dir, tmp_path / "theirs", inputs, tmp_path, json.dumps(peft_spec),
                          python=python)  # fmt: skip
    theirs = load_adapter(AutoModelMIX.from_pretrained(model_dir), tmp_path / "theirs")
    base = paddle_logits(AutoModelMIX.from_pretrained(model_dir), inputs)
    assert np.abs(made["logits"] - base).max() > 1e-3, "the PEFT adapter must change the logits"
    diff = np.abs(paddle_logits(theirs, inputs) - made["logits"]).max()
    merged = np.abs(paddle_logits(fold_adapter(theirs), inputs) - made["logits"]).max()
    merged_dir = merge_adapter(model_dir, tmp_path / "theirs", tmp_path / "theirs_merged")  # the merge tool's path
    streamed = np.abs(paddle_logits(AutoModelMIX.from_pretrained(merged_dir), inputs) - made["logits"]).max()
    print(f"{what}: max |paddle(PEFT adapter) - PEFT| = {diff:.2e}, merged {merged:.2e}, merge tool {streamed:.2e}")
    assert diff <= LOGITS_ATOL and merged <= LOGITS_ATOL and streamed <= LOGITS_ATOL


def chat(with_image: bool) -> list[dict]:
    """One question and answer as HF chat messages, with the image in front of the question if asked."""
    question = [{"type": "image"}] * with_image + [{"type": "text", "text": QUESTION}]
    return [
        {"role": "user", "content": question},
        {"role": "assistant", "content": [{"type": "text", "text": ANSWER}]},
    ]


def paddle_logits(model, inputs: dict[str, np.ndarray]) -> np.ndarray:
    with paddle.no_grad():
        return model(**{k: paddle.to_tensor(inputs[k]) for k in INPUT_KEYS if k in inputs}).logits.numpy()


class HFParity:
    """Processor, training encoder, logits, the merged-LoRA export and PEFT both ways, each compared with
    transformers 4.57.1 and 5.x on the folder that version saved; the merged export is loaded by every version."""

    pixel_atol = 1e-6
    # False: compare on `source_dir` itself (a layout transformers no longer writes, e.g. a release's flat config).
    resave = True
    # The reference versions that implement the family (a family test class narrows `ref_python`'s params too).
    references: tuple[str, ...] = tuple(sorted(REFERENCES))

    @pytest.fixture(scope="class", params=sorted(REFERENCES))
    def ref_python(self, request) -> str:
        return reference_python(request.param)

    @pytest.fixture(scope="class")
    def model_dir(self, source_dir: Path, ref_python: str, tmp_path_factory) -> Path:
        if not self.resave:
            return source_dir
        return make_hf_folder(ref_python, source_dir, tmp_path_factory.mktemp(f"hf_{source_dir.name}"))

    @pytest.fixture(scope="class")
    def image_path(self, tmp_path_factory) -> Path:
        rng = np.random.default_rng(0)
        path = tmp_path_factory.mktemp("img") / "img.png"
        Image.fromarray(rng.integers(0, 255, (84, 56, 3), dtype=np.uint8)).save(path)
        return path

    @pytest.fixture(scope="class")
    def hf_out(self, model_dir: Path, image_path: Path, ref_python: str, tmp_path_factory) -> dict[str, np.ndarray]:
        """HF's processor and model on an image + text conversation."""
        tmp = tmp_path_factory.mktemp("ref")
        return reference(model_dir, tmp, ref_python, messages=chat(with_image=True), images=[str(image_path)])

    @pytest.fixture(scope="class")
    def model(self, model_dir: Path):
        return AutoModelMIX.from_pretrained(model_dir)

    def test_processor_matches_hf(self, model_dir: Path, image_path: Path, hf_out) -> None:
        processor = AutoProcessorMIX.from_pretrained(model_dir)
        image = Image.open(image_path).convert("RGB")
        ours = processor(text=[str(hf_out["text"])], images=[image], return_tensors="np")
        np.testing.assert_array_equal(np.asarray(ours["input_ids"]), hf_out["input_ids"])
        np.testing.assert_array_equal(np.asarray(ours["image_grid_thw"]), hf_out["image_grid_thw"])
        np.testing.assert_allclose(np.asarray(ours["pixel_values"]), hf_out["pixel_values"], atol=self.pixel_atol)

    def test_training_encoder_matches_hf(self, model_dir: Path, image_path: Path, hf_out) -> None:
        processor = AutoProcessorMIX.from_pretrained(model_dir)
        encoder = adapter_for(model_dir).sample_processor(processor, 4096)
        sample = Sample((Message("user", "<image>" + QUESTION), Message("assistant", ANSWER)), (str(image_path),))
        ours = encoder(sample, template_for(processor))
        hf_ids = hf_out["input_ids"][0]
        # HF's template ends the last turn with "<|im_end|>\n"; both must agree on every token they share.
        np.testing.assert_array_equal(ours["input_ids"], hf_ids[: len(ours["input_ids"])])
        assert len(hf_ids) - len(ours["input_ids"]) <= 1
        np.testing.assert_allclose(ours["pixel_values"], hf_out["pixel_values"], atol=self.pixel_atol)

    def test_logits_match_hf(self, model, hf_out) -> None:
        diff = np.abs(paddle_logits(model, hf_out) - hf_out["logits"]).max()
        print(f"image+text: max |logits - HF logits| = {diff:.2e}")
        assert diff <= LOGITS_ATOL

    def test_text_only_logits_match_hf(self, model, model_dir: Path, ref_python: str, tmp_path: Path) -> None:
        hf_text = reference(model_dir, tmp_path, ref_python, messages=chat(with_image=False), images=[])
        assert "pixel_values" not in hf_text
        diff = np.abs(paddle_logits(model, hf_text) - hf_text["logits"]).max()
        print(f"text only: max |logits - HF logits| = {diff:.2e}")
        assert diff <= LOGITS_ATOL

    def test_hf_loads_merged_lora_model_with_same_logits(
        self, model_dir: Path, hf_out, ref_python: str, tmp_path: Path
    ) -> None:
        lora = lora_on(model_dir)
        perturb_lora(lora, seed=0)
        expected = paddle_logits(lora, hf_out)
        assert np.abs(expected - hf_out["logits"]).max() > 1e-3, "the adapter must change the logits"
        save_adapter(lora, tmp_path / "adapter")
        merged = merge_adapter(model_dir, tmp_path / "adapter", tmp_path / "merged")
        inputs = tmp_path / "inputs.npz"
        np.savez(inputs, **{k: hf_out[k] for k in INPUT_KEYS})
        for version, python in available_references().items():  # the folder this version saved, merged, loads in all
            if version not in self.references:
                continue
            hf_merged = reference(merged, tmp_path, python, inputs=str(inputs))
            diff = np.abs(hf_merged["logits"] - expected).max()
            print(f"max |HF {version}(merged) - paddle(base+LoRA)| = {diff:.2e}")
            assert diff <= LOGITS_ATOL

    def test_peft_round_trip(self, model_dir: Path, hf_out, ref_python: str, tmp_path: Path) -> None:
        """q/v/gate/down of the language model (slices of fused layers), the vision tower's qkv, and the merger as
        a fully trained module; PEFT's own adapter on q/v."""
        targets = ["q_proj", "v_proj", "gate_proj", "down_proj", "model.visual.*qkv"]
        spec = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "modules_to_save": ["merger"]}
        check_peft_round_trip(
            model_dir, hf_out, tmp_path, targets, ["model.visual.merger"], spec, model_dir.name, ref_python
        )
