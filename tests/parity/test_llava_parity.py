"""Parity of our Paddle LLaVA with Hugging Face `LlavaForConditionalGeneration` of transformers 4.57.1 and 5.x (CPU,
float32).

Each tiny model is built and saved by transformers itself in each reference environment (PADDLEMIX_REF_PYTHON,
PADDLEMIX_REF5_PYTHON), so the checkpoint names and the config.json are that version's own (5.x drops the CLIP
tower's `vision_model.` level and writes `rope_parameters`). Our model loads that folder; logits are compared with image +
text and text only (with padding), then our export and a merged LoRA are loaded back by transformers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hf_parity import (
    LOGITS_ATOL,
    REFERENCES,
    available_references,
    check_peft_round_trip,
    lora_on,
    paddle_logits,
    reference,
    reference_python,
)

from paddlemix.auto import AutoModelMIX
from paddlemix.models import adapter_for
from paddlemix.models.hf_config import write_for_both
from paddlemix.peft.lora import save_adapter
from paddlemix.peft.merge import merge_adapter
from paddlemix.testing.lora import perturb_lora
from paddlemix.utils.io import save_safetensors, to_numpy

VOCAB, IMAGE_TOKEN, IMAGE_SIZE, PATCH = 128, 127, 28, 14
LEGACY_PREFIXES = (
    "vision_tower.vision_model.",
    "multi_modal_projector.",
    "language_model.model.",
    "language_model.lm_head.",
)
# What 5.x writes: the same, but the CLIP tower without its `vision_model.` level.
HF5_PREFIXES = ("vision_tower.embeddings.", "vision_tower.encoder.", "vision_tower.pre_layrnorm.",
                "vision_tower.post_layernorm.", *LEGACY_PREFIXES[1:])  # fmt: skip

# Runs in the reference environment: build a tiny LLaVA from a config spec, randomise every tensor (HF's init leaves
# zero biases and unit norms, which would hide layout mistakes) and save it as transformers does.
BUILD_HF = """
import json, sys, torch, transformers
spec, out = json.loads(sys.argv[1]), sys.argv[2]
torch.manual_seed(spec.pop("seed"))
model = transformers.LlavaForConditionalGeneration(transformers.LlavaConfig(**spec)).eval()
with torch.no_grad():
    for name, p in model.named_parameters():
        p.copy_((1.0 if "norm" in name else 0.0) + 0.1 * torch.randn_like(p))
