"""Typed run arguments read from one JSON file (PaddleMIX key names) plus `--key value` overrides.

Every key is owned by exactly one dataclass here or by paddleformers' TrainingArguments. Unknown keys, wrong types
and combinations that cannot work are reported as a UserError naming the key and the file before any model loads.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.util
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from paddlemix.utils.errors import UserError, closest
from paddlemix.utils.io import read_json

SourceName = Literal["chatml_dataset", "coco_caption", "coco_vqa"]
Device = Literal["cpu", "gpu", "npu", "xpu"]
TrainType = Literal["use_lora", "freeze_vision", "none"]

# PaddleMIX names that paddleformers 1.2 spells differently; translated here and nowhere else.
LEGACY_TRAINING_KEYS = {
    "tensor_parallel_degree": "tensor_model_parallel_size",
    "pipeline_parallel_degree": "pipeline_model_parallel_size",
    "sharding_parallel_degree": "sharding_parallel_size",
}
# Keys of ours that PaddleMIX files carry under another name.
LEGACY_KEYS = {"mixtoken": "packing"}


@dataclass(frozen=True)
class DatasetSource:
    """One entry of `dataset.train` / `dataset.eval`: a reader, its files and how much of it to use."""

    name: SourceName
    data_files: list[str]
    chat_template: str | None = None
    sampling_rate: float = 1.0
    image_root: str | None = None
    prompt: str | None = None


@dataclass(frozen=True)
class ModelArgs:
    """Which local model to load and what to train: a `train_type` preset, per-group switches (vision, projector,
    llm; unset = the preset's choice) and glob patterns on parameter names (exclude wins)."""

    model_name_or_path: str
    train_type: TrainType | None = None
    freeze_vision: bool | None = None
    freeze_projector: bool | None = None
    freeze_llm: bool | None = None
    freeze_include: list[str] = field(default_factory=list)
    freeze_exclude: list[str] = field(default_factory=list)
    allow_pickle_weights: bool = False


@dataclass(frozen=True)
class DataArgs:
    """The training and evaluation mixes and the sequence budget."""

    train: list[DatasetSource] = field(default_factory=list)
    eval: list[DatasetSource] = field(default_factory=list)
    max_length: int = 2048
    packing: bool = False
    pack_window: int = 1000
    max_skip_ratio: float = 0.05


@dataclass(frozen=True)
class LoraArgs:
    """Low-rank adapters; `lora_target_modules` are regexes on parameter-owning layer names."""

    lora: bool = False
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: list[str] | None = None
    lora_path: str | None = None


@dataclass(frozen=True)
class RuntimeArgs:
    """Where to run, what to report beyond the trainer's own logs, and the chunked-loss size (0 = full logits)."""

    device: Device | None = None
    benchmark: bool = False
    loss_chunk_size: int = 256
    eval_generation: bool = False
    eval_generation_samples: int = 64
    # PaddleMIX's switch for activation recompute of the language and vision layers (paddlemix.trainer.recompute).
    recompute: bool = False


OWN_GROUPS = {"model": ModelArgs, "data": DataArgs, "lora": LoraArgs, "runtime": RuntimeArgs}
DATA_SPLITS = ("train", "eval")
# TrainingArguments defaults that differ for multimodal fine-tuning.
# `sharding: ""` makes several processes plain data parallel unless the user asks for sharding; `do_train` is on
# unless turned off (paddleformers' default, off, would make a file without it run nothing and exit 0).
TRAINING_DEFAULTS = {"remove_unused_columns": False, "disable_tqdm": False, "sharding": "", "do_train": True}


@dataclass
class RunArgs:
    """All arguments of one run; `training` is paddleformers' TrainingArguments."""

    model: ModelArgs
    data: DataArgs
    lora: LoraArgs
    runtime: RuntimeArgs
    training: Any
    source_file: str
    training_keys: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved arguments in the JSON key space, as saved to run_args.json."""
        out: dict[str, Any] = {}
        for group in (self.model, self.lora, self.runtime):
            out.update(dataclasses.asdict(group))
        data = dataclasses.asdict(self.data)
        out["dataset"] = {split: data.pop(split) for split in DATA_SPLITS}
        out["mixtoken"] = data.pop("packing")
        out.update(data)
        for key in self.training_keys:
            value = getattr(self.training, key)
            out[key] = value.value if isinstance(value, enum.Enum) else value
        return out


def _training_arguments_cls() -> type:
    from paddleformers.trainer import TrainingArguments

    return TrainingArguments


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check `value` against type `tp` and return it normalised (str → [str] for lists, str → Enum)."""

    def fail(expected: str) -> UserError:
        return UserError(f'{where}: key "{key}" must be {expected}, got {value!r} ({type(value).__name__}).')

    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        real = [o for o in options if o is not type(None)]
        if len(real) == 1:
            return coerce(value, real[0], key, where)
        for option in real:
            try:
                return coerce(value, option, key, where)
            except UserError:
                pass
        raise fail(" or ".join(_type_name(o) for o in options))
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise fail("one of " + ", ".join(repr(v) for v in typing.get_args(tp)))
        return value
    if origin in (list, typing.List):  # noqa: UP006
        (item_tp,) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise fail(f"a list of {_type_name(item_tp)}")
        return [coerce(v, item_tp, key, where) for v in value]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise fail("an object")
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        allowed = [m.value for m in tp]
        if value not in allowed:
            raise fail("one of " + ", ".join(repr(v) for v in allowed))
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise fail("a string")
        return value
    return value


def _parse_source(entry: Any, split: str, index: int, where: str) -> DatasetSource:
    key = f"dataset.{split}[{index}]"
    if not isinstance(entry, dict):
        raise UserError(f'{where}: "{key}" must be an object like {{"name": "chatml_dataset", "data_files": ...}}.')
    types_ = _field_types(DatasetSource)
    unknown = [k for k in entry if k not in types_]
    if unknown:
        raise UserError(f'{where}: unknown key "{key}.{unknown[0]}".{closest(unknown[0], types_)}')
    missing = [k for k in ("name", "data_files") if k not in entry]
    if missing:
        raise UserError(f'{where}: "{key}" needs "{missing[0]}".')
    values = {k: coerce(v, types_[k], f"{key}.{k}", where) for k, v in entry.items()}
    return DatasetSource(**values)


def _split_overrides(overrides: list[str], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    it = iter(overrides)
    for token in it:
        if not token.startswith("--"):
            raise UserError(f"command line: expected --key value, got {token!r}.")
        key, _, raw = token[2:].partition("=")
        if not _:
            raw = next(it, None)
            if raw is None:
                raise UserError(f'command line: "--{key}" needs a value.')
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def load(path: str | Path, overrides: list[str] | None = None) -> RunArgs:
    """Read the argument file and overrides into RunArgs; raise UserError on any mistake."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"argument file {path} does not exist.")
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise UserError(f"{path} must hold one JSON object of arguments.")
    raw.update(_split_overrides(overrides or [], str(path)))
    return parse(raw, str(path))


def parse(raw: dict[str, Any], where: str) -> RunArgs:
    """Route each flat key to its dataclass, check types, then check combinations (see `validate`)."""
    training_cls = _training_arguments_cls()
    training_types = _field_types(training_cls)
    own_types = {name: _field_types(cls) for name, cls in OWN_GROUPS.items()}
    owner = {key: group for group, fields in own_types.items() for key in fields if key not in DATA_SPLITS}
    known = set(owner) | set(training_types) | set(LEGACY_TRAINING_KEYS) | set(LEGACY_KEYS) | {"dataset"}
    groups: dict[str, dict[str, Any]] = {name: {} for name in OWN_GROUPS}
    training: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise UserError(f'{where}: unknown key "{key}".{closest(key, known)}')
        name = LEGACY_KEYS.get(key, key)
        if name == "dataset":
            groups["data"].update(_parse_dataset(value, where))
        elif name in owner:
            group = owner[name]
            groups[group][name] = coerce(value, own_types[group][name], key, where)
        else:
            name = LEGACY_TRAINING_KEYS.get(name, name)
            training[name] = coerce(value, training_types[name], key, where)
    if "model_name_or_path" not in groups["model"]:
        raise UserError(f'{where}: "model_name_or_path" is required (a local model folder in Hugging Face layout).')
    if "output_dir" not in training:
        raise UserError(f'{where}: "output_dir" is required.')
    _apply_train_type(groups["model"].get("train_type"), groups["lora"], where)
    args = RunArgs(
        model=ModelArgs(**groups["model"]),
        data=DataArgs(**groups["data"]),
        lora=LoraArgs(**groups["lora"]),
        runtime=RuntimeArgs(**groups["runtime"]),
        training=None,
        source_file=where,
    )
    validate(args, training, where)
    args.training = _build_training_arguments(training_cls, training, args.runtime, args.data.packing, where)
    args.training_keys = tuple(training) + tuple(TRAINING_DEFAULTS)
    return args


def _apply_train_type(train_type: str | None, lora: dict[str, Any], where: str) -> None:
    """`train_type` decides `lora`; an explicit `lora` that contradicts it is an error rather than a silent pick."""
    if train_type is None:
        return
    wanted = train_type == "use_lora"
    if lora.setdefault("lora", wanted) != wanted:
        raise UserError(
            f'{where}: "train_type": "{train_type}" {"trains LoRA adapters" if wanted else "trains full weights"} '
            f'but "lora" is {str(lora["lora"]).lower()}; drop "lora" or change "train_type".'
        )


def _parse_dataset(value: Any, where: str) -> dict[str, list[DatasetSource]]:
    if not isinstance(value, dict):
        raise UserError(f'{where}: "dataset" must be an object {{"train": [...], "eval": [...]}}.')
    unknown = [k for k in value if k not in DATA_SPLITS]
    if unknown:
        raise UserError(f'{where}: unknown key "dataset.{unknown[0]}"; use "train" and "eval".')
    out = {}
    for split, entries in value.items():
        if not isinstance(entries, list):
            entries = [entries]
        out[split] = [_parse_source(e, split, i, where) for i, e in enumerate(entries)]
    return out


def training_kwargs(training: dict[str, Any], runtime: RuntimeArgs, packing: bool) -> dict[str, Any]:
    """The keyword arguments handed to paddleformers' TrainingArguments (parallel degrees already translated)."""
    from paddlemix.utils.device import resolve_device

    kwargs = {**TRAINING_DEFAULTS, **training, "device": resolve_device(runtime.device)}
    kwargs.setdefault("amp_master_grad", bool(kwargs.get("fp16") or kwargs.get("bf16")))
    if packing:
        # The pack stream fast-forwards itself on resume; the trainer must not replay (and decode) skipped batches.
        kwargs["ignore_data_skip"] = True
    return kwargs


def _build_training_arguments(
    cls: type, training: dict[str, Any], runtime: RuntimeArgs, packing: bool, where: str
) -> Any:
    kwargs = training_kwargs(training, runtime, packing)
    if kwargs["device"] == "cpu" and kwargs.get("fp16"):
        raise UserError(f'{where}: "fp16" needs a GPU or NPU; on CPU train in float32 (or set "bf16": true).')
    try:
        return cls(**kwargs)
    except (ValueError, TypeError, AssertionError, RuntimeError) as err:
        raise UserError(f"{where}: the training arguments do not fit together: {err}") from None


def validate(args: RunArgs, training: dict[str, Any], where: str) -> None:
    """Check paths and cross-field combinations that would otherwise fail after the model is loaded."""
    model_dir = Path(args.model.model_name_or_path)
    if not (model_dir / "config.json").is_file():
        raise UserError(
            f'{where}: "model_name_or_path" = "{model_dir}" is not a local model folder with a config.json. '
            "Point it at a Hugging Face-layout folder (config.json, *.safetensors, tokenizer and processor files)."
        )
    if training.get("fp16") and training.get("bf16"):
        raise UserError(f'{where}: "fp16" and "bf16" are both true; choose one.')
    if training.get("fp16_opt_level") == "O2" and not (training.get("fp16") or training.get("bf16")):
        raise UserError(f'{where}: "fp16_opt_level": "O2" needs "fp16": true or "bf16": true.')
    if args.lora.lora and args.model.freeze_llm:
        raise UserError(
            f'{where}: "freeze_llm": true leaves LoRA nothing to train (its adapters sit in the language model); '
            'set "lora": false to train only the vision tower or projector.'
        )
    if args.lora.lora_path and not args.lora.lora:
        raise UserError(f'{where}: "lora_path" is set but "lora" is false; set "lora": true to continue an adapter.')
    if args.lora.lora_path and not Path(args.lora.lora_path).is_dir():
        raise UserError(f'{where}: "lora_path" = "{args.lora.lora_path}" is not a folder.')
    if args.data.packing and training.get("max_steps", -1) <= 0 and training.get("do_train", True):
        raise UserError(
            f'{where}: "mixtoken": true streams packs without knowing their number in advance, so it needs '
            '"max_steps" (a positive number of optimizer steps) instead of "num_train_epochs".'
        )
    if args.data.pack_window < 1:
        raise UserError(f'{where}: "pack_window" must be at least 1, got {args.data.pack_window}.')
    if not 0 <= args.data.max_skip_ratio <= 1:
        raise UserError(f'{where}: "max_skip_ratio" must be between 0 and 1, got {args.data.max_skip_ratio}.')
    reporters = training.get("report_to") or []
    if "tensorboard" in reporters and importlib.util.find_spec("tensorboardX") is None:
        raise UserError(f'{where}: "report_to" names tensorboard, which needs `pip install tensorboardX`.')
    if args.runtime.loss_chunk_size < 0:
        raise UserError(f'{where}: "loss_chunk_size" must be >= 0 (0 turns the chunked loss off).')
    if args.data.max_length < 16:
        raise UserError(f'{where}: "max_length" must be at least 16, got {args.data.max_length}.')
    if training.get("do_train", True) and not args.data.train:
        raise UserError(f'{where}: "dataset.train" is empty; name at least one source.')
    if training.get("do_eval") and not args.data.eval:
        raise UserError(f'{where}: "do_eval" is true but "dataset.eval" is empty.')
    for split in DATA_SPLITS:
        for i, source in enumerate(getattr(args.data, split)):
            _validate_source(source, f"dataset.{split}[{i}]", where)
    _validate_parallel(training, model_dir, where)


def _validate_source(source: DatasetSource, key: str, where: str) -> None:
    if source.sampling_rate < 0:
        raise UserError(f'{where}: "{key}.sampling_rate" must be >= 0, got {source.sampling_rate}.')
    for file in source.data_files:
        if not Path(file).is_file():
            raise UserError(f'{where}: "{key}.data_files" names {file}, which does not exist.')
    if source.chat_template is not None and not Path(source.chat_template).is_file():
        raise UserError(
            f'{where}: "{key}.chat_template" = "{source.chat_template}" does not exist; it must be a path to a '
            "chat_template.json or a Jinja template file."
        )
    if source.image_root is not None and not Path(source.image_root).is_dir():
        raise UserError(f'{where}: "{key}.image_root" = "{source.image_root}" is not a folder.')


def _validate_parallel(training: dict[str, Any], model_dir: Path, where: str) -> None:
    tp = max(training.get("tensor_model_parallel_size", 1), 1)
    pp = max(training.get("pipeline_model_parallel_size", 1), 1)
    sharding = max(training.get("sharding_parallel_size", 1), 1)
    world = int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))
    if world % (tp * pp * sharding):
        raise UserError(
            f"{where}: tensor x pipeline x sharding parallel degrees = {tp} x {pp} x {sharding} do not divide the "
            f"{world} launched process(es); launch a multiple of {tp * pp * sharding} (see train.sh) or lower them."
        )
    if training.get("sharding") and sharding > 1 and training["sharding"] not in ("stage1", "stage2", "stage3"):
        raise UserError(f'{where}: "sharding" must be stage1, stage2 or stage3, got {training["sharding"]!r}.')
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    text = config.get("text_config", config)
    for name, degree, key in (("num_attention_heads", tp, "tensor"), ("num_key_value_heads", tp, "tensor"),
                              ("num_hidden_layers", pp, "pipeline")):  # fmt: skip
        size = text.get(name) or config.get(name)
        if degree > 1 and size and size % degree:
            raise UserError(
                f'{where}: "{key}_parallel_degree" = {degree} does not divide the model\'s {name} = {size}.'
            )
