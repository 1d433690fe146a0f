"""Fold a Hugging Face PEFT LoRA adapter into its base checkpoint, tensor by tensor, without building the model.

The base is read in its own Hugging Face layout (one `model.safetensors` or shards listed in
`model.safetensors.index.json`) and written in the same layout and dtype:

    W' = W + scaling * B @ A        B [out, r], A [r, in], W [out, in] (torch Linear layout), in float32,
                                    then rounded back to W's dtype (bf16 in, bf16 out)
    scaling = lora_alpha / r        (lora_alpha / sqrt(r) with "use_rslora"; PEFT's LoraConfig)

Fully trained tensors of the adapter (PEFT's `modules_to_save`) replace their base tensors; every other tensor is
copied byte for byte. Only one slice of one tensor is in memory at a time besides the adapter, so the peak memory
is the adapter plus a few tens of MB, whatever the size of the model. Adapter names are transformers' in-memory
module names; each family's `parameter_name` maps checkpoint names onto them to pair the two.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from paddlemix.models.hf_config import write_for_both
from paddlemix.models.hf_layout import name_for_both
from paddlemix.utils.errors import UserError
from paddlemix.utils.io import atomic_dir, copy_side_files, read_json, write_json
from paddlemix.utils.safetensors_stream import (
    DTYPE_NAMES,
    FLOAT_CODES,
    INDEX_FILE,
    TensorEntry,
    checkpoint_entries,
    copy_bytes,
    from_float32,
    parse_size,
    plan_shards,
    read_array,
    read_header,
    to_float32,
    write_sharded,
)

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
INDEX = INDEX_FILE
PEFT_PREFIX = "base_model.model."
DEFAULT_MAX_SHARD_SIZE = "5GB"  # transformers' `save_pretrained` default
BLOCK_BYTES = 16 << 20  # float32 bytes of one row block of a merged weight
_LORA_KEY = re.compile(
    r"^(?P<module>.+)\.(?P<part>lora_A|lora_B)\.weight$|^(?P<emb>.+)\.(?P<epart>lora_embedding_[AB])$"
)


@dataclass
class LoraAdapter:
    """A PEFT LoRA adapter read into memory, keyed by canonical (in-memory) names.

    `deltas[module]` = (left [out, r], right [r, in], scaling): the weight update is scaling * left @ right.
    `replacements[tensor]` = where a fully trained tensor (`modules_to_save`) lies in the adapter file; it is read
    only while being written, so a large one (an embedding table) is never held whole.
    """

    folder: Path
    config: dict[str, Any]
    deltas: dict[str, tuple[np.ndarray, np.ndarray, float]] = field(default_factory=dict)
    replacements: dict[str, TensorEntry] = field(default_factory=dict)
    source_names: dict[str, str] = field(default_factory=dict)  # canonical name -> name in the adapter file


def _scaling(config: dict[str, Any], module: str, rank: int) -> float:
    """PEFT's scaling of one module: lora_alpha (or its `alpha_pattern` entry) / r, or / sqrt(r) with rsLoRA.
    The rank is read from the A matrix, so `rank_pattern` needs no lookup."""
    alpha = config.get("lora_alpha", 8)
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            alpha = value
            break
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def _check_config(config: dict[str, Any], where: Path) -> None:
    unsupported = {
        "peft_type": config.get("peft_type", "LORA") != "LORA",
        "use_dora": bool(config.get("use_dora")),
        "fan_in_fan_out": bool(config.get("fan_in_fan_out")),
    }
    bad = [key for key, is_bad in unsupported.items() if is_bad]
    if bad:
        raise UserError(
            f'{where}: "{bad[0]}" = {config.get(bad[0])!r} is not supported by the merge, which folds plain LoRA '
            '("peft_type": "LORA", no DoRA, torch Linear layout) into the base weights.'
        )


# config.json sizes that must agree between the model an adapter was trained on and the one it is applied to.
ARCHITECTURE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")


def _architecture(config: dict[str, Any]) -> dict[str, Any]:
    """model_type and the ARCHITECTURE_KEYS of a config.json, top level and text_config."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    sizes = {f"text_config.{k}": text[k] for k in ARCHITECTURE_KEYS if k in text}
    return {
        "model_type": config.get("model_type"),
        **{k: config[k] for k in ARCHITECTURE_KEYS if k in config},
        **sizes,
    }


