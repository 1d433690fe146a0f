"""config.json as either transformers generation writes it, read into the values paddleformers 1.2 expects.

transformers 4.x writes a language model's rotary settings as `rope_theta` plus `rope_scaling` ({"rope_type" or
"type", "mrope_section", "mrope_interleaved", "factor", ...}); 5.x writes one `rope_parameters` dict holding
`rope_theta` too and no `rope_theta` / `rope_scaling`. paddleformers 1.2's config classes read the 4.x keys only
(Qwen3-VL's and Qwen2's / Llama's set `rope_parameters = rope_scaling` and fall back to their default theta), so a
5.x file would be read with another theta and mRoPE split, silently. `normalize_rope` reads both spellings, in the
section itself and, for Qwen2-VL-style files, at the top level; values that disagree are an error.

Other keys 5.x renamed or moved, checked key by key against 4.57.1 on tiny models of every family (tests/parity):
`torch_dtype` -> `dtype` (read by `paddlemix.models.loading.checkpoint_dtype`), LLaVA's `image_token_index` ->
`image_token_id` (read by `LlavaConfig`), Qwen2.5-VL's language-model keys only inside `text_config` (paddleformers
reads them there), vision sections' `model_type` renamed (`qwen2_vl_vision`, ...; not read) and a vision
`rope_parameters` of `{"rope_type": "axial", "rope_theta": 10000.0}`, the theta every family's vision tower uses,
and `tie_word_embeddings` written in `text_config` too (4.x ties by that one, 5.x by the top level's:
`check_tied_head`). A `rope_type` no model here builds is an error, rotary settings nothing reads one warning.
Files we write spell the rotary settings as 4.x does (`rope_for_both`), which 5.x converts itself.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from paddlemix.utils.errors import UserError
from paddlemix.utils.io import read_json, write_json

logger = logging.getLogger(__name__)

# Sections of config.json that hold a language model's settings, outermost first.
TEXT_SECTIONS = ("", "text_config")
# The rotary base every supported vision tower is built with (transformers hard-codes it in 4.x).
VISION_ROPE_THETA = 10000.0
# The rotary kinds the language models build: "default" plus paddleformers 1.2's ROPE_INIT_FUNCTIONS (a test keeps
# the two equal). Any other `rope_type` is an error before the model is built.
ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3")
# Rotary settings some rope_type reads (transformers' and paddleformers' names); others are reported as unused.
ROPE_KEYS = frozenset({
    "rope_theta", "rope_type", "mrope_section", "mrope_interleaved", "factor", "original_max_position_embeddings",
    "attention_factor", "beta_fast", "beta_slow", "short_factor", "long_factor", "low_freq_factor",
    "high_freq_factor", "mscale", "mscale_all_dim", "truncate",
})  # fmt: skip


def _section(raw: dict[str, Any], name: str) -> dict[str, Any] | None:
    part = raw if not name else raw.get(name)
    return part if isinstance(part, dict) else None


def _rope_of(part: dict[str, Any], where: str) -> dict[str, Any]:
    """The rotary settings one section states, merged from `rope_parameters`, `rope_scaling` and `rope_theta`,
    with `type` read as `rope_type` and "mrope" as "default" (transformers' own reading); {} if none."""
    merged: dict[str, Any] = {}
    sources = [("rope_parameters", part.get("rope_parameters")), ("rope_scaling", part.get("rope_scaling"))]
    if part.get("rope_theta") is not None:
        sources.append(("rope_theta", {"rope_theta": part["rope_theta"]}))
    for key, value in sources:
        if value is None:
            continue
        if not isinstance(value, dict):
            raise UserError(f'{where}: "{key}" is {value!r}; transformers writes it as a JSON object.')
        value = dict(value)
        kind = value.pop("type", None)
        if kind is not None:
            value.setdefault("rope_type", kind)
        if value.get("rope_type") == "mrope":
            value["rope_type"] = "default"
        for name, setting in value.items():
            if name in merged and merged[name] != setting and not _same_number(merged[name], setting):
                raise UserError(
                    f'{where}: "{key}" says {name} = {setting!r} but another key of the same section says '
                    f"{merged[name]!r}. transformers 4.x writes rope_theta + rope_scaling, 5.x writes "
                    "rope_parameters; keep one of them (or make them agree)."
                )
            merged.setdefault(name, setting)
    return merged


def _same_number(a: Any, b: Any) -> bool:
    return isinstance(a, (int, float)) and isinstance(b, (int, float)) and float(a) == float(b)


def _check_rope(settings: dict[str, Any], where: str) -> None:
    """An unknown `rope_type` is an error (the model would be built with another function); settings no rotary
    kind reads are one warning (transformers warns likewise and ignores them)."""
    if settings["rope_type"] not in ROPE_TYPES:
        raise UserError(
            f'{where}: rope_type "{settings["rope_type"]}" (in rope_parameters or rope_scaling) is not one this '
            f"toolkit builds ({', '.join(ROPE_TYPES)}); the model cannot be read faithfully. Use a checkpoint "
            "whose rotary embedding is one of these."
        )
    unused = sorted(set(settings) - ROPE_KEYS)
    if unused:
        logger.warning(
            "%s: rotary settings %s are not read by any rope_type and are ignored (as transformers does); check "
            "that the checkpoint does not depend on them.",
            where,
            ", ".join(unused),
        )


def normalize_rope(raw: dict[str, Any], where: str | Path) -> dict[str, dict[str, Any]]:
    """Rotary settings per language-model section of a config.json dict: {"" or "text_config": settings}.

    A section without settings of its own takes the top level's (Qwen2-VL and Qwen2.5-VL files of 4.x keep them
    there); a section that states none (here or at the top) is left out, keeping the config class's defaults, as
    transformers does. Each result holds `rope_theta` only if the file states one, `rope_type` ("default" if
    unstated) and the rest as written (`mrope_section`, `mrope_interleaved`, `factor`, ...).

    Raises:
        UserError: two keys or two sections state different values for the same setting, a `rope_type` is not
            in `ROPE_TYPES`, or a vision section asks for a rotary base other than `VISION_ROPE_THETA`.
    """
    top = _rope_of(raw, f"{where} (top level)") if raw else {}
    out: dict[str, dict[str, Any]] = {}
    for name in TEXT_SECTIONS:
        part = _section(raw, name)
        if part is None:
            continue
        own = top if not name else _rope_of(part, f"{where} ({name})")
        for key, value in top.items():
            if key in own and own[key] != value and not _same_number(own[key], value):
                raise UserError(
                    f'{where}: {key} is {own[key]!r} in "{name}" but {value!r} at the top level; these must agree '
                    "(transformers reads the language model's value). Fix one of them."
                )
        settings = {**top, **own}
        if settings:
            settings.setdefault("rope_type", "default")
            _check_rope(settings, f"{where} ({name or 'top level'})")
            out[name] = settings
    vision = _section(raw, "vision_config") or {}
    theta = (vision.get("rope_parameters") or {}).get("rope_theta", VISION_ROPE_THETA)
    if not _same_number(theta, VISION_ROPE_THETA):
        raise UserError(
            f"{where}: vision_config.rope_parameters.rope_theta = {theta!r}, but this model family's vision tower "
            f"is built with {VISION_ROPE_THETA} (as in transformers); such a checkpoint cannot be read faithfully."
        )
    return out


def apply_rope(config: Any, settings: dict[str, dict[str, Any]]) -> None:
    """Set `rope_theta`, `rope_scaling` and `rope_parameters` of each loaded config section from `normalize_rope`,
    the way paddleformers 1.2 holds a 4.x file (`rope_parameters` = `rope_scaling`, both with `rope_theta`)."""
    for name, values in settings.items():
        part = config if not name else getattr(config, name, None)
        if part is None:
            continue
        theta = values.get("rope_theta", getattr(part, "rope_theta", None))
        params = {**values, "rope_theta": theta} if theta is not None else dict(values)
        if theta is not None:
            part.rope_theta = theta
        part.rope_scaling = dict(params)
        part.rope_parameters = dict(params)


def check_tied_head(raw: dict[str, Any], where: str | Path) -> None:
    """A head tied at the top level must not be untied in `text_config`: transformers 4.x ties by `text_config`'s
    value (as this toolkit does), 5.x by the top level's, so such a file is a different model in each. (The other
    way round, untied at the top and tied in `text_config`, is how 4.x saves a LLaVA with a tied LM; 5.x ties it
    too.)

    Raises:
        UserError: the top level says true and `text_config` false.
    """
    text = _section(raw, "text_config") or {}
    top, inner = raw.get("tie_word_embeddings"), text.get("tie_word_embeddings")
    if top is True and inner is False:
        raise UserError(
            f"{where}: tie_word_embeddings is {top} at the top level but {inner} in text_config; transformers 4.x "
            "reads text_config's value and 5.x the top level's, so the head is unclear. Set both to the value the "
            "checkpoint was trained with (true if it has no lm_head.weight)."
        )


def read_hf_config(config: Any, folder: str | Path) -> None:
    """Check the keys of `folder`'s config.json that the two transformers generations spell or read differently, and
    make a config loaded by paddleformers from it hold the rotary settings the file states (see the module
    docstring).

    Raises:
        UserError: see `normalize_rope` and `check_tied_head`.
    """
    path = Path(folder) / "config.json"
    raw = read_json(path)
    check_tied_head(raw, path)
    apply_rope(config, normalize_rope(raw, path))


def rope_for_both(raw: dict[str, Any], where: str | Path) -> dict[str, Any]:
    """A config.json dict of either generation -> a copy whose language-model sections spell their rotary settings
    as 4.x does (`rope_theta` + `rope_scaling`, no `rope_parameters`), for files we write: transformers 4.x ignores
    `rope_parameters` (it would build the model with its default theta), 5.x converts the 4.x keys itself. Sections
    without `rope_parameters` are left as they are.

    Raises:
        UserError: as `normalize_rope`.
    """
    out = dict(raw)
    for name, settings in normalize_rope(raw, where).items():
        part = dict(out if not name else out[name])
        if "rope_parameters" not in part:  # already 4.x's spelling (or inherited from the top level): kept as is
            continue
        part.pop("rope_parameters")
        if "rope_theta" in settings:
            part["rope_theta"] = settings["rope_theta"]
        scaling = {k: v for k, v in settings.items() if k != "rope_theta"}
        part["rope_scaling"] = None if scaling == {"rope_type": "default"} else scaling
        if name:
            out[name] = part
        else:
            out = part
    return out


def tokenizer_config_for_both(config: dict[str, Any]) -> dict[str, Any]:
    """A tokenizer_config.json dict written by either transformers generation -> one both generations load alike.

    transformers 5.x writes its generic fast tokenizer as `"tokenizer_class": "TokenizersBackend"` (4.x has no such
    class and refuses the folder) and the extra special tokens as an `extra_special_tokens` list (4.x reads that key
    as a dict of named tokens); `PreTrainedTokenizerFast` and `additional_special_tokens` are read by both.
    """
    config = dict(config)
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    if isinstance(config.get("extra_special_tokens"), list):
        config["additional_special_tokens"] = config.pop("extra_special_tokens")
    return config


def write_for_both(folder: str | Path) -> list[str]:
    """Rewrite the config.json and tokenizer_config.json of a folder this toolkit writes (copied from a model of
    either generation) in the spelling transformers 4.x and 5.x both read alike (`rope_for_both`,
    `tokenizer_config_for_both`); returns the names of the files changed."""
    changed = []
    for name, rewrite in (("config.json", rope_for_both), ("tokenizer_config.json", None)):
        path = Path(folder) / name
        if not path.is_file():
            continue
        raw = read_json(path)
        new = rewrite(raw, path) if rewrite else tokenizer_config_for_both(raw)
        if new != raw:
            write_json(new, path)
            changed.append(name)
    return changed
