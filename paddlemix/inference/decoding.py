"""Token-by-token decoding with a KV cache for every family: left-padded prompt batches, next-token choice, stops.

Why our own loop and not paddleformers' `model.generate`: in paddleformers 1.2 its
`update_model_kwargs_for_generation` keeps `past_key_values` only from tuples and `CausalLMOutputWithPast`, while
the Qwen-VL models return their own `ModelOutput` classes. The cache is dropped after every step, so each new token
re-runs the whole prompt and the vision tower (19.8 s per token for a 2B model on CPU). Here the prompt and its
images go through the model once (prefill); then one token per step goes through with the cache, at explicitly
computed positions (3-D mRoPE for Qwen-VL), so no per-model `rope_deltas` state is involved.

Layout of a left-padded batch (P = 0 pad, positions from each family's rule, e.g. Qwen's mRoPE for images):

    input_ids       P  P  a  b  c        attention_mask  0 0 1 1 1     positions (per row)  0 0 0 1 2
                    d  e  f  g  h                        1 1 1 1 1                          0 1 2 3 4
    next step:      next position of each row = its largest prompt position + 1 (then + 1 per token)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from paddlemix.datasets.packing import concat_vision, sample_positions
from paddlemix.utils.errors import UserError

# New tokens when neither generation_config.json nor the command line sets a length (transformers would stop at
# max_length 20, prompt included); the sampling defaults below (top_k 50, temperature 1, top_p 1) are transformers'.
DEFAULT_MAX_NEW_TOKENS = 32


@dataclass(frozen=True)
class GenerationSettings:
    """How to decode: length, stop and pad ids, and the next-token rule (greedy unless `do_sample`).

    `max_length` (prompt + new tokens, per row, as in transformers) applies only when `max_new_tokens` is None.
    Sampling order follows transformers: repetition penalty, temperature, top-k, top-p.
    """

    max_new_tokens: int | None = DEFAULT_MAX_NEW_TOKENS
    max_length: int | None = None
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    repetition_penalty: float = 1.0
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0
    origin: str = "defaults"  # where the values came from, for error messages

    def __post_init__(self) -> None:
        checks = {
            "max_new_tokens": self.max_new_tokens is None or self.max_new_tokens >= 1,
            "max_length": self.max_length is None or self.max_length >= 1,
            "temperature": self.temperature >= 0,
            "top_p": 0 < self.top_p <= 1,
            "top_k": self.top_k >= 0,
            "repetition_penalty": self.repetition_penalty > 0,
        }
        for key, ok in checks.items():
            if not ok:
                raise UserError(
                    f"{self.origin}: {key} = {getattr(self, key)!r} is out of range (max_new_tokens and max_length "
                    "at least 1, temperature at least 0, top_p in (0, 1], top_k at least 0 (0 = off), "
                    f"repetition_penalty above 0). Fix {key} there."
                )
        if self.max_new_tokens is None and self.max_length is None:
            raise UserError(f"{self.origin}: set max_new_tokens or max_length.")

    def with_overrides(self, origin: str = "command line", **values: Any) -> GenerationSettings:
        """A copy with the values that are not None replaced (command-line flags left unset keep these)."""
        given = {k: v for k, v in values.items() if v is not None}
        if "max_new_tokens" in given:
            given.setdefault("max_length", None)
        elif "max_length" in given:
            given["max_new_tokens"] = None
        if given.get("eos_token_ids") is not None:
            given["eos_token_ids"] = token_ids(given["eos_token_ids"])
        return replace(self, **given, origin=origin) if given else self

    def with_requests(self, **values: Any) -> GenerationSettings:
        """`with_overrides` for a user's request: a temperature given without `do_sample` also turns sampling on
        (above 0) or off (0), as infer.py's `--temperature` always did."""
        if values.get("temperature") is not None and values.get("do_sample") is None:
            values["do_sample"] = values["temperature"] > 0
        return self.with_overrides(**values)

    def budget(self, prompt_length: int) -> int:
        """New tokens allowed after a prompt of `prompt_length` real tokens (at least 0)."""
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        return max(int(self.max_length) - prompt_length, 0)