model.save_pretrained(out, safe_serialization=True)
"""


# Runs in a reference environment: load our tiny CLIP tower and LM with transformers and save them as it does.
SAVE_PARTS = """
import sys, transformers
clip, lm, out = sys.argv[1:]
transformers.CLIPVisionModel.from_pretrained(clip).save_pretrained(out + "/clip")
transformers.CLIPImageProcessor.from_pretrained(clip).save_pretrained(out + "/clip")
transformers.AutoModelForCausalLM.from_pretrained(lm).save_pretrained(out + "/lm")
transformers.AutoTokenizer.from_pretrained(lm).save_pretrained(out + "/lm")
"""


def llava_spec(text_type: str, tie: bool, feature_layer: int | list[int], strategy: str) -> dict:
    """A tiny HF LlavaConfig: 3-layer CLIP tower (28 px, 14 px patches) and a 2-layer Qwen2 or Llama LM."""
    text = {
        "model_type": text_type,
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 256,
        "tie_word_embeddings": tie,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "rope_theta": 1e6 if text_type == "qwen2" else 5e5,  # not the config classes' default (10000)
    }
    vision = {"model_type": "clip_vision_model", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 3,
              "num_attention_heads": 2, "image_size": IMAGE_SIZE, "patch_size": PATCH, "projection_dim": 8,
              "hidden_act": "quick_gelu"}  # fmt: skip
    return {"vision_config": vision, "text_config": text, "image_token_index": IMAGE_TOKEN,
            "vision_feature_layer": feature_layer, "vision_feature_select_strategy": strategy,
            "image_seq_length": (IMAGE_SIZE // PATCH) ** 2, "tie_word_embeddings": tie, "seed": 0}  # fmt: skip


CASES = {  # Qwen2 untied with the LLaVA-1.5 defaults; Llama tied, last layer, class token kept
    "qwen2": llava_spec("qwen2", tie=False, feature_layer=-2, strategy="default"),
    "llama": llava_spec("llama", tie=True, feature_layer=[-1, 1], strategy="full"),
}


@pytest.fixture(scope="module", params=sorted(REFERENCES))
def ref_python(request) -> str:
    return reference_python(request.param)


@pytest.fixture(scope="module", params=sorted(CASES))
def hf_dir(request, ref_python: str, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp(f"hf_llava_{request.param}")
    proc = subprocess.run([ref_python, "-c", BUILD_HF, json.dumps(CASES[request.param]), str(out)],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def model(hf_dir: Path):
    return AutoModelMIX.from_pretrained(hf_dir)


def make_inputs(config: dict, with_image: bool) -> dict[str, np.ndarray]:
    """Two rows: with images, one image each at different places; text only, the second row right-padded."""
    rng = np.random.default_rng(1)
    image_token, vision = config["image_token_index"], config["vision_config"]
    ids = rng.integers(2, min(image_token, config["text_config"]["vocab_size"]), size=(2, 16))
    mask = np.ones_like(ids)
    if not with_image:
        ids[1, 11:], mask[1, 11:] = 0, 0
        return {"input_ids": ids, "attention_mask": mask}
    size = vision["image_size"]
    tokens = (size // vision["patch_size"]) ** 2 + (config.get("vision_feature_select_strategy") == "full")
    ids = np.concatenate([ids[:, :2], np.full((2, tokens), image_token), ids[:, 2:]], axis=1)
    ids[1] = np.roll(ids[1], 5)  # the second image further right
    pixels = rng.normal(0, 1, (2, 3, size, size)).astype("float32")
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "pixel_values": pixels}


def hf_logits(model_dir: Path, inputs: dict[str, np.ndarray], tmp_path: Path, python: str) -> np.ndarray:
    np.savez(tmp_path / "inputs.npz", **inputs)
    return reference(model_dir, tmp_path, python, inputs=str(tmp_path / "inputs.npz"))["logits"]


def test_hf_writes_the_layout_we_read(hf_dir: Path) -> None:
    from paddlemix.utils.io import load_safetensors

    names = load_safetensors(hf_dir / "model.safetensors")
    version = json.loads((hf_dir / "config.json").read_text())["transformers_version"]
    assert all(name.startswith(LEGACY_PREFIXES if version.startswith("4.") else HF5_PREFIXES) for name in names)
    tied = json.loads((hf_dir / "config.json").read_text())["text_config"].get("tie_word_embeddings", False)
    assert ("language_model.lm_head.weight" in names) != tied


@pytest.mark.parametrize("with_image", [True, False], ids=["image+text", "text"])
def test_logits_match_hf(model, hf_dir: Path, with_image: bool, ref_python: str, tmp_path: Path) -> None:
    inputs = make_inputs(json.loads((hf_dir / "config.json").read_text()), with_image)
    ours, theirs = paddle_logits(model, inputs), hf_logits(hf_dir, inputs, tmp_path, ref_python)
    real = inputs["attention_mask"].astype(bool)  # pad rows are masked differently and never used
    diff = np.abs(ours - theirs)[real].max()
    print(f"{hf_dir.name} {'image+text' if with_image else 'text'}: max |logits - HF| = {diff:.2e}")
    assert np.abs(theirs).max() > 0.5, "logits too small to tell layouts apart"
    assert diff <= LOGITS_ATOL


def test_hf_loads_our_export_with_same_logits(hf_dir: Path, tmp_path: Path) -> None:
    """Change every parameter in Paddle, export, and let transformers load the folder strictly."""
    model = AutoModelMIX.from_pretrained(hf_dir)
    rng = np.random.default_rng(2)
    for _, param in model.named_parameters():
        param.set_value((param.numpy() + rng.normal(0, 0.05, param.shape)).astype("float32"))
    inputs = make_inputs(json.loads((hf_dir / "config.json").read_text()), with_image=True)
    out = tmp_path / "export"
    out.mkdir()
    shutil.copy(hf_dir / "config.json", out / "config.json")
    write_for_both(out)  # as the SFT save does with the files it copies
    state = {k: to_numpy(v) for k, v in model.state_dict().items()}
    save_safetensors(adapter_for(hf_dir).export_state_dict(state, model.config), out / "model.safetensors")
    ours = paddle_logits(model, inputs)
    for version, python in available_references().items():  # saved from this version's folder, loads in all
        diff = np.abs(hf_logits(out, inputs, tmp_path, python) - ours).max()
        print(f"{hf_dir.name} export: max |HF {version}(export) - paddle| = {diff:.2e}")
        assert diff <= LOGITS_ATOL


def test_hf_loads_merged_lora_with_same_logits(model, hf_dir: Path, tmp_path: Path) -> None:
    inputs = make_inputs(json.loads((hf_dir / "config.json").read_text()), with_image=True)
    base = paddle_logits(model, inputs)
    lora = lora_on(hf_dir)
    perturb_lora(lora, seed=3, std=0.1)
    expected = paddle_logits(lora, inputs)
    assert np.abs(expected - base).max() > 1e-3, "the adapter must change the logits"
    save_adapter(lora, tmp_path / "adapter")
    merged = merge_adapter(hf_dir, tmp_path / "adapter", tmp_path / "merged")
    for version, python in available_references().items():  # the folder this version saved, merged, loads in all
        diff = np.abs(hf_logits(merged, inputs, tmp_path, python) - expected).max()
        print(f"{hf_dir.name} merged LoRA: max |HF {version}(merged) - paddle(base+LoRA)| = {diff:.2e}")
        assert diff <= LOGITS_ATOL


def test_peft_round_trip(hf_dir: Path, ref_python: str, tmp_path: Path) -> None:
    """The language model's q/v/gate/down (fused slices with Qwen2, plain layers with Llama), CLIP's fc2 and the
    projector fully trained; PEFT's own adapter on q/v (which PEFT also puts on CLIP's q/v) and fc1."""
    inputs = make_inputs(json.loads((hf_dir / "config.json").read_text()), with_image=True)
    targets = ["q_proj", "v_proj", "gate_proj", "down_proj", "fc2"]
    spec = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "fc1"],
            "modules_to_save": ["multi_modal_projector"]}  # fmt: skip
    check_peft_round_trip(
        hf_dir, inputs, tmp_path, targets, ["model.multi_modal_projector"], spec, hf_dir.name, ref_python
    )


def test_builder_folder_logits_match_hf(tiny_llava_dir: Path, ref_python: str, tmp_path: Path) -> None:
    """The folder `build_llava` writes (tiny CLIP + tiny Qwen2 LM) gives HF's logits too."""
    inputs = make_inputs(json.loads((tiny_llava_dir / "config.json").read_text()), with_image=True)
    ours = paddle_logits(AutoModelMIX.from_pretrained(tiny_llava_dir), inputs)
    diff = np.abs(ours - hf_logits(tiny_llava_dir, inputs, tmp_path, ref_python)).max()
    print(f"build_llava folder image+text: max |logits - HF| = {diff:.2e}")
    assert diff <= LOGITS_ATOL


