"""Build a LLaVA model folder from a CLIP vision folder and a Qwen2/Llama causal LM folder, on files only.

This is the LLaVA-from-scratch recipe: the LM's tokenizer gains a special "<image>" token, the LM's embeddings (and
lm_head unless tied) get a row for it, a seeded two-layer MLP projector maps CLIP features to the LM width, and the
result is written as transformers 4.57's `LlavaForConditionalGeneration` + `LlavaProcessor` would save it:

    vision_tower.vision_model.*        <- the CLIP folder's vision_model.* (a full CLIP folder's text half is dropped;
                                          a CLIPVisionModel saved by transformers 5.x has no vision_model. level)
    multi_modal_projector.linear_{1,2} <- N(0, initializer_range) weights, zero biases
    language_model.model.*, language_model.lm_head.weight <- the LM's model.* and lm_head.weight

Parts saved by transformers 5.x are written in the spelling both generations read (the LM's `rope_parameters` as
`rope_theta` + `rope_scaling`, its tokenizer_config.json as `tokenizer_config_for_both` says), so the folder loads
alike in transformers 4.57 and 5.x. Only numpy, safetensors and tokenizers are used, so no model is instantiated and bf16 checkpoints load (as float32).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from paddlemix.models.adapter import check_safe_weights
from paddlemix.models.hf_config import rope_for_both, tokenizer_config_for_both
from paddlemix.models.hf_layout import clip_vision_name
from paddlemix.models.llava.processor import CLIP_MEAN, CLIP_STD, IMAGE_TOKEN, clip_image_settings
from paddlemix.processors.chat_template import read_template_file
from paddlemix.utils.errors import UserError
from paddlemix.utils.io import atomic_dir, read_json, save_safetensors, write_json

logger = logging.getLogger(__name__)

VISION_TYPES = ("clip_vision_model", "clip")
TEXT_TYPES = ("qwen2", "llama")
SELECT_STRATEGIES = ("default", "full")
VOCAB_MULTIPLE = 64
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "added_tokens.json", "tokenizer.model")  # fmt: skip
# transformers' CLIPVisionConfig defaults, written out so every reader of the folder sees the same values.
CLIP_VISION_DEFAULTS = {
    "hidden_size": 768, "intermediate_size": 3072, "projection_dim": 512, "num_hidden_layers": 12,
    "num_attention_heads": 12, "num_channels": 3, "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5, "attention_dropout": 0.0, "initializer_range": 0.02, "initializer_factor": 1.0,
}  # fmt: skip
NOT_COPIED = ("architectures", "transformers_version", "_name_or_path", "dtype", "torch_dtype")
TOKEN_FLAGS = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


def read_config(folder: Path, allowed: tuple[str, ...], role: str) -> dict[str, Any]:
    """config.json of the `role` folder (the CLI flag's name), checked to be one of the `allowed` model types."""
    path = folder / "config.json"
    if not path.is_file():
        raise UserError(f"--{role} {folder} is not a model folder: config.json is missing.")
    config = read_json(path)
    if config.get("model_type") not in allowed:
        raise UserError(
            f'{path}: model_type "{config.get("model_type")}" cannot be the {role}; expected one of '
            f"{', '.join(allowed)}."
        )
    return config


def read_weights(folder: Path) -> dict[str, np.ndarray]:
    """Every tensor of the folder's *.safetensors files (sharded or not), floats as float32."""
    import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, so bf16 checkpoints can be read)
    from safetensors.numpy import load_file

    check_safe_weights(folder)
    weights: dict[str, np.ndarray] = {}
    for file in sorted(folder.glob("*.safetensors")):
        for name, value in load_file(str(file)).items():
            weights[name] = value if value.dtype.kind in "iub" else value.astype(np.float32)
    return weights


