"""build_llava: the LLaVA-from-scratch recipe on files, checked tensor by tensor and against transformers 4.57."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file, save_file
from tokenizers import Tokenizer

from paddlemix.models.llava.build import build_llava, read_chat_template
from paddlemix.models.llava.processor import LlavaProcessorMIX
from paddlemix.testing.tiny_llava import build_tiny_causal_lm
from paddlemix.utils.errors import UserError

IMAGE = "<image>"
TEXTS = [IMAGE, f"USER: {IMAGE}\nWhat color is the circle?<|im_end|>", f"a{IMAGE}{IMAGE}b"]


def read(folder: Path, name: str) -> dict:
    return json.loads((folder / name).read_text())


def copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def full_llama_lm(tmp_path_factory) -> Path:
    """A tied Llama LM whose vocabulary is exactly its tokenizer (no spare rows), so "<image>" needs a new row."""
    lm = build_tiny_causal_lm(tmp_path_factory.mktemp("llama_lm"), "llama", tie_word_embeddings=True)
    size = Tokenizer.from_file(str(lm / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    tensors = load_file(str(lm / "model.safetensors"))
    tensors["model.embed_tokens.weight"] = tensors["model.embed_tokens.weight"][:size].copy()
    save_file(tensors, str(lm / "model.safetensors"), metadata={"format": "pt"})
    edit_json(lm / "config.json", vocab_size=size)
    return lm


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def built(request, tiny_clip_dir, tiny_qwen2_lm_dir, tiny_llava_dir, full_llama_lm, tmp_path_factory):
    """(LM folder, LLaVA folder): the session's Qwen2 LLaVA (defaults), and a tied Llama one with the last layer
    and the class token kept."""
    if request.param == "qwen2":
        return tiny_qwen2_lm_dir, tiny_llava_dir
    out = tmp_path_factory.mktemp("llava_llama")
    options = {"vision_feature_layer": -1, "vision_feature_select_strategy": "full", "seed": 1}
    return full_llama_lm, build_llava(tiny_clip_dir, full_llama_lm, out, **options)


def test_tokenizer_gains_one_special_image_token(built) -> None:
    lm, out = built
    old = Tokenizer.from_file(str(lm / "tokenizer.json"))
    new = Tokenizer.from_file(str(out / "tokenizer.json"))
    index = read(out, "config.json")["image_token_index"]
    assert new.get_vocab_size(with_added_tokens=True) == old.get_vocab_size(with_added_tokens=True) + 1
    assert new.token_to_id(IMAGE) == index and old.token_to_id(IMAGE) is None
    assert new.encode(f"a{IMAGE}b", add_special_tokens=False).ids.count(index) == 1
    assert read(out, "tokenizer_config.json")["added_tokens_decoder"][str(index)]["special"] is True
    for text in TEXTS[1:]:  # every other token keeps its id
        plain = text.replace(IMAGE, "")
        assert new.encode(plain, add_special_tokens=False).ids == old.encode(plain, add_special_tokens=False).ids


def test_hf_and_paddleformers_tokenizers_agree(built, hf_llava_files) -> None:
    lm, out = built
    index = read(out, "config.json")["image_token_index"]
    ours = LlavaProcessorMIX.from_pretrained(out).tokenizer
    ours_ids = [ours(text, add_special_tokens=False)["input_ids"] for text in TEXTS]
    assert ours_ids[0] == [index] and ours_ids[2].count(index) == 2
    lm_pad = read(lm, "tokenizer_config.json")["pad_token"]
    for args in ((out,), (out, "--slow")):
        hf = hf_llava_files("tokenizer", *args, *TEXTS)
        assert hf["image_token_id"] == index and hf["ids"] == ours_ids, hf["class"]
        assert hf["pad_token"] == ours.pad_token == lm_pad and hf["pad_token_id"] == ours.pad_token_id


def test_pad_token_aligned_with_the_lm(built) -> None:
    lm, out = built
    pad = read(lm, "tokenizer_config.json")["pad_token"]
    pad_id = Tokenizer.from_file(str(lm / "tokenizer.json")).token_to_id(pad)
    assert read(out, "tokenizer_config.json")["pad_token"] == pad
    assert read(out, "special_tokens_map.json")["pad_token"]["content"] == pad
    assert read(out, "config.json")["text_config"]["pad_token_id"] == pad_id
    assert read(out, "generation_config.json")["pad_token_id"] == pad_id


def test_embeddings_keep_old_rows_and_image_row_is_their_mean(built) -> None:
    lm, out = built
    old, new = load_file(str(lm / "model.safetensors")), load_file(str(out / "model.safetensors"))
    config = read(out, "config.json")
    index, vocab = config["image_token_index"], config["text_config"]["vocab_size"]
    old_ids = sorted(Tokenizer.from_file(str(lm / "tokenizer.json")).get_vocab(with_added_tokens=True).values())
    tied = config["tie_word_embeddings"]
    pairs = [("model.embed_tokens.weight", "language_model.model.embed_tokens.weight")]
    pairs += [] if tied else [("lm_head.weight", "language_model.lm_head.weight")]
    assert ("language_model.lm_head.weight" in new) != tied
    for old_name, new_name in pairs:
        before, after = old[old_name], new[new_name]
        assert after.shape == (vocab, before.shape[1]) and vocab % 64 == 0 and vocab >= index + 1
        np.testing.assert_array_equal(after[old_ids], before[old_ids])
        mean = before[old_ids].mean(axis=0)
        np.testing.assert_allclose(after[index], mean, atol=1e-7)
        spare = [i for i in range(before.shape[0]) if i not in old_ids and i != index]
        np.testing.assert_array_equal(after[spare], before[spare])  # unused rows of the LM stay as they were
        added = after[before.shape[0] :]  # rows the matrix grew by
        np.testing.assert_allclose(added, np.broadcast_to(mean, added.shape), atol=1e-7)


def test_vocab_grows_to_a_multiple_of_64_only_when_full(built) -> None:
    lm, out = built
    old_vocab, new_vocab = read(lm, "config.json")["vocab_size"], read(out, "config.json")["text_config"]["vocab_size"]
    index = read(out, "config.json")["image_token_index"]
    assert new_vocab == (old_vocab if index < old_vocab else -(-(index + 1) // 64) * 64)
    assert (new_vocab > old_vocab) == (lm.name.startswith("llama"))


def test_vision_and_language_weights_are_copied(built, tiny_clip_dir: Path) -> None:
    lm, out = built
    new = load_file(str(out / "model.safetensors"))
    for name, value in load_file(str(tiny_clip_dir / "model.safetensors")).items():
        np.testing.assert_array_equal(new["vision_tower." + name], value)
    for name, value in load_file(str(lm / "model.safetensors")).items():
        if "embed_tokens" not in name and name != "lm_head.weight":
            np.testing.assert_array_equal(new["language_model." + name], value)
    assert all(v.dtype == np.float32 for v in new.values())


def test_projector_is_seeded_normal_with_zero_biases(built, tiny_clip_dir: Path) -> None:
    lm, out = built
    new = load_file(str(out / "model.safetensors"))
    text_hidden, vision_hidden = (
        read(lm, "config.json")["hidden_size"],
        read(tiny_clip_dir, "config.json")["hidden_size"],
    )
    p = "multi_modal_projector."
    assert new[p + "linear_1.weight"].shape == (text_hidden, vision_hidden)
    assert new[p + "linear_2.weight"].shape == (text_hidden, text_hidden)
    assert not new[p + "linear_1.bias"].any() and not new[p + "linear_2.bias"].any()
    weights = np.concatenate([new[p + "linear_1.weight"].ravel(), new[p + "linear_2.weight"].ravel()])
    assert abs(weights.std() - 0.02) < 0.002 and abs(weights.mean()) < 0.002


def test_same_seed_same_projector_other_seed_other(tiny_clip_dir, tiny_qwen2_lm_dir, tiny_llava_dir, tmp_path) -> None:
    again = build_llava(tiny_clip_dir, tiny_qwen2_lm_dir, tmp_path / "again")
    other = build_llava(tiny_clip_dir, tiny_qwen2_lm_dir, tmp_path / "other", seed=5)
    name = "multi_modal_projector.linear_1.weight"
    first = load_file(str(tiny_llava_dir / "model.safetensors"))[name]
    np.testing.assert_array_equal(load_file(str(again / "model.safetensors"))[name], first)
    assert not np.allclose(load_file(str(other / "model.safetensors"))[name], first)


def test_config_and_processor_files_follow_the_contract(built, tiny_clip_dir: Path) -> None:
    lm, out = built
    config, clip = read(out, "config.json"), read(tiny_clip_dir, "config.json")
    strategy = config["vision_feature_select_strategy"]
    assert (config["model_type"], config["architectures"]) == ("llava", ["LlavaForConditionalGeneration"])
    assert config["vision_config"]["model_type"] == "clip_vision_model"
    assert {k: config["vision_config"][k] for k in ("hidden_size", "image_size", "patch_size")} == {
        k: clip[k] for k in ("hidden_size", "image_size", "patch_size")
    }
    assert config["text_config"]["model_type"] == read(lm, "config.json")["model_type"]
    assert config["image_seq_length"] == 16 and config["multimodal_projector_bias"] is True
    assert config["tie_word_embeddings"] == read(lm, "config.json")["tie_word_embeddings"]
    assert read(out, "processor_config.json") == {
        "processor_class": "LlavaProcessor", "image_token": IMAGE, "patch_size": 14,
        "vision_feature_select_strategy": strategy, "num_additional_image_tokens": 1,
    }  # fmt: skip
    preprocessor = read(out, "preprocessor_config.json")
    assert preprocessor["processor_class"] == "LlavaProcessor"
    assert preprocessor["crop_size"] == {"height": 56, "width": 56}
    lm_template = read(lm, "tokenizer_config.json")["chat_template"]
    assert read(out, "chat_template.json") == {"chat_template": lm_template}
    assert read(out, "generation_config.json")["eos_token_id"] == read(lm, "generation_config.json")["eos_token_id"]


def test_hf_loads_the_llava_folder_without_missing_keys(built, hf_llava_files) -> None:
    _, out = built
    report = hf_llava_files("load", "LlavaForConditionalGeneration", out)
    assert report["missing_keys"] == report["unexpected_keys"] == report["mismatched_keys"] == []
    assert report["parameters"] == sum(t.size for t in load_file(str(out / "model.safetensors")).values())


def test_hf_processor_expands_image_token_like_ours(built, hf_llava_files, tmp_path: Path) -> None:
    _, out = built
    image = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(image)
    hf_llava_files("processor", out, tmp_path / "hf.npz", f"USER: {IMAGE}\nWhat color?", image)
    hf = np.load(tmp_path / "hf.npz")
    ours = LlavaProcessorMIX.from_pretrained(out)
    pixels = ours.image_processor(images=[Image.open(image).convert("RGB")], return_tensors="np")
    t, h, w = pixels["image_grid_thw"][0]
    extra = ours.num_additional_image_tokens - (ours.vision_feature_select_strategy == "default")
    index = read(out, "config.json")["image_token_index"]
    assert (hf["input_ids"] == index).sum() == t * h * w + extra
    np.testing.assert_allclose(pixels["pixel_values"], hf["pixel_values"], atol=1e-5)


def test_lm_without_pad_token_pads_with_eos(tiny_clip_dir, tiny_qwen2_lm_dir, tmp_path, caplog) -> None:
    lm = copy_folder(tiny_qwen2_lm_dir, tmp_path / "lm")
    edit_json(lm / "tokenizer_config.json", pad_token=None)
    edit_json(lm / "special_tokens_map.json", pad_token=None)
    with caplog.at_level(logging.INFO, logger="paddlemix.models.llava.build"):
        out = build_llava(tiny_clip_dir, lm, tmp_path / "out")
    assert f"{lm} has no pad token; using its eos token <|im_end|>" in caplog.text
    eos_id = Tokenizer.from_file(str(lm / "tokenizer.json")).token_to_id("<|im_end|>")
    assert read(out, "tokenizer_config.json")["pad_token"] == "<|im_end|>"
    assert read(out, "config.json")["text_config"]["pad_token_id"] == eos_id


def test_full_clip_folder_gives_its_vision_half(tiny_clip_dir, tiny_qwen2_lm_dir, tmp_path) -> None:
    clip = copy_folder(tiny_clip_dir, tmp_path / "clip")
    vision = read(clip, "config.json")
    (clip / "config.json").write_text(json.dumps({"model_type": "clip", "vision_config": vision, "text_config": {}}))
    tensors = load_file(str(clip / "model.safetensors"))
    extra = {"text_model.embeddings.token_embedding.weight": np.ones((8, 4), np.float32),
             "logit_scale": np.ones((), np.float32), "visual_projection.weight": np.ones((4, 32), np.float32)}  # fmt: skip
    save_file({**tensors, **extra}, str(clip / "model.safetensors"))
    out = build_llava(clip, tiny_qwen2_lm_dir, tmp_path / "out")
    names = load_file(str(out / "model.safetensors"))
    assert {n[len("vision_tower.") :] for n in names if n.startswith("vision_tower.")} == set(tensors)
    assert not any("text_model" in n or "logit_scale" in n or "visual_projection" in n for n in names)
    assert read(out, "config.json")["vision_config"]["model_type"] == "clip_vision_model"


def test_parts_saved_by_transformers_5_build_the_same_llava(tiny_clip_dir, tiny_qwen2_lm_dir, tmp_path) -> None:
    """transformers 5.x saves a CLIPVisionModel without the `vision_model.` level and an LM tokenizer as
    `TokenizersBackend` with an `extra_special_tokens` list; the built folder equals the one from 4.x-shaped parts
    and keeps names and tokenizer files both generations read."""
    clip = copy_folder(tiny_clip_dir, tmp_path / "clip5")
    tensors = load_file(str(clip / "model.safetensors"))
    save_file({k.removeprefix("vision_model."): v for k, v in tensors.items()}, str(clip / "model.safetensors"))
    lm = copy_folder(tiny_qwen2_lm_dir, tmp_path / "lm5")
    config = read(lm, "tokenizer_config.json")
    specials = sorted(t["content"] for t in config["added_tokens_decoder"].values())
    edit_json(lm / "tokenizer_config.json", tokenizer_class="TokenizersBackend", backend="tokenizers",
              extra_special_tokens=specials, additional_special_tokens=None)  # fmt: skip
    old = load_file(str(build_llava(tiny_clip_dir, tiny_qwen2_lm_dir, tmp_path / "old") / "model.safetensors"))
    out = build_llava(clip, lm, tmp_path / "new")
    new = load_file(str(out / "model.safetensors"))
    assert new.keys() == old.keys() and all(np.array_equal(new[k], old[k]) for k in old)
    written = read(out, "tokenizer_config.json")
    assert written["tokenizer_class"] == "PreTrainedTokenizerFast" and "extra_special_tokens" not in written
    assert written["additional_special_tokens"] == specials
    ids = LlavaProcessorMIX.from_pretrained(out).tokenizer(TEXTS[1], add_special_tokens=False)["input_ids"]
    old_ids = LlavaProcessorMIX.from_pretrained(tmp_path / "old").tokenizer(TEXTS[1], add_special_tokens=False)
    assert ids == old_ids["input_ids"]


def test_bf16_language_model_is_read_as_float32(tiny_clip_dir, tiny_qwen2_lm_dir, tmp_path) -> None:
    import ml_dtypes

    lm = copy_folder(tiny_qwen2_lm_dir, tmp_path / "lm")
    tensors = load_file(str(lm / "model.safetensors"))
    bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in tensors.items()}
    save_file(bf16, str(lm / "model.safetensors"))
    out = load_file(str(build_llava(tiny_clip_dir, lm, tmp_path / "out") / "model.safetensors"))
    name = "model.layers.0.mlp.up_proj.weight"
    assert out["language_model." + name].dtype == np.float32
    np.testing.assert_array_equal(out["language_model." + name], bf16[name].astype(np.float32))


def test_chat_template_argument_replaces_the_lms(tiny_clip_dir, tiny_qwen2_lm_dir, tmp_path) -> None:
    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    out = build_llava(tiny_clip_dir, tiny_qwen2_lm_dir, tmp_path / "out", chat_template=template)
    assert read(out, "chat_template.json")["chat_template"] == template
    assert read(out, "tokenizer_config.json")["chat_template"] == template
    (tmp_path / "t.json").write_text(json.dumps({"chat_template": template}))
    (tmp_path / "t.jinja").write_text(template)
    assert read_chat_template(tmp_path / "t.json") == read_chat_template(tmp_path / "t.jinja") == template


def _no_config(clip: Path, lm: Path, tmp: Path) -> tuple[Path, Path, Path]:
    (tmp / "empty").mkdir()
    return tmp / "empty", lm, tmp / "empty"


def _lm_without_config(clip: Path, lm: Path, tmp: Path) -> tuple[Path, Path, Path]:
    (tmp / "empty").mkdir()
    return clip, tmp / "empty", tmp / "empty"


def _lm_as_vision(clip: Path, lm: Path, tmp: Path) -> tuple[Path, Path, Path]:
    return lm, lm, lm


def _clip_as_lm(clip: Path, lm: Path, tmp: Path) -> tuple[Path, Path, Path]:
    return clip, clip, clip


def _no_weights(clip: Path, lm: Path, tmp: Path) -> tuple[Path, Path, Path]:
    bare = copy_folder(clip, tmp / "clip")
    (bare / "model.safetensors").unlink()
    return bare, lm, bare


def _no_template(clip: Path, lm: Path, tmp: Path) -> tuple[Path, Path, Path]:
    bare = copy_folder(lm, tmp / "lm")
    edit_json(bare / "tokenizer_config.json", chat_template=None)
    return clip, bare, bare


ERRORS = {  # case -> (make inputs: (vision, lm, folder the message must name), message)
    "vision config missing": (_no_config, "config.json is missing"),
    "lm config missing": (_lm_without_config, "config.json is missing"),
    "vision model_type": (_lm_as_vision, 'model_type "qwen2" cannot be the vision_model'),
    "lm model_type": (_clip_as_lm, 'model_type "clip_vision_model" cannot be the language_model'),
    "no safetensors": (_no_weights, r"no \*.safetensors"),
    "no chat template": (_no_template, "no chat template .* --chat_template"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_clear_errors_name_the_folder(case: str, tiny_clip_dir, tiny_qwen2_lm_dir, tmp_path: Path) -> None:
    make, message = ERRORS[case]
    vision, lm, named = make(tiny_clip_dir, tiny_qwen2_lm_dir, tmp_path)
    with pytest.raises(UserError, match=message) as err:
        build_llava(vision, lm, tmp_path / "out")
    assert str(named) in str(err.value)
    assert not (tmp_path / "out").exists()


def test_non_empty_output_folder_is_refused(tiny_clip_dir, tiny_qwen2_lm_dir, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match=f"{tmp_path / 'out'} exists and is not empty"):
        build_llava(tiny_clip_dir, tiny_qwen2_lm_dir, tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


@pytest.mark.parametrize(
    "options, message",
    [({"vision_feature_layer": 3}, "vision_feature_layer 3 is out of range"),
     ({"vision_feature_select_strategy": "cls"}, 'strategy "cls"')],
)  # fmt: skip
def test_bad_feature_choices(options, message, tiny_clip_dir, tiny_qwen2_lm_dir, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=message):
        build_llava(tiny_clip_dir, tiny_qwen2_lm_dir, tmp_path / "out", **options)