def test_builder_on_parts_saved_by_each_version_loads_in_both(
    tiny_clip_dir: Path, tiny_qwen2_lm_dir: Path, ref_python: str, tmp_path: Path
) -> None:
    """`build_llava` on a CLIP tower and an LM saved by this version's transformers (5.x: CLIP names without
    `vision_model.`, a `TokenizersBackend` tokenizer) writes a folder that every reference version loads with our
    logits and our token ids."""
    from paddlemix.models.llava.build import build_llava
    from paddlemix.models.llava.processor import LlavaProcessorMIX

    proc = subprocess.run([ref_python, "-c", SAVE_PARTS, str(tiny_clip_dir), str(tiny_qwen2_lm_dir), str(tmp_path)],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = build_llava(tmp_path / "clip", tmp_path / "lm", tmp_path / "llava")
    inputs = make_inputs(json.loads((out / "config.json").read_text()), with_image=True)
    ours = paddle_logits(AutoModelMIX.from_pretrained(out), inputs)
    text = "USER: <image>\nWhat color is the circle?<|im_end|>"
    ids = LlavaProcessorMIX.from_pretrained(out).tokenizer(text, add_special_tokens=False)["input_ids"]
    saver = next(v for v, (variable, _) in REFERENCES.items() if os.environ.get(variable) == ref_python)
    for version, python in available_references().items():
        diff = np.abs(ours - hf_logits(out, inputs, tmp_path, python)).max()
        print(f"build_llava on parts saved by {saver}, loaded by {version}: max |logits - HF| = {diff:.2e}")
        assert diff <= LOGITS_ATOL
        files = Path(__file__).parent / "hf_llava_files.py"
        proc = subprocess.run([python, str(files), "tokenizer", str(out), text], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert json.loads(proc.stdout.splitlines()[-1])["ids"] == [ids]


def test_processor_saved_by_each_version_matches_hf(tiny_llava_dir: Path, ref_python: str, tmp_path: Path) -> None:
    """The LLaVA processor files this version writes (5.x: no preprocessor_config.json, the image settings nested
    in processor_config.json, chat_template.jinja, its tokenizer files) give this version's pixels and ids."""
    from PIL import Image

    from paddlemix.models.llava.processor import LlavaProcessorMIX

    out = tmp_path / "saved"
    resave = "import sys, transformers; transformers.LlavaProcessor.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2])"
    proc = subprocess.run([ref_python, "-c", resave, str(tiny_llava_dir), str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    shutil.copy(tiny_llava_dir / "config.json", out / "config.json")
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(image)
    files = Path(__file__).parent / "hf_llava_files.py"
    text = "USER: <image>\nWhat color is the circle?"
    proc = subprocess.run([ref_python, str(files), "processor", str(out), str(tmp_path / "hf.npz"), text, str(image)],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    hf = np.load(tmp_path / "hf.npz")
    ours = LlavaProcessorMIX.from_pretrained(out)
    pixels = np.asarray(ours.image_processor(images=[Image.open(image)])["pixel_values"])
    np.testing.assert_allclose(pixels, hf["pixel_values"], atol=1e-6)
    image_id = ours.tokenizer.convert_tokens_to_ids("<image>")
    expanded = text.replace("<image>", "<image>" * int((hf["input_ids"][0] == image_id).sum()))
    assert ours.tokenizer(expanded, add_special_tokens=False)["input_ids"] == hf["input_ids"][0].tolist()
    assert ours.chat_template == json.loads(proc.stdout.splitlines()[-1])["chat_template"]