def check_adapter_base(adapter_dir: str | Path, base_dir: str | Path, warn: Callable[[str], None]) -> None:
    """Stop when the adapter's `base_model_name_or_path` is a model of another type or size than `base_dir`.

    Same shapes do not prove the same model: a LoRA of one family merges silently into another. The check runs
    only when the named base folder exists here; a different folder of the same model_type and sizes is a warning.
    """
    config_file = Path(adapter_dir) / ADAPTER_CONFIG
    if not config_file.is_file():
        return
    named = read_json(config_file).get("base_model_name_or_path")
    if not named or not (Path(named) / "config.json").is_file() or not (Path(base_dir) / "config.json").is_file():
        return
    if Path(named).resolve() == Path(base_dir).resolve():
        return
    trained, given = (
        _architecture(read_json(Path(named) / "config.json")),
        _architecture(read_json(Path(base_dir) / "config.json")),
    )
    differ = [k for k in trained.keys() & given.keys() if trained[k] != given[k]]
    if differ:
        shown = ", ".join(f"{k} {trained[k]!r} vs {given[k]!r}" for k in sorted(differ, key=list(trained).index))
        raise UserError(
            f'{config_file}: the adapter was trained on "base_model_name_or_path" = {named!r}, another model than '
            f"{str(base_dir)!r} ({shown}); pass the base model it was trained on."
        )
    warn(f"adapter {adapter_dir} was trained on {named}, applied to {base_dir} (same model_type and sizes)")


def read_adapter(folder: str | Path, parameter_name: Callable[[str], str] | None = None) -> LoraAdapter:
    """Read `adapter_config.json` and `adapter_model.safetensors` of a PEFT LoRA folder (any float dtype).

    Raises UserError when a file is missing, the config asks for something the merge cannot fold, or an A matrix
    has no B (or the reverse).
    """
    folder = Path(folder)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (folder / name).is_file():
            raise UserError(f"{folder} holds no PEFT LoRA adapter ({name} is missing).")
    parameter_name = parameter_name or same_name
    config = read_json(folder / ADAPTER_CONFIG)
    _check_config(config, folder / ADAPTER_CONFIG)
    adapter = LoraAdapter(folder, config)
    pairs: dict[str, dict[str, np.ndarray]] = {}
    entries, _ = read_header(folder / ADAPTER_WEIGHTS)
    with open(folder / ADAPTER_WEIGHTS, "rb") as f:
        for entry in entries:
            key = entry.name
            name = key.removeprefix(PEFT_PREFIX).replace(".modules_to_save.default.", ".")
            if name.endswith(".lora_magnitude_vector") or ".lora_magnitude_vector." in name:
                raise UserError(
                    f"{folder / ADAPTER_WEIGHTS}: {key} is a DoRA tensor; the merge folds plain LoRA only."
                )
            match = _LORA_KEY.match(name)
            if match is None:
                canonical = parameter_name(name)
                adapter.replacements[canonical] = entry
                adapter.source_names[canonical] = key
                continue
            if entry.dtype not in FLOAT_CODES:
                raise UserError(f"{entry.file}: tensor {entry.name} has dtype {entry.dtype}, which cannot be merged.")
            module = parameter_name((match["module"] or match["emb"]) + ".weight").removesuffix(".weight")
            pairs.setdefault(module, {})[match["part"] or match["epart"]] = to_float32(
                read_array(f, entry), entry.dtype
            )
            adapter.source_names[module] = key.rsplit(".lora_", 1)[0]
    for module, parts in pairs.items():
        if set(parts) in ({"lora_A", "lora_B"}, {"lora_embedding_A", "lora_embedding_B"}):
            if "lora_A" in parts:  # Linear: delta = B [out, r] @ A [r, in]
                left, right = parts["lora_B"], parts["lora_A"]
            else:  # Embedding: A [r, num_embeddings], B [dim, r]; delta = (B @ A).T
                left, right = parts["lora_embedding_A"].T, parts["lora_embedding_B"].T
            if left.ndim != 2 or right.ndim != 2 or left.shape[1] != right.shape[0]:
                raise UserError(f"{folder / ADAPTER_WEIGHTS}: LoRA matrices of {module} have shapes that do not fit.")
            adapter.deltas[module] = (left, right, _scaling(config, module, right.shape[0]))
        else:
            raise UserError(
                f"{folder / ADAPTER_WEIGHTS}: module {adapter.source_names[module]} has only {sorted(parts)}; "
                "a LoRA module needs both its A and B matrices. The adapter file is incomplete; save it again."
            )
    return adapter


