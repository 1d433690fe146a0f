"""Write a tiny, randomly initialised PaddleOCR-VL checkpoint in the released (original) folder layout.

Same tokenizer training as the Qwen builders (`tiny_model.py`), with PaddleOCR-VL's own special tokens, its flat
config.json (language-model keys at the top level, `vision_config` nested), `preprocessor_config.json` of its image
processor (14-pixel patches merged 2 x 2, mean/std 0.5), a `chat_template.jinja` of the chosen version and the
original tensor names: `visual.vision_model.*` (incl. `packing_position_embedding`), `mlp_AR.*`, `model.*`,
`lm_head.weight`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from paddlemix.models.paddleocr_vl import PACKING_POSITIONS
from paddlemix.models.paddleocr_vl.templates import chat_template
from paddlemix.testing.tiny_model import (
    MAX_LENGTH,
    _layer_norm,
    _linear,
    _model_vocab_size,
    _train_tokenizer,
    default_corpus,
)
from paddlemix.utils.io import write_json

# PaddleOCR-VL's special tokens (content, special), in the order their ids are given here.
ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<unk>", True), ("<s>", True), ("</s>", True), ("<|begin_of_sentence|>", True), ("<|end_of_sentence|>", True),
    ("<|IMAGE_START|>", True), ("<|IMAGE_PLACEHOLDER|>", True), ("<|IMAGE_END|>", True), ("<|video_pad|>", True),
)  # fmt: skip
# Small text lines for the tokenizer corpus: OCR task prompts and what the demo renders.
OCR_CORPUS = ["OCR:", "Table Recognition:", "Formula Recognition:", "Chart Recognition:", "Spotting:",
              "Seal Recognition:", "User: ", "Assistant: ", "Assistant:\n", "abcdefghijklmnopqrstuvwxyz",
              "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789"]  # fmt: skip


def _weight_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a PaddleOCR-VL checkpoint in the original layout (Linear weights [out, in])."""
    vc = cfg["vision_config"]
    v, h, inter, hd = cfg["vocab_size"], cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    vh, vi, ps = vc["hidden_size"], vc["intermediate_size"], vc["patch_size"]
    emb = "visual.vision_model.embeddings."
    shapes: dict[str, tuple[int, ...]] = {
        emb + "patch_embedding.weight": (vh, vc["num_channels"], ps, ps), emb + "patch_embedding.bias": (vh,),
        emb + "position_embedding.weight": ((vc["image_size"] // ps) ** 2, vh),
        emb + "packing_position_embedding.weight": (PACKING_POSITIONS, vh),
    }  # fmt: skip
    for i in range(vc["num_hidden_layers"]):
        p = f"visual.vision_model.encoder.layers.{i}."
        _layer_norm(shapes, p + "layer_norm1", vh), _layer_norm(shapes, p + "layer_norm2", vh)
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            _linear(shapes, f"{p}self_attn.{name}", vh, vh)
        _linear(shapes, p + "mlp.fc1", vi, vh), _linear(shapes, p + "mlp.fc2", vh, vi)
    _layer_norm(shapes, "visual.vision_model.post_layernorm", vh)
    if cfg.get("_pooling_head"):
        shapes.update(pooling_head_shapes(vh, vi))
    merged = vh * vc["spatial_merge_size"] ** 2
    _layer_norm(shapes, "mlp_AR.pre_norm", vh)
    _linear(shapes, "mlp_AR.linear_1", merged, merged), _linear(shapes, "mlp_AR.linear_2", h, merged)
    shapes["model.embed_tokens.weight"] = (v, h)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
                       p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
                       p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
                       p + "mlp.down_proj.weight": (h, inter), p + "input_layernorm.weight": (h,),
                       p + "post_attention_layernorm.weight": (h,)})  # fmt: skip
    shapes["model.norm.weight"] = (h,)
    if not cfg["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (v, h)
    return shapes


def pooling_head_shapes(width: int, inter: int) -> dict[str, tuple[int, ...]]:
    """SigLIP's attention-pooling head as some PaddleOCR-VL releases store it (`visual.vision_model.head.*`): a
    probe token, torch `nn.MultiheadAttention` (fused in_proj), a LayerNorm and an MLP. No model loads it."""
    p = "visual.vision_model.head."
    shapes: dict[str, tuple[int, ...]] = {p + "probe": (1, 1, width), p + "attention.in_proj_weight": (3 * width, width),
                                          p + "attention.in_proj_bias": (3 * width,)}  # fmt: skip
    _linear(shapes, p + "attention.out_proj", width, width)
    _layer_norm(shapes, p + "layernorm", width)
    _linear(shapes, p + "mlp.fc1", inter, width), _linear(shapes, p + "mlp.fc2", width, inter)
    return shapes


def _random_weights(
    shapes: dict[str, tuple[int, ...]], seed: int, width_scaled: bool = False
) -> dict[str, np.ndarray]:
    """Unit norm scales with zero norm biases; everything else normal with std 0.02 (transformers' `initializer_range`),
    or with `width_scaled` std 1 / sqrt(fan_in) for matrices and tables (fan_in: a Linear's input width, a patch's pixels, a
    table's width) with zero biases.

    0.02 suits the released widths (0.02 x sqrt(1024) ~ 0.6 of a unit gain per layer); at a width of 128 every
    layer's output is ~0.2 of its input, the image reaches the answer as ~1 % of its hidden state, and a tiny model
    needs hundreds of steps before it reads glyphs at all (the OCR demo measures this)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        is_norm = "norm" in name
        if is_norm and name.endswith(".weight"):
            out[name] = np.ones(shape, dtype=np.float32)
        elif is_norm or (width_scaled and name.endswith(".bias")):
            out[name] = np.zeros(shape, dtype=np.float32)
        else:
            fan_in = shape[-1] if len(shape) == 2 else int(np.prod(shape[1:])) if len(shape) > 2 else 1
            std = 1.0 / np.sqrt(fan_in) if width_scaled else 0.02
            out[name] = rng.normal(0.0, std, size=shape).astype(np.float32)
    return out


def _write_tokenizer(out: Path, corpus: Iterable[str], vocab_size: int, template: str) -> tuple[int, dict[str, int]]:
    """A byte-level BPE tokenizer trained on the corpus with PaddleOCR-VL's special tokens (tokenizer.json plus
    vocab.json/merges.txt); returns the model's vocabulary size and the special tokens' ids."""
    tok = _train_tokenizer([*default_corpus(), *OCR_CORPUS, *corpus], vocab_size, ADDED_TOKENS)
    tok.save(str(out / "tokenizer.json"))
    tok.model.save(str(out))
    ids = {content: tok.token_to_id(content) for content, _ in ADDED_TOKENS}
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    decoder = {str(ids[c]): {"content": c, **flags, "special": s} for c, s in ADDED_TOKENS}
    extra = [c for c, _ in ADDED_TOKENS if c not in ("<unk>", "<s>", "</s>")]
    write_json({
        "add_bos_token": False, "add_eos_token": False, "add_prefix_space": False, "added_tokens_decoder": decoder,
        "additional_special_tokens": extra, "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<unk>",
        "unk_token": "<unk>", "cls_token": "<|begin_of_sentence|>", "clean_up_tokenization_spaces": False,
        "errors": "replace", "model_max_length": MAX_LENGTH, "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        # transformers 5.x's PaddleOCR-VL processor reads `tokenizer.image_token` (as the released folders name it)
        "extra_special_tokens": {"image_token": "<|IMAGE_PLACEHOLDER|>"},
    }, out / "tokenizer_config.json")  # fmt: skip
    named = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<unk>", "unk_token": "<unk>",
             "cls_token": "<|begin_of_sentence|>"}  # fmt: skip
    write_json({"additional_special_tokens": extra, **{k: {"content": v, **flags} for k, v in named.items()}},
               out / "special_tokens_map.json")  # fmt: skip
    (out / "chat_template.jinja").write_text(template, encoding="utf-8")
    return _model_vocab_size(tok), ids


def build_tiny_paddleocr_vl(
    out_dir: str | Path,
    *,
    version: str = "1.0",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    vision_hidden: int = 32,
    vision_depth: int = 2,
    vision_heads: int = 2,
    max_merged_patches: int = 16,
    tie_word_embeddings: bool = False,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 600,
    seed: int = 0,
    with_template: bool = True,
    width_scaled_init: bool = False,
    pooling_head: bool = False,
) -> Path:
    """Write a random-weight PaddleOCR-VL checkpoint (config, safetensors, trained BPE tokenizer, processor files).

    Args:
        version: "1.0", "1.5" or "1.6": the chat template written (and `paddleocr_vl_version` in config.json).
        max_merged_patches: the image processor's max_pixels in merged 28 x 28 patches (at least 2 x 2 worth of
            pixels is kept as min_pixels), so tests stay fast.
        tie_word_embeddings: the head is the embedding table (no `lm_head.weight` in the file), as transformers 5.x
            builds every PaddleOCR-VL.
        with_template: write chat_template.jinja; without it the processor falls back to the version's template.
        width_scaled_init: weights of std 1 / sqrt(fan_in) instead of 0.02 (`_random_weights`): what a model this
            narrow needs to learn from images in a few hundred steps (the OCR demo).
        pooling_head: also write SigLIP's pooling head (`pooling_head_shapes`), which no model holds.
    """
    head_dim = hidden_size // num_heads
    if hidden_size % num_heads or num_heads % num_kv_heads or head_dim % 4 or (vision_hidden // vision_heads) % 4:
        raise ValueError("heads must divide the widths, kv heads the heads; head_dims must be multiples of 4")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab, ids = _write_tokenizer(out, corpus or [], vocab_size, chat_template(version))
    if not with_template:
        (out / "chat_template.jinja").unlink()
    section = head_dim // 2 * 3 // 8  # PaddleOCR-VL's [16, 24, 24] split of head_dim / 2, scaled down
    # fmt: off
    vision_config = {
        "model_type": "paddleocr_vl", "hidden_size": vision_hidden, "intermediate_size": 2 * vision_hidden,
        "num_hidden_layers": vision_depth, "num_attention_heads": vision_heads, "num_channels": 3,
        "image_size": 56, "patch_size": 14, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
        "attention_dropout": 0.0, "spatial_merge_size": 2, "temporal_patch_size": 2, "tokens_per_second": 2,
    }
    config = {
        "architectures": ["PaddleOCRVLForConditionalGeneration"], "model_type": "paddleocr_vl",
        "paddleocr_vl_version": version, "vocab_size": vocab, "hidden_size": hidden_size,
        "intermediate_size": intermediate_size, "num_hidden_layers": num_layers, "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads, "head_dim": head_dim, "hidden_act": "silu",
        "max_position_embeddings": MAX_LENGTH, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "rope_scaling": {"mrope_section": [head_dim // 2 - 2 * section, section, section], "rope_type": "default",
                         "type": "default"},
        "use_bias": False, "tie_word_embeddings": tie_word_embeddings, "torch_dtype": "float32", "use_cache": True,
        "pad_token_id": ids["<unk>"], "bos_token_id": ids["<s>"], "eos_token_id": ids["</s>"],
        "image_token_id": ids["<|IMAGE_PLACEHOLDER|>"], "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|IMAGE_START|>"], "vision_end_token_id": ids["<|IMAGE_END|>"],
        "vision_config": vision_config,
    }
    factor = 28
    preprocessor = {
        "image_processor_type": "PaddleOCRVLImageProcessor", "processor_class": "PaddleOCRVLProcessor",
        "do_resize": True, "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "do_convert_rgb": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "min_pixels": 4 * factor**2, "max_pixels": max_merged_patches * factor**2,
        "patch_size": 14, "temporal_patch_size": 1, "merge_size": 2,
    }
    # fmt: on
    write_json(config, out / "config.json")
    generation = {"bos_token_id": ids["<s>"], "eos_token_id": ids["</s>"], "pad_token_id": ids["<unk>"],
                  "do_sample": False}  # fmt: skip
    write_json(generation, out / "generation_config.json")
    write_json(preprocessor, out / "preprocessor_config.json")
    weights = _random_weights(_weight_shapes({**config, "_pooling_head": pooling_head}), seed, width_scaled_init)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out
