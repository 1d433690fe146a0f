"""Write a tiny, randomly initialised Qwen2.5-VL checkpoint in the Hugging Face folder layout.

Tests and demos load it with the real loading code, so nothing has to be downloaded from a model hub.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from paddlemix.models.llava.processor import CLIP_MEAN, CLIP_STD
from paddlemix.utils.io import write_json

# Qwen2's pre-tokenizer split pattern (the same one the slow Qwen2Tokenizer uses).
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Added tokens in Qwen2.5-VL's order, with Qwen's "special" flags.
ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
    ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False),
)  # fmt: skip
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black", "cyan", "pink", "brown", "gray")
SHAPES = ("circle", "square", "triangle", "rectangle", "star", "ellipse", "diamond", "line")
SIZES = ("small", "large", "big", "tiny")
POSITIONS = ("left", "right", "top", "bottom", "center", "top left corner", "bottom right corner")
MAX_LENGTH = 4096
# The demo's model: big enough to learn the shapes task in about a minute on a 2-core CPU.
DEMO_SIZE = {"hidden_size": 128, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 256,
             "vision_hidden": 64, "vision_depth": 2, "vision_heads": 2}  # fmt: skip


def default_corpus() -> list[str]:
    """Short English lines about shapes, colours, questions and captions used to train the tiny tokenizer."""
    lines = ["You are a helpful assistant.", "system", "user", "assistant", "Yes.", "No.", "0 1 2 3 4 5 6 7 8 9"]
    lines += [". , ; : ! ? ' \" ( ) [ ] { } - + = * / % # @ & < > _ |", "There are 3 shapes in the image."]
    lines += [f"The {size} object is at the {pos} of the image." for size in SIZES for pos in POSITIONS]
    lines += [f"Count: {n}. There {'is' if n == 1 else 'are'} {n} object{'s' * (n != 1)}." for n in range(13)]
    for i, colour in enumerate(COLORS):
        lines += [colour, colour.capitalize(), f"The answer is {colour}.", f"Is the background {colour}?"]
        for j, shape in enumerate(SHAPES):
            background = COLORS[(i + j + 1) % len(COLORS)]
            lines += [
                f"What color is the {shape}?", f"What shape is {colour}?", f"The {shape} is {colour}.",
                f"a {colour} {shape} on a {background} background", f"Describe the image: a {colour} {shape}.",
                f"How many {shape}s are there? {i + j}", f"Is there a {colour} {shape} in the picture?",
            ]  # fmt: skip
    return lines


def _train_tokenizer(
    corpus: Iterable[str], vocab_size: int, added: tuple[tuple[str, bool], ...] = ADDED_TOKENS
) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=1, show_progress=False, initial_alphabet=alphabet
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    for content, special in added:  # one at a time so ids follow Qwen's order
        token = AddedToken(content, single_word=False, lstrip=False, rstrip=False, normalized=False, special=special)
        (tok.add_special_tokens if special else tok.add_tokens)([token])
    return tok


def _write_tokenizer(
    out: Path, tok: Tokenizer, chat_template: str = CHAT_TEMPLATE, added: tuple[tuple[str, bool], ...] = ADDED_TOKENS,
    eos_token: str = "<|im_end|>",
) -> dict[str, int]:  # fmt: skip
    tok.save(str(out / "tokenizer.json"))
    tok.model.save(str(out))  # vocab.json + merges.txt for the slow Qwen2Tokenizer
    ids = {content: tok.token_to_id(content) for content, _ in added}
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    decoder = {str(ids[c]): {"content": c, **flags, "special": s} for c, s in added}
    extra = [c for c, s in added if s and c != "<|endoftext|>"]
    write_json(
        {
            "add_bos_token": False,
            "add_prefix_space": False,
            "added_tokens_decoder": decoder,
            "additional_special_tokens": extra,
            "bos_token": None,
            "chat_template": chat_template,
            "clean_up_tokenization_spaces": False,
            "eos_token": eos_token,
            "errors": "replace",
            "model_max_length": MAX_LENGTH,
            "pad_token": "<|endoftext|>",
            "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer",
            "unk_token": None,
        },
        out / "tokenizer_config.json",
    )
    special_map = {"eos_token": eos_token, "pad_token": "<|endoftext|>"}
    write_json(
        {"additional_special_tokens": extra, **{k: {"content": v, **flags} for k, v in special_map.items()}},
        out / "special_tokens_map.json",
    )
    write_json({"chat_template": chat_template}, out / "chat_template.json")
    return ids


def _tokenized_folder(
    out_dir: str | Path,
    corpus: Iterable[str] | None,
    vocab_size: int,
    added: tuple[tuple[str, bool], ...] = ADDED_TOKENS,
    chat_template: str = CHAT_TEMPLATE,
    eos_token: str = "<|im_end|>",
) -> tuple[Path, Tokenizer, dict[str, int]]:
    """Create `out_dir` and write into it a BPE tokenizer trained on `default_corpus()` plus `corpus` (every tiny
    builder's first step): returns the folder, the tokenizer and the ids of the `added` tokens."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = _train_tokenizer([*default_corpus(), *(corpus or [])], vocab_size, added)
    return out, tok, _write_tokenizer(out, tok, chat_template, added, eos_token)


def _check_vl_sizes(
    hidden_size: int, num_heads: int, num_kv_heads: int, vision_hidden: int, vision_heads: int
) -> None:
    """Qwen2-VL / Qwen3-VL size rules: heads divide the widths, kv heads the heads, even head_dim, vision head_dim
    a multiple of 4 (its 2-D rotary halves)."""
    head_dim, vision_head_dim = hidden_size // num_heads, vision_hidden // max(vision_heads, 1)
    if hidden_size % num_heads or num_heads % num_kv_heads or head_dim % 2 or vision_head_dim % 4:
        raise ValueError(
            "heads must divide the hidden sizes and kv heads the heads; head_dim must be even and the vision "
            "head_dim a multiple of 4"
        )


def _linear(shapes: dict[str, tuple[int, ...]], name: str, out_dim: int, in_dim: int) -> None:
    shapes.update({f"{name}.weight": (out_dim, in_dim), f"{name}.bias": (out_dim,)})


def _layer_norm(shapes: dict[str, tuple[int, ...]], name: str, dim: int) -> None:
    shapes.update({f"{name}.weight": (dim,), f"{name}.bias": (dim,)})


def _vision_blocks(
    shapes: dict[str, tuple[int, ...]], prefix: str, depth: int, dim: int, inter: int, fc: tuple[str, str]
) -> None:
    """ViT blocks with LayerNorms and biased Linears, as Qwen2-VL and Qwen3-VL store them: `{prefix}{i}.norm1`,
    `norm2`, `attn.qkv`, `attn.proj`, `mlp.{fc[0]}`, `mlp.{fc[1]}` (in this order, which the random weights follow)."""
    for i in range(depth):
        p = f"{prefix}{i}."
        _layer_norm(shapes, p + "norm1", dim), _layer_norm(shapes, p + "norm2", dim)
        _linear(shapes, p + "attn.qkv", 3 * dim, dim), _linear(shapes, p + "attn.proj", dim, dim)
        _linear(shapes, f"{p}mlp.{fc[0]}", inter, dim), _linear(shapes, f"{p}mlp.{fc[1]}", dim, inter)


def _lm_weight_shapes(cfg: dict, qkv_bias: bool = True) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a Qwen2/Llama decoder as HF stores them: ``model.*``, and ``lm_head`` unless tied."""
    v, h, inter = cfg["vocab_size"], cfg["hidden_size"], cfg["intermediate_size"]
    head_dim = h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * head_dim, cfg["num_key_value_heads"] * head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,)})
        for name, out_dim in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            shapes[f"{p}self_attn.{name}.weight"] = (out_dim, h)
            if qkv_bias:
                shapes[f"{p}self_attn.{name}.bias"] = (out_dim,)
        shapes[p + "self_attn.o_proj.weight"] = (h, q)
        shapes.update({p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h)})
        shapes[p + "mlp.down_proj.weight"] = (h, inter)
    shapes["model.norm.weight"] = (h,)
    if not cfg.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (v, h)
    return shapes


def _weight_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes as stored in Qwen2.5-VL checkpoints (``model.*``, ``visual.*``, ``lm_head``)."""
    h, vc = cfg["hidden_size"], cfg["vision_config"]
    shapes = _lm_weight_shapes(cfg)
    vh, vi, ps, tps = vc["hidden_size"], vc["intermediate_size"], vc["patch_size"], vc["temporal_patch_size"]
    shapes["visual.patch_embed.proj.weight"] = (vh, vc["in_channels"], tps, ps, ps)
    for i in range(vc["depth"]):
        p = f"visual.blocks.{i}."
        shapes.update({p + "norm1.weight": (vh,), p + "norm2.weight": (vh,)})
        shapes.update({p + "attn.qkv.weight": (3 * vh, vh), p + "attn.qkv.bias": (3 * vh,)})
        shapes.update({p + "attn.proj.weight": (vh, vh), p + "attn.proj.bias": (vh,)})
        for name, (o, i_) in (("gate_proj", (vi, vh)), ("up_proj", (vi, vh)), ("down_proj", (vh, vi))):
            shapes.update({f"{p}mlp.{name}.weight": (o, i_), f"{p}mlp.{name}.bias": (o,)})
    merged = vh * vc["spatial_merge_size"] ** 2
    shapes.update({"visual.merger.ln_q.weight": (vh,), "visual.merger.mlp.0.weight": (merged, merged)})
    shapes.update({"visual.merger.mlp.0.bias": (merged,), "visual.merger.mlp.2.weight": (h, merged)})
    shapes["visual.merger.mlp.2.bias"] = (h,)
    return shapes


def _random_weights(shapes: dict[str, tuple[int, ...]], seed: int, bias_std: float = 0.0) -> dict[str, np.ndarray]:
    """N(0, 0.02) weights, unit norm scales, and biases that are zero unless `bias_std` is set."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in shapes.items():
        if name.endswith(".bias"):
            bias = rng.normal(0.0, bias_std, size=shape) if bias_std else np.zeros(shape)
            tensors[name] = bias.astype(np.float32)
        elif "norm" in name or name.endswith("ln_q.weight"):
            tensors[name] = np.ones(shape, dtype=np.float32)
        else:
            tensors[name] = rng.normal(0.0, 0.02, size=shape).astype(np.float32)
    return tensors


def _model_vocab_size(tok: Tokenizer) -> int:
    """The model's vocabulary: the tokenizer's size rounded up to a multiple of 64, as Qwen checkpoints pad it."""
    return -(-tok.get_vocab_size(with_added_tokens=True) // 64) * 64


def _image_processor_config(processor_class: str, patch_size: int, mean: list[float], std: list[float]) -> dict:
    """preprocessor_config.json of a Qwen2-VL-style image processor, capped at 4 x 4 merged patches per image so
    tests stay fast (at least 2 x 2 worth of pixels)."""
    factor = patch_size * 2  # one merged patch
    min_pixels, max_pixels = (2 * factor) ** 2, (4 * factor) ** 2
    # fmt: off
    return {
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": processor_class,
        "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "do_convert_rgb": True, "image_mean": mean, "image_std": std,
        "min_pixels": min_pixels, "max_pixels": max_pixels,
        "size": {"shortest_edge": min_pixels, "longest_edge": max_pixels},
        "patch_size": patch_size, "temporal_patch_size": 2, "merge_size": 2,
    }
    # fmt: on


def _write_model(
    out: Path, config: dict, preprocessor: dict, ids: dict[str, int], weights: dict[str, np.ndarray],
    base_layout: bool = False,
) -> Path:  # fmt: skip
    """Write config.json, generation_config.json, preprocessor_config.json and model.safetensors into `out`; with
    `base_layout` the eos ids are `<|endoftext|>` alone, as in a base (pretrained, not chat) checkpoint."""
    eot, im_end = ids["<|endoftext|>"], ids["<|im_end|>"]
    write_json(config, out / "config.json")
    eos = eot if base_layout else [im_end, eot]
    generation = {"bos_token_id": eot, "pad_token_id": eot, "eos_token_id": eos, "do_sample": False}
    write_json(generation, out / "generation_config.json")
    write_json(preprocessor, out / "preprocessor_config.json")
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def build_tiny_qwen2_5_vl(
    out_dir: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    vision_hidden: int = 32,
    vision_depth: int = 2,
    vision_heads: int = 2,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 600,
    seed: int = 0,
    base_layout: bool = False,
) -> Path:
    """Write a random-weight Qwen2.5-VL checkpoint (config, safetensors, trained BPE tokenizer, processor files).

    ``vocab_size`` is the BPE training target; the model's vocabulary is the tokenizer's size rounded up to 64.
    ``base_layout``: laid out like a base checkpoint, whose config, generation_config.json and tokenizer name
    `<|endoftext|>` as eos (the chat template still ends answers with `<|im_end|>`).
    """
    head_dim = hidden_size // num_heads
    if hidden_size % num_heads or num_heads % num_kv_heads or head_dim % 2 or vision_hidden % vision_heads:
        raise ValueError("heads must divide the hidden sizes, kv heads the heads, and head_dim must be even")
    eos_token = "<|endoftext|>" if base_layout else "<|im_end|>"
    out, tok, ids = _tokenized_folder(out_dir, corpus, vocab_size, eos_token=eos_token)
    eot, im_end = ids["<|endoftext|>"], ids["<|im_end|>"]
    hw_section = 3 * (head_dim // 2) // 8  # Qwen's [16, 24, 24] split of head_dim / 2, scaled down
    # fmt: off
    vision_config = {
        "model_type": "qwen2_5_vl", "depth": vision_depth, "hidden_size": vision_hidden, "hidden_act": "silu",
        "intermediate_size": 2 * vision_hidden, "num_heads": vision_heads, "in_channels": 3, "patch_size": 14,
        "spatial_merge_size": 2, "temporal_patch_size": 2, "tokens_per_second": 2, "window_size": 112,
        "fullatt_block_indexes": [i for i in range(vision_depth) if i % 2 == 1 or i == vision_depth - 1],
        "out_hidden_size": hidden_size, "initializer_range": 0.02,
    }
    config = {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
        "bos_token_id": eot, "eos_token_id": eot if base_layout else im_end, "pad_token_id": eot,
        "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"], "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "hidden_act": "silu", "hidden_size": hidden_size, "intermediate_size": intermediate_size,
        "num_hidden_layers": num_layers, "num_attention_heads": num_heads, "num_key_value_heads": num_kv_heads,
        "attention_dropout": 0.0, "initializer_range": 0.02, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [head_dim // 2 - 2 * hw_section, hw_section, hw_section]},
        "max_position_embeddings": MAX_LENGTH, "max_window_layers": num_layers, "sliding_window": MAX_LENGTH,
        "use_sliding_window": False, "tie_word_embeddings": False, "torch_dtype": "float32", "use_cache": True,
        "vocab_size": _model_vocab_size(tok), "vision_config": vision_config,
    }
    # fmt: on
    preprocessor = _image_processor_config("Qwen2_5_VLProcessor", 14, CLIP_MEAN, CLIP_STD)
    weights = _random_weights(_weight_shapes(config), seed)
    return _write_model(out, config, preprocessor, ids, weights, base_layout)