def base_tensors(folder: str | Path) -> list[TensorEntry]:
    """The tensors of a Hugging Face checkpoint folder in file order: the shards of `model.safetensors.index.json`,
    else every `*.safetensors` file but an adapter's. Raises UserError for a missing shard, an index naming absent
    tensors, a tensor stored twice, or a folder without safetensors."""
    folder = Path(folder)
    if not (folder / INDEX).is_file() and not any(p.name != ADAPTER_WEIGHTS for p in folder.glob("*.safetensors")):
        raise UserError(f"{folder} has no *.safetensors weights to merge into (pickled weights are not read).")
    return checkpoint_entries(folder, skip=(ADAPTER_WEIGHTS,))


def pair(adapter: LoraAdapter, entries: list[TensorEntry], parameter_name: Callable[[str], str]) -> dict[str, str]:
    """Base tensor name -> "delta:<module>" or "replace:<tensor>" for every tensor the adapter changes.

    Raises UserError naming the first adapter names that match no base tensor (every adapter tensor must be used).
    """
    by_canonical = {parameter_name(e.name): e for e in entries}
    actions: dict[str, str] = {}
    unmatched = []
    for module, (left, right, _) in adapter.deltas.items():
        entry = by_canonical.get(module + ".weight")
        if entry is None:
            unmatched.append(adapter.source_names[module])
        elif entry.shape != (left.shape[0], right.shape[1]) or entry.dtype not in FLOAT_CODES:
            raise UserError(
                f"{adapter.folder}: LoRA module {adapter.source_names[module]} makes a [{left.shape[0]}, "
                f"{right.shape[1]}] update but base tensor {entry.name} is {list(entry.shape)} {entry.dtype}; the adapter was "
                "trained on another model."
            )
        else:
            actions[entry.name] = "delta:" + module
    for name, value in adapter.replacements.items():
        entry = by_canonical.get(name)
        if entry is None:
            unmatched.append(adapter.source_names[name])
        elif entry.shape != value.shape or entry.dtype not in FLOAT_CODES or value.dtype not in FLOAT_CODES:
            raise UserError(
                f"{adapter.folder}: {adapter.source_names[name]} is {list(value.shape)} {value.dtype} but base tensor "
                f"{entry.name} is {list(entry.shape)} {entry.dtype}; the adapter was trained on another model."
            )
        elif entry.name in actions:
            raise UserError(
                f"{adapter.folder}: base tensor {entry.name} is both a LoRA target and a fully trained tensor "
                f"({adapter.source_names[name]}); an adapter changes each tensor one way. Save the adapter again."
            )
        else:
            actions[entry.name] = "replace:" + name
    if unmatched:
        examples = ", ".join(e.name for e in entries[:3])
        raise UserError(
            f"{len(unmatched)} tensor(s) of {adapter.folder / ADAPTER_WEIGHTS} match no tensor of the base model, "
            f"first: {', '.join(unmatched[:3])}. The adapter belongs to another model or uses names this family "
            f"does not map (base tensors look like {examples}); pass the right --model_name_or_path."
        )
    return actions