def vision_parts(folder: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The CLIP vision config (`clip_vision_model`) and its weights renamed under `vision_tower.`."""
    config = read_config(folder, VISION_TYPES, "vision_model")
    if config["model_type"] == "clip":  # a full CLIP model: keep its vision half
        config = config.get("vision_config") or {}
    vision = {**CLIP_VISION_DEFAULTS, **{k: v for k, v in config.items() if k not in NOT_COPIED}}
    vision.update({"model_type": "clip_vision_model", "torch_dtype": "float32"})
    if vision["image_size"] % vision["patch_size"]:
        raise UserError(f"{folder}/config.json: image_size {vision['image_size']} is not a multiple of patch_size.")
    weights = {
        f"vision_tower.{clip_vision_name(name)}": value
        for name, value in read_weights(folder).items()
        if clip_vision_name(name).startswith("vision_model.") and not name.endswith("position_ids")
    }
    if not weights:
        raise UserError(
            f"{folder}: the safetensors files hold no CLIP vision tower tensors (vision_model.*, or embeddings.* and "
            "encoder.* as transformers 5.x saves a CLIPVisionModel). Pass a CLIP or CLIPVisionModel folder."
        )
    return vision, weights


def lm_chat_template(folder: Path, tokenizer_config: dict[str, Any]) -> str | None:
    """The LM's own template: tokenizer_config.json's (the "default" one of a list), chat_template.jinja or .json."""
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if template:
        return template
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if (folder / "chat_template.json").is_file():
        return read_json(folder / "chat_template.json").get("chat_template")
    return None


def read_chat_template(path: str | Path) -> str:
    """The Jinja text of a chat template file: a chat_template.json ({"chat_template": ...}) or a Jinja file."""
    if not Path(path).is_file():
        raise UserError(f"chat template {path} does not exist; give a chat_template.json or a Jinja file.")
    template = read_template_file(path)
    if isinstance(template, dict):
        raise UserError(
            f'{path} is a PaddleMIX "conversation" template; a LLaVA folder stores a Jinja template, so give a '
            'chat_template.json with a "chat_template" string or a Jinja file.'
        )
    return template


def _token_text(value: Any) -> str | None:
    """A special token as written in tokenizer files: a string or {"content": ...}."""
    return value.get("content") if isinstance(value, dict) else value


def _pad_token(lm_dir: Path, config: dict[str, Any], special_map: dict[str, Any], vocab: dict[str, int]) -> str:
    """The LM's pad token, else its eos token (logged)."""
    pad = _token_text(config.get("pad_token")) or _token_text(special_map.get("pad_token"))
    if not pad:
        pad = _token_text(config.get("eos_token")) or _token_text(special_map.get("eos_token"))
        if not pad:
            raise UserError(f"{lm_dir}/tokenizer_config.json names neither a pad_token nor an eos_token.")
        logger.info("%s has no pad token; using its eos token %s as pad token", lm_dir, pad)
    if pad not in vocab:
        raise UserError(f'{lm_dir}/tokenizer_config.json: pad token "{pad}" is not in tokenizer.json.')
    return pad


@dataclass(frozen=True)
class TokenizerChange:
    """What adding "<image>" did to the LM's tokenizer."""

    old_ids: np.ndarray  # ids of every token before the change
    image_token_index: int
    pad_token: str
    pad_token_id: int
    chat_template: str


def add_image_token(lm_dir: Path, out: Path, chat_template: str | None) -> TokenizerChange:
    """Copy the LM's tokenizer files into `out` with "<image>" added as a special token and the pad token set."""
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if not (lm_dir / name).is_file():
            raise UserError(
                f"{lm_dir} has no {name}; the LM's tokenizer must be saved by a fast (tokenizers) tokenizer."
            )
    config = read_json(lm_dir / "tokenizer_config.json")
    template = chat_template or lm_chat_template(lm_dir, config)
    if not template:
        raise UserError(
            f"{lm_dir} has no chat template (tokenizer_config.json, chat_template.jinja or chat_template.json); "
            "pass one with --chat_template FILE."
        )
    from tokenizers import AddedToken, Tokenizer

    tok = Tokenizer.from_file(str(lm_dir / "tokenizer.json"))
    vocab = tok.get_vocab(with_added_tokens=True)
    if IMAGE_TOKEN in vocab:
        raise UserError(
            f"{lm_dir}/tokenizer.json already has {IMAGE_TOKEN} (id {vocab[IMAGE_TOKEN]}); use a plain LM."
        )
    tok.add_special_tokens([AddedToken(IMAGE_TOKEN, **TOKEN_FLAGS)])
    image_id = tok.token_to_id(IMAGE_TOKEN)
    for name in TOKENIZER_FILES:
        if (lm_dir / name).is_file():
            shutil.copy2(lm_dir / name, out / name)
    tok.save(str(out / "tokenizer.json"))
    special_map_path = out / "special_tokens_map.json"
    special_map = read_json(special_map_path) if special_map_path.is_file() else {}
    pad = _pad_token(lm_dir, config, special_map, vocab)
    config.setdefault("added_tokens_decoder", {})[str(image_id)] = {
        "content": IMAGE_TOKEN,
        **TOKEN_FLAGS,
        "special": True,
    }
    config.update({"pad_token": pad, "chat_template": template})
    write_json(tokenizer_config_for_both(config), out / "tokenizer_config.json")
    write_json({**special_map, "pad_token": {"content": pad, **TOKEN_FLAGS}}, special_map_path)
    if (out / "added_tokens.json").is_file():  # slow tokenizers read their added tokens from here
        added = read_json(out / "added_tokens.json")
        write_json({**added, IMAGE_TOKEN: image_id}, out / "added_tokens.json")
    check = Tokenizer.from_file(str(out / "tokenizer.json")).encode(f"a{IMAGE_TOKEN}b", add_special_tokens=False)
    if image_id not in check.ids:
        raise RuntimeError(f"{out}/tokenizer.json does not encode {IMAGE_TOKEN} as one token")
    old_ids = np.asarray(sorted(vocab.values()), dtype=np.int64)
    return TokenizerChange(old_ids, image_id, pad, vocab[pad], template)


def grow_rows(matrix: np.ndarray, old_ids: np.ndarray, new_id: int) -> np.ndarray:
    """Rows for a vocabulary with `new_id` added: rows of `old_ids` unchanged; the row of `new_id` and any added row
    set to the mean of the `old_ids` rows. The matrix grows (to a multiple of 64) only when `new_id` does not fit."""
    mean = matrix[old_ids].astype(np.float64).mean(axis=0).astype(np.float32)  # [hidden]
    rows = max(matrix.shape[0], -(-(new_id + 1) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE)
    out = np.empty((rows, matrix.shape[1]), dtype=np.float32)  # [vocab, hidden]
    out[: matrix.shape[0]] = matrix
    out[matrix.shape[0] :] = mean
    out[new_id] = mean
    return out


def language_weights(folder: Path, config: dict[str, Any], change: TokenizerChange) -> dict[str, np.ndarray]:
    """The LM's weights renamed under `language_model.`, with embeddings (and an untied lm_head) grown."""
    weights = read_weights(folder)
    tied = bool(config.get("tie_word_embeddings", False))
    for name in ("model.embed_tokens.weight",) + (() if tied else ("lm_head.weight",)):
        if name not in weights:
            raise UserError(f"{folder}: the safetensors files have no {name}.")
        if change.old_ids[-1] >= weights[name].shape[0]:
            raise UserError(
                f"{folder}: the tokenizer has ids up to {change.old_ids[-1]} but {name} has only "
                f"{weights[name].shape[0]} rows."
            )
        weights[name] = grow_rows(weights[name], change.old_ids, change.image_token_index)
    out = {}
    for name, value in weights.items():
        if name.startswith("model.") and not name.endswith("rotary_emb.inv_freq"):
            out["language_model." + name] = value
        elif name == "lm_head.weight" and not tied:
            out["language_model.lm_head.weight"] = value
    return out


def projector_weights(vision_hidden: int, text_hidden: int, std: float, seed: int) -> dict[str, np.ndarray]:
    """The two-layer MLP projector: N(0, std) weights from `seed`, zero biases."""
    rng = np.random.default_rng(seed)
    p = "multi_modal_projector."
    return {
        p + "linear_1.weight": rng.normal(0.0, std, (text_hidden, vision_hidden)).astype(np.float32),
        p + "linear_1.bias": np.zeros(text_hidden, dtype=np.float32),
        p + "linear_2.weight": rng.normal(0.0, std, (text_hidden, text_hidden)).astype(np.float32),
        p + "linear_2.bias": np.zeros(text_hidden, dtype=np.float32),
    }


def image_processor_config(vision_dir: Path, image_size: int) -> dict[str, Any]:
    """preprocessor_config.json: the CLIP folder's settings (CLIP's defaults if it has none), checked to give
    image_size x image_size pixels."""
    path = vision_dir / "preprocessor_config.json"
    raw = read_json(path) if path.is_file() else {}
    if not raw:
        logger.info("%s has no preprocessor_config.json; using CLIP's preprocessing defaults", vision_dir)
    settings = clip_image_settings(raw)
    # fmt: off
    config = {
        "image_processor_type": "CLIPImageProcessor", "processor_class": "LlavaProcessor",
        "do_resize": settings.get("do_resize", True), "size": settings.get("size", {"shortest_edge": image_size}),
        "resample": settings.get("resample", 3), "do_center_crop": settings.get("do_center_crop", True),
        "crop_size": settings.get("crop_size", {"height": image_size, "width": image_size}),
        "do_rescale": settings.get("do_rescale", True), "rescale_factor": settings.get("rescale_factor", 1 / 255),
        "do_normalize": settings.get("do_normalize", True), "image_mean": settings.get("image_mean", CLIP_MEAN),
        "image_std": settings.get("image_std", CLIP_STD), "do_convert_rgb": settings.get("do_convert_rgb", True),
    }
    # fmt: on
    final = config["crop_size"] if config["do_center_crop"] else config["size"]
    if (final.get("height"), final.get("width")) != (image_size, image_size):
        raise UserError(
            f"{path}: images come out as {final}, but the vision model takes {image_size} x {image_size} pixels; "
            f'set "crop_size" to {image_size}.'
        )
    return config


def _check_choices(vision: dict[str, Any], layer: int, strategy: str) -> None:
    depth = vision["num_hidden_layers"]
    if not -(depth + 1) <= layer <= depth:
        raise UserError(f"vision_feature_layer {layer} is out of range for a {depth}-layer vision tower.")
    if strategy not in SELECT_STRATEGIES:
        raise UserError(
            f'vision_feature_select_strategy "{strategy}": expected one of {", ".join(SELECT_STRATEGIES)}.'
        )


def _check_output(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"output folder {out} exists and is not empty; choose a new --output_dir or empty it.")


def _llava_config(vision: dict, text: dict, image_token_index: int, layer: int, strategy: str) -> dict[str, Any]:
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    # fmt: off
    return {
        "architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
        "vision_config": vision, "text_config": text, "image_token_index": image_token_index,
        "projector_hidden_act": "gelu", "vision_feature_layer": layer, "vision_feature_select_strategy": strategy,
        "image_seq_length": patches, "multimodal_projector_bias": True,
        "tie_word_embeddings": bool(text.get("tie_word_embeddings", False)), "torch_dtype": "float32",
    }
    # fmt: on


def build_llava(
    vision_model: str | Path,
    language_model: str | Path,
    output_dir: str | Path,
    *,
    vision_feature_layer: int = -2,
    vision_feature_select_strategy: str = "default",
    chat_template: str | None = None,
    seed: int = 0,
) -> Path:
    """Write a LLaVA folder joining a CLIP vision folder and a Qwen2/Llama LM folder; `chat_template` is Jinja text
    that replaces the LM's own template."""
    vision_dir, lm_dir, out = Path(vision_model), Path(language_model), Path(output_dir)
    _check_output(out)
    vision, vision_weights = vision_parts(vision_dir)
    text = rope_for_both(read_config(lm_dir, TEXT_TYPES, "language_model"), lm_dir / "config.json")
    _check_choices(vision, vision_feature_layer, vision_feature_select_strategy)
    preprocessor = image_processor_config(vision_dir, vision["image_size"])
    with atomic_dir(out) as tmp:
        change = add_image_token(lm_dir, tmp, chat_template)
        lm_weights = language_weights(lm_dir, text, change)
        std = text.get("initializer_range", 0.02)
        projector = projector_weights(vision["hidden_size"], text["hidden_size"], std, seed)
        old_vocab, vocab = text.get("vocab_size"), lm_weights["language_model.model.embed_tokens.weight"].shape[0]
        text = {k: v for k, v in text.items() if k not in ("_name_or_path", "dtype")}
        text.update({"vocab_size": vocab, "pad_token_id": change.pad_token_id, "torch_dtype": "float32"})
        config = _llava_config(vision, text, change.image_token_index, vision_feature_layer,
                               vision_feature_select_strategy)  # fmt: skip
        write_json(config, tmp / "config.json")
        save_safetensors({**vision_weights, **projector, **lm_weights}, tmp / "model.safetensors")
        _write_processor_files(tmp, lm_dir, text, change, preprocessor, vision, vision_feature_select_strategy)
    logger.info("tokenizer: %d -> %d tokens; vocab_size (embedding rows): %s -> %d",
                len(change.old_ids), len(change.old_ids) + 1, old_vocab, vocab)  # fmt: skip
    logger.info("image_token_index %d (%s); pad token %s (id %d)", change.image_token_index, IMAGE_TOKEN,
                change.pad_token, change.pad_token_id)  # fmt: skip
    tokens = config["image_seq_length"] + (vision_feature_select_strategy == "full")
    logger.info("visual tokens per image: %d (%s strategy)", tokens, vision_feature_select_strategy)
    counts = [sum(v.size for v in part.values()) for part in (vision_weights, projector, lm_weights)]
    logger.info("parameters: vision %d, projector %d, language model %d, total %d", *counts, sum(counts))
    return out


def _write_processor_files(
    out: Path, lm_dir: Path, text: dict, change: TokenizerChange, preprocessor: dict, vision: dict, strategy: str
) -> None:
    """preprocessor_config.json, processor_config.json, chat_template.json and generation_config.json."""
    write_json(preprocessor, out / "preprocessor_config.json")
    processor = {"processor_class": "LlavaProcessor", "image_token": IMAGE_TOKEN, "patch_size": vision["patch_size"],
                 "vision_feature_select_strategy": strategy, "num_additional_image_tokens": 1}  # fmt: skip
    write_json(processor, out / "processor_config.json")
    write_json({"chat_template": change.chat_template}, out / "chat_template.json")
    path = lm_dir / "generation_config.json"
    generation = read_json(path) if path.is_file() else {}
    for key in ("bos_token_id", "eos_token_id"):
        if key not in generation and text.get(key) is not None:
            generation[key] = text[key]
    write_json({**generation, "pad_token_id": change.pad_token_id}, out / "generation_config.json")
