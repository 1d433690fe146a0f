"""`paddlemix-sft --help`: every key of an argument file by group, with its type and default, read from the
dataclasses and tables `arguments.load` validates against (so the help cannot drift from what is accepted)."""

from __future__ import annotations

import dataclasses
import enum
import inspect
import json
import textwrap
import types
import typing
from typing import Any

from paddlemix import arguments

USAGE = """usage: paddlemix-sft ARGS.json [--key value ...]
       (python paddlemix/tools/supervised_finetune.py ARGS.json ...; several processes: sh paddlemix/tools/train.sh)

ARGS.json is one JSON object of the keys below; `--key value` pairs override it (values are read as JSON, else as
strings). Unknown keys, wrong types and combinations that cannot work stop the run before the model loads.
Relative paths in the argument file (model_name_or_path, data_files, image_root, chat_template, output_dir) are
relative to the working directory; relative image paths inside a data file are relative to the source's
image_root, else to the data file's folder."""

# The paddleformers TrainingArguments fields most runs set, shown with their defaults; every other field of it is
# accepted too.
COMMON_TRAINING_KEYS = (
    "output_dir", "overwrite_output_dir", "do_train", "do_eval", "num_train_epochs", "max_steps",
    "per_device_train_batch_size", "gradient_accumulation_steps", "per_device_eval_batch_size", "learning_rate",
    "lr_scheduler_type", "warmup_ratio", "weight_decay", "adam_beta2", "max_grad_norm", "bf16", "fp16",
    "fp16_opt_level", "logging_steps", "evaluation_strategy", "eval_steps", "save_strategy", "save_steps",
    "save_total_limit", "load_best_model_at_end", "metric_for_best_model", "resume_from_checkpoint", "seed",
    "dataloader_num_workers", "report_to",
)  # fmt: skip
WIDTH = 119


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return _json(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return _json(f.default_factory())
    return "required"


def _json(value: Any) -> str:
    """A default as it is written in the JSON file (enums by value, None as "not set")."""
    value = getattr(value, "value", value)
    return "not set" if value is None else json.dumps(value)


def _row(key: str, type_name: str, default: str, meaning: str = "") -> str:
    head = f"  {key:<28} {type_name:<24} {default}"
    if not meaning:
        return head
    return head + "\n" + textwrap.fill(meaning, WIDTH, initial_indent=" " * 6, subsequent_indent=" " * 6)


def _type(tp: Any) -> str:
    """A type as a user reads it: `int | None`, `"cpu"|"gpu"`, `list[str]`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type(a) for a in args)
    if origin is typing.Literal:
        return "|".join(json.dumps(a) for a in args)
    if origin is list:
        return f"list[{_type(args[0])}]" if args else "list"
    if tp is type(None):
        return "None"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "|".join(json.dumps(m.value) for m in tp)
    return getattr(tp, "__name__", str(tp))


def help_text() -> str:
    """The usage, then each group of keys (its meaning from the group's docstring) with type and default."""
    aliases = {foreign.to: key for key, foreign in arguments.PADDLEMIX_KEYS.items() if foreign.to}
    parts = [USAGE]
    for group, cls in arguments.OWN_GROUPS.items():
        doc = " ".join(inspect.getdoc(cls).split())
        rows = []
        hints = arguments._field_types(cls)
        for f in dataclasses.fields(cls):
            if f.name in arguments.DATA_SPLITS:
                continue
            alias = f"PaddleMIX's name: {aliases[f.name]}" if f.name in aliases else ""
            rows.append(_row(f.name, _type(hints[f.name]), _default(f), alias))
        if group == "data":
            source = ", ".join(f"{f.name}={_default(f)}" for f in dataclasses.fields(arguments.DatasetSource))
            rows.insert(0, _row("dataset", "object", "required",
                                f'{{"train": [source, ...], "eval": [source, ...]}}; a source: {source}'))  # fmt: skip
        parts.append(f"{group}: " + textwrap.fill(doc, WIDTH - len(group) - 2) + "\n" + "\n".join(rows))
    training_cls = arguments._training_arguments_cls()
    fields = {f.name: f for f in dataclasses.fields(training_cls)}
    hints = arguments._field_types(training_cls)
    rows = []
    for name in COMMON_TRAINING_KEYS:
        f = fields[name]
        default = _json(arguments.TRAINING_DEFAULTS[name]) if name in arguments.TRAINING_DEFAULTS else _default(f)
        rows.append(_row(name, _type(hints.get(name, Any)), default, f.metadata.get("help", "").split(". ")[0]))
    header = (
        "training: paddleformers' TrainingArguments; the ones most runs set are listed, and each of its "
        f"{len(fields) - len(COMMON_TRAINING_KEYS)} other fields is accepted too (parallel degrees: "
        "tensor_parallel_degree, pipeline_parallel_degree, sharding_parallel_degree, sharding)."
    )
    parts.append(textwrap.fill(header, WIDTH) + "\n" + "\n".join(rows))
    ignored = sorted(k for k, foreign in arguments.PADDLEMIX_KEYS.items() if not foreign.to)
    parts.append(textwrap.fill("PaddleMIX keys accepted and logged as ignored (or refused when set to something "
                               "that would change the run): " + ", ".join(ignored) + ".", WIDTH))  # fmt: skip
    return "\n\n".join(parts)