def _write_delta(src: Any, entry: TensorEntry, delta: tuple[np.ndarray, np.ndarray, float], dst: Any) -> None:
    """W + scaling * left @ right in float32, row block by row block, each block rounded back to W's dtype."""
    left, right, scaling = delta
    step = max(1, BLOCK_BYTES // (4 * entry.shape[1]))
    for start in range(0, entry.shape[0], step):
        rows = slice(start, min(start + step, entry.shape[0]))
        block = to_float32(read_array(src, entry, rows), entry.dtype)  # [rows, in]
        block = block + np.float32(scaling) * (left[rows] @ right)
        dst.write(from_float32(block, entry.dtype).tobytes())


def _write_replacement(source: TensorEntry, entry: TensorEntry, dst: Any) -> None:
    """A fully trained tensor in the base tensor's dtype: its bytes as they are when the dtypes agree, else
    converted through float32 row block by row block."""
    with open(source.file, "rb") as src:
        if source.dtype == entry.dtype:
            copy_bytes(src, source, dst)
            return
        if not entry.shape:
            dst.write(from_float32(to_float32(read_array(src, source), source.dtype), entry.dtype).tobytes())
            return
        step = max(1, BLOCK_BYTES // (4 * max(1, math.prod(entry.shape[1:]))))
        for start in range(0, entry.shape[0], step):
            rows = slice(start, min(start + step, entry.shape[0]))
            dst.write(from_float32(to_float32(read_array(src, source, rows), source.dtype), entry.dtype).tobytes())


def output_dtype(entries: list[TensorEntry]) -> str | None:
    """The config.json dtype name of the float dtype holding most bytes (what `torch_dtype` should say)."""
    totals: dict[str, int] = {}
    for e in entries:
        if e.dtype in FLOAT_CODES:
            totals[e.dtype] = totals.get(e.dtype, 0) + e.nbytes
    return DTYPE_NAMES[max(totals, key=totals.__getitem__)] if totals else None


def set_config_dtype(config: dict[str, Any], dtype: str) -> dict[str, Any]:
    """Set `torch_dtype` (and `dtype`, transformers >= 4.56's name, where present) at every level that has it."""
    for key in ("torch_dtype", "dtype"):
        if key in config:
            config[key] = dtype
    if "torch_dtype" not in config and "dtype" not in config:
        config["torch_dtype"] = dtype
    for value in config.values():
        if isinstance(value, dict) and ("torch_dtype" in value or "dtype" in value):
            for key in ("torch_dtype", "dtype"):
                if key in value:
                    value[key] = dtype
    return config


def check_output_path(out: Path, *inputs: Path) -> None:
    """The merge never writes into, over or around an input folder."""
    target = out.resolve()
    for folder in inputs:
        source = folder.resolve()
        if target == source or target.is_relative_to(source) or source.is_relative_to(target):
            raise UserError(
                f"--merge_model_path {out} would overwrite or sit inside the input folder {folder}; choose a folder "
                "outside the base model and the adapter."
            )


def write_shards(
    folder: Path,
    entries: list[TensorEntry],
    actions: dict[str, str],
    adapter: LoraAdapter,
    max_shard_size: int,
    log: Callable[[str], None],
    rename: Callable[[str], str] = str,
) -> list[str]:
    """Write the merged tensors into `folder` as shards of at most `max_shard_size` bytes (plus the index when
    there are several), each under `rename(name)`. Returns the shard file names."""
    by_name = {e.name: e for e in entries}
    source = {rename(e.name): e.name for e in entries}  # written name -> the base's name
    shards = plan_shards([(rename(e.name), e.nbytes) for e in entries], max_shard_size)
    handles: dict[Path, Any] = {}
    done = 0

    def write(written: str, dst: Any) -> None:
        name = source[written]
        entry = by_name[name]
        src = handles.get(entry.file) or handles.setdefault(entry.file, open(entry.file, "rb"))
        kind, _, key = actions.get(name, "copy:").partition(":")
        if kind == "delta":
            _write_delta(src, entry, adapter.deltas[key], dst)
        elif kind == "replace":
            _write_replacement(adapter.replacements[key], entry, dst)
        else:
            copy_bytes(src, entry, dst)

    def progress(number: int, file: str, tensors: Any) -> None:
        nonlocal done
        done += len(tensors)
        size = sum(by_name[source[n]].nbytes for n, _, _ in tensors)
        log(
            f"shard {number}/{len(shards)} {file}: {len(tensors)} tensors, {size / 2**20:.1f} MiB ({done}/{len(entries)} tensors)"
        )

    specs = [[(n, by_name[source[n]].dtype, by_name[source[n]].shape) for n in names] for names in shards]
    try:
        return write_sharded(folder, specs, write, {"format": "pt"}, progress)
    finally:
        for handle in handles.values():
            handle.close()


def add_trained_stop_ids(adapter_dir: Path, out: Path, config: dict[str, Any], log: Callable[[str], None]) -> None:
    """List the ids that ended the adapter's trained answers (`stop_token_ids` of its run_args.json) among the eos
    ids of the merged folder's generation_config.json, so the merged model stops where it was trained to."""
    run_args = adapter_dir / "run_args.json"
    stops = read_json(run_args).get("stop_token_ids") if run_args.is_file() else None
    if not stops:
        return
    from types import SimpleNamespace

    from paddlemix.inference.decoding import add_stop_ids

    eos = config.get("eos_token_id")
    if eos is None and isinstance(config.get("text_config"), dict):  # Qwen3-VL and LLaVA keep it there
        eos = config["text_config"].get("eos_token_id")
    changed = add_stop_ids(out / "generation_config.json", stops, SimpleNamespace(eos_token_id=eos))
    if changed:
        log(f"generation_config.json: eos_token_id {changed[0]} -> {changed[1]} (the ids ending the trained answers)")


def merge_checkpoint(
    base_dir: str | Path,
    adapter_dir: str | Path,
    out_dir: str | Path,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    parameter_name: Callable[[str], str] | None = None,
    log: Callable[[str], None] = logger.info,
) -> Path:
    """Write base + LoRA adapter as a complete Hugging Face model folder at `out_dir`, atomically.

    Args:
        base_dir: the base model folder (config.json, safetensors, tokenizer and processor files); only read.
        adapter_dir: a PEFT LoRA folder; its tokenizer, processor and chat template files override the base's.
        out_dir: the merged folder, replaced in one rename when complete; must lie outside both inputs.
        max_shard_size: bytes, or a size such as "500MB" / "5GB" (powers of 10) or "2GiB".
        parameter_name: checkpoint name -> transformers' in-memory name; default: the family's `parameter_name`
            (by config.json's model_type), or names unchanged for a model type without a family.
        log: receives one progress line per shard.

    Raises:
        UserError: missing or broken files, an adapter that does not fit the base, or an output path inside an input.
    """
    base_dir, adapter_dir, out_dir = Path(base_dir), Path(adapter_dir), Path(out_dir)
    check_output_path(out_dir, base_dir, adapter_dir)
    if not (base_dir / "config.json").is_file():
        raise UserError(f"{base_dir} is not a model folder (config.json is missing); pass the base model's folder.")
    limit = parse_size(max_shard_size)
    parameter_name = parameter_name or _family_parameter_name(base_dir)
    adapter = read_adapter(adapter_dir, parameter_name)
    entries = base_tensors(base_dir)
    actions = pair(adapter, entries, parameter_name)
    log(
        f"merging {len(adapter.deltas)} LoRA modules and {len(adapter.replacements)} fully trained tensors into "
        f"{len(entries)} tensors of {base_dir}"
    )
    config = read_json(base_dir / "config.json")
    dtype = output_dtype(entries)
    with atomic_dir(out_dir) as tmp:
        copy_side_files(base_dir, tmp)
        copy_side_files(adapter_dir, tmp, skip=("config.json", "generation_config.json"))
        add_trained_stop_ids(adapter_dir, tmp, config, log)
        write_json(set_config_dtype(config, dtype) if dtype else config, tmp / "config.json")
        write_for_both(tmp)  # a base saved by transformers 5.x gives a folder 4.x loads alike too
        model_type = config.get("model_type")  # 5.x's names of a base, written as both generations load them
        write_shards(tmp, entries, actions, adapter, limit, log, lambda name: name_for_both(model_type, name))
    return out_dir


def merge_adapter(
    base_dir: str | Path,
    adapter_dir: str | Path,
    out_dir: str | Path,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    log: Callable[[str], None] = logger.info,
) -> Path:
    """`merge_checkpoint` under the name the tools and tests use."""
    return merge_checkpoint(base_dir, adapter_dir, out_dir, max_shard_size, log=log)


def _family_parameter_name(base_dir: Path) -> Callable[[str], str]:
    from paddlemix.models import ADAPTERS

    model_type = read_json(base_dir / "config.json").get("model_type")
    family = ADAPTERS.get(model_type)
    if family is None:
        logger.info("model_type %r has no family here: adapter names must equal checkpoint names", model_type)
        return same_name
    return family.parameter_name


def same_name(name: str) -> str:
    return name