def token_ids(value: int | Sequence[int] | None) -> tuple[int, ...]:
    """eos_token_id as written in configs (an int, a list, or null) -> a tuple of ids."""
    if value is None:
        return ()
    if isinstance(value, (int, np.integer)):
        return (int(value),)
    return tuple(int(v) for v in value)


GENERATION_CONFIG = "generation_config.json"
# generation_config.json keys that set decoding defaults (GenerationSettings fields) and their JSON types.
CONFIG_KEYS = {"max_new_tokens": int, "max_length": int, "do_sample": bool, "temperature": float, "top_p": float,
               "top_k": int, "repetition_penalty": float}  # fmt: skip
CHECKPOINT_DTYPES = ("float32", "bfloat16", "float16")


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or {} when the file does not exist."""
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}). Fix or remove the file.") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} must hold a JSON object, not {type(value).__name__}. Fix or remove the file.")
    return value


def config_value(config: Any, key: str) -> Any:
    """`key` of a model config, else of its text sub-config (Qwen3-VL and LLaVA keep token ids there)."""
    value = getattr(config, key, None)
    return value if value is not None else getattr(getattr(config, "text_config", None), key, None)


def _typed(value: Any, kind: type, key: str, path: Path) -> Any:
    """A generation_config.json value checked against its JSON type (ints are accepted where floats are)."""
    ok = isinstance(value, bool) if kind is bool else isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or (kind is int and value != int(value)):
        raise UserError(f"{path}: {key} = {value!r} must be {kind.__name__}. Fix or remove {key} in that file.")
    return kind(value)


def settings_for(model_dir: str | Path | None, model_config: Any = None, tokenizer: Any = None) -> GenerationSettings:
    """Decoding defaults of a model folder, as transformers reads them: generation_config.json's eos_token_id
    (int or list), pad_token_id and sampling/length keys, falling back to config.json's ids, then the tokenizer's.

    Raises:
        UserError: generation_config.json is not a JSON object, or one of its values is out of range.
    """
    path = Path(model_dir) / GENERATION_CONFIG if model_dir is not None else None
    values = read_json_object(path) if path is not None else {}
    eos = token_ids(values.get("eos_token_id"))
    eos = eos or token_ids(config_value(model_config, "eos_token_id"))
    eos = eos or token_ids(getattr(tokenizer, "eos_token_id", None))
    pad = values.get("pad_token_id")
    for fallback in (config_value(model_config, "pad_token_id"), getattr(tokenizer, "pad_token_id", None)):
        pad = fallback if pad is None else pad
    pad = pad if pad is not None else (eos or (0,))[0]
    chosen = {k: _typed(values[k], kind, k, path) for k, kind in CONFIG_KEYS.items() if values.get(k) is not None}
    if "max_length" in chosen and "max_new_tokens" not in chosen:
        chosen["max_new_tokens"] = None
    origin = str(path) if chosen else "defaults"
    return GenerationSettings(**chosen, eos_token_ids=eos, pad_token_id=int(pad), origin=origin)


def add_stop_ids(path: str | Path, stop_ids: Sequence[int], model_config: Any = None) -> tuple[list, list] | None:
    """Make generation_config.json at `path` list `stop_ids` among its eos ids, after the ones it has (else
    config.json's); the file is created when missing. Returns (eos ids before, after) when it changed, else None."""
    path = Path(path)
    values = read_json_object(path)
    before = list(token_ids(values.get("eos_token_id")) or token_ids(config_value(model_config, "eos_token_id")))
    after = before + [int(i) for i in dict.fromkeys(stop_ids) if int(i) not in before]
    if after == list(token_ids(values.get("eos_token_id"))):
        return None
    values["eos_token_id"] = after[0] if len(after) == 1 else after
    path.write_text(json.dumps(values, indent=2) + "\n", encoding="utf-8")
    return before, after


def load_dtype(model_dir: str | Path, device: str) -> str:
    """The dtype to load a model in for inference: the checkpoint's (config.json `torch_dtype` or `dtype`, also
    inside `text_config`) on accelerators; float32 on CPU, which lacks bfloat16 kernels (e.g. conv2d of the patch
    embeddings) and is slow in float16."""
    if device == "cpu":
        return "float32"
    config = read_json_object(Path(model_dir) / "config.json")
    for part in (config, config.get("text_config") or {}):
        for key in ("torch_dtype", "dtype"):
            if part.get(key) in CHECKPOINT_DTYPES:
                return part[key]
    return "float32"


@dataclass
class PromptBatch:
    """Left-padded prompts: numpy `input_ids` / `attention_mask` [B, L], `position_ids` [P, B, L] (P = 3 for
    mRoPE, 1 otherwise), `next_positions` [B] (the position of each row's first new token), `lengths` [B] (real
    tokens) and the images of all rows in row order (`pixel_values`, `image_grid_thw`), if any."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    position_ids: np.ndarray
    next_positions: np.ndarray
    lengths: np.ndarray
    vision: dict[str, np.ndarray] = field(default_factory=dict)


def left_pad(
    prompts: Sequence[dict[str, np.ndarray]],
    pad_token_id: int,
    positions: Callable[..., np.ndarray],
) -> PromptBatch:
    """Batch encoded prompts (`input_ids` [L_i], optional `pixel_values`, `image_grid_thw`) with left padding.

    `positions(input_ids, grid_thw) -> [P, L_i]` is the family's per-sample rule (ModelAdapter.position_fn), so
    each row gets exactly the positions it would get alone; pad slots get position 0 and attention 0.
    """
    lengths = np.asarray([len(p["input_ids"]) for p in prompts], dtype="int64")
    batch, length = len(prompts), int(lengths.max())
    per_row = [np.asarray(sample_positions(positions, p), dtype="int64") for p in prompts]
    input_ids = np.full((batch, length), pad_token_id, dtype="int64")
    attention_mask = np.zeros((batch, length), dtype="int64")
    position_ids = np.zeros((per_row[0].shape[0], batch, length), dtype="int64")
    for row, (prompt, pos) in enumerate(zip(prompts, per_row)):
        n = int(lengths[row])
        input_ids[row, length - n :] = prompt["input_ids"]
        attention_mask[row, length - n :] = 1
        position_ids[:, row, length - n :] = pos
    vision = concat_vision(prompts, cast=True)
    next_positions = np.asarray([int(pos.max()) + 1 for pos in per_row], dtype="int64")
    return PromptBatch(input_ids, attention_mask, position_ids, next_positions, lengths, vision)


def next_tokens(
    logits: np.ndarray, seen: np.ndarray, settings: GenerationSettings, rng: np.random.Generator
) -> np.ndarray:
    """The next token of each row [B] from float32 logits [B, vocab].

    `seen` [B, vocab] marks the tokens of each row so far (its real prompt tokens and its answer), for the
    repetition penalty (CTRL / transformers rule: positive logits divided by it, negative ones multiplied).
    """
    logits = logits.astype("float64")
    if settings.repetition_penalty != 1.0:
        penalised = np.where(logits > 0, logits / settings.repetition_penalty, logits * settings.repetition_penalty)
        logits = np.where(seen, penalised, logits)
    if not settings.do_sample or settings.temperature == 0:
        return logits.argmax(axis=-1)
    logits = logits / settings.temperature
    if 0 < settings.top_k < logits.shape[-1]:
        kth = np.sort(logits, axis=-1)[:, -settings.top_k][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if settings.top_p < 1.0:
        order = np.argsort(-probs, axis=-1, kind="stable")
        ranked = np.take_along_axis(probs, order, axis=-1)
        before = np.cumsum(ranked, axis=-1) - ranked  # mass of the more likely tokens
        ranked = np.where(before >= settings.top_p, 0.0, ranked)  # keeps at least the most likely token
        probs = np.zeros_like(probs)
        np.put_along_axis(probs, order, ranked, axis=-1)
        probs /= probs.sum(axis=-1, keepdims=True)
    return np.asarray([rng.choice(len(p), p=p) for p in probs], dtype="int64")


@dataclass
class Generated:
    """New tokens per row (ending with the eos id when the row stopped on one) and the wall time of the prompt
    pass (prefill, including the vision tower) and of the steps after it, in seconds."""

    tokens: list[list[int]]
    prefill_seconds: float
    decode_seconds: float

    @property
    def new_tokens(self) -> int:
        return sum(len(t) for t in self.tokens)

    @property
    def seconds(self) -> float:
        return self.prefill_seconds + self.decode_seconds


def _model_inputs(batch: PromptBatch) -> dict[str, Any]:
    import paddle

    inputs = {
        "input_ids": batch.input_ids,
        "attention_mask": batch.attention_mask,
        "position_ids": batch.position_ids,
        **batch.vision,
    }
    return {k: paddle.to_tensor(v) for k, v in inputs.items()}


def decode(
    model: Any,
    batch: PromptBatch,
    settings: GenerationSettings,
    use_cache: bool = True,
    rng: np.random.Generator | None = None,
    on_step: Callable[[list[list[int]]], None] | None = None,
) -> Generated:
    """Generate for every row of `batch` until its eos id or its token budget; `on_step(tokens)` (the tokens of
    every row so far) runs after each step, for streaming.

    `model(input_ids, attention_mask, position_ids [P, B, L], pixel_values?, image_grid_thw?, past_key_values,
    use_cache, logits_to_keep)` is any family's model. With `use_cache` the prompt (and the vision tower) runs
    once and each later step feeds one token per row; without it every step re-runs the whole sequence, images
    included (the baseline `benchmarks/generation_speed.py` compares against). Finished rows are fed the pad id.
    """
    import paddle

    rng = rng if rng is not None else np.random.default_rng(0)
    budgets = np.asarray([settings.budget(int(n)) for n in batch.lengths])
    rows = len(batch.lengths)
    eos = np.asarray(settings.eos_token_ids or (-1,), dtype="int64")
    tokens: list[list[int]] = [[] for _ in range(rows)]
    finished = budgets <= 0
    inputs = full = _model_inputs(batch)  # without the cache, `full` grows by one token per step
    mask, cache, seen, step = batch.attention_mask, None, None, 0
    prefill, start = 0.0, time.perf_counter()
    with paddle.no_grad():
        while not finished.all():
            out = model(**inputs, past_key_values=cache, use_cache=use_cache, logits_to_keep=1)
            logits = out.logits[:, -1].astype("float32").numpy()  # [B, vocab]
            if step == 0:
                prefill = time.perf_counter() - start
                seen = np.zeros(logits.shape, dtype=bool)
                for row in range(rows):
                    seen[row, batch.input_ids[row][batch.attention_mask[row] == 1]] = True
            chosen = np.where(finished, settings.pad_token_id, next_tokens(logits, seen, settings, rng))
            for row in np.flatnonzero(~finished):
                tokens[row].append(int(chosen[row]))
                seen[row, chosen[row]] = True
            finished = finished | np.isin(chosen, eos) | (np.asarray([len(t) for t in tokens]) >= budgets)
            step += 1
            if on_step is not None:
                on_step(tokens)
            if finished.all():
                break
            mask = np.concatenate([mask, np.ones((rows, 1), dtype="int64")], axis=1)
            position = np.broadcast_to(batch.next_positions + step - 1, (batch.position_ids.shape[0], rows))
            step_inputs = {"input_ids": chosen[:, None], "attention_mask": mask, "position_ids": position[..., None]}
            step_tensors = {k: paddle.to_tensor(np.ascontiguousarray(v)) for k, v in step_inputs.items()}
            if use_cache:
                cache, inputs = out.past_key_values, step_tensors
            else:
                for key in ("input_ids", "position_ids"):
                    full[key] = paddle.concat([full[key], step_tensors[key]], axis=-1)
                full["attention_mask"] = step_tensors["attention_mask"]
                inputs = full
    return Generated(tokens, prefill, time.perf_counter() - start - prefill)
