"""Typed run arguments read from one JSON file (PaddleMIX key names) plus `--key value` overrides.

Every key is owned by exactly one dataclass here or by paddleformers' TrainingArguments; PaddleMIX's keys that we
name differently or do not have go through one table, PADDLEMIX_KEYS. Unknown keys, wrong types and combinations
that cannot work are all reported in one UserError, naming each key and the file (or the command line), before any
model loads.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.util
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from paddlemix.distributed.checks import check_parallel, check_pipeline, parallel_degrees, sharding_notes
from paddlemix.utils.errors import Problems, UserError, closest
from paddlemix.utils.io import read_json

SourceName = Literal["chatml_dataset", "coco_caption", "coco_vqa"]
Device = Literal["cpu", "gpu", "npu", "xpu"]
TrainType = Literal["use_lora", "freeze_vision", "none"]


@dataclass(frozen=True)
class ForeignKey:
    """How one key of PaddleMIX's argument files is read here.

    `to`: our name for the same setting (the value is used unchanged). Otherwise the key is accepted and logged as
    ignored (`why`) while its value is `inert` (changes nothing here); any other value is refused with `refuse`.
    """

    to: str | None = None
    why: str = ""
    inert: Callable[[Any], bool] = lambda value: True
    refuse: str = ""


def _off(value: Any) -> bool:
    return value in (False, None, 0, "", [])


# Every key PaddleMIX's fine-tuning tool reads (its ModelArgument, DataArgument, GenerateArgument and the fields its
# TrainingArguments adds to PaddleNLP's) that this toolkit names differently or does not have. The one table of
# translations; README "Compatibility with PaddleMIX argument files" lists it. (`recompute` is PaddleNLP's key for
# activation recomputation and is translated with the recompute settings.)
PADDLEMIX_KEYS: dict[str, ForeignKey] = {
    # paddleformers 1.2 renamed the parallel degrees of PaddleNLP's TrainingArguments
    "tensor_parallel_degree": ForeignKey(to="tensor_model_parallel_size"),
    "pipeline_parallel_degree": ForeignKey(to="pipeline_model_parallel_size"),
    "sharding_parallel_degree": ForeignKey(to="sharding_parallel_size"),
    "mixtoken": ForeignKey(to="packing"),
    "eval_with_do_generation": ForeignKey(to="eval_generation"),
    "use_flash_attention": ForeignKey(
        why="the attention is chosen per device: on CPU this toolkit's (paddlemix/models/attention.py), elsewhere "
        "the model's default"
    ),
    "group_by_modality_length": ForeignKey(
        why="batches are drawn in shuffled order, not grouped by length",
        inert=_off,
        refuse="grouping batches by modality length is not available here; set it to false (to avoid padding "
        'waste, set "mixtoken": true instead)',
    ),
    "lr_scheduler_name": ForeignKey(
        why="PaddleMIX reads it only in its BLIP-2 and MiniGPT-4 trainers; the schedule here is lr_scheduler_type"
    ),
    "eta_min": ForeignKey(why="PaddleMIX's BLIP-2/MiniGPT-4 schedule only; for a floor here use min_lr"),
    "warmup_start_lr": ForeignKey(why="PaddleMIX's BLIP-2/MiniGPT-4 schedule only; warmup starts at 0 here"),
    "src_length": ForeignKey(
        why="max_length bounds prompt and answer together; longer samples are skipped, never cut"
    ),
    "text_model_name_or_path": ForeignKey(
        why="PaddleMIX's separate BLIP-2 tokenizer; the tokenizer is read from model_name_or_path"
    ),
    "version": ForeignKey(why="the conversation format is the model's chat template or a source's chat_template"),
    "task_name": ForeignKey(why="PaddleMIX's fine-tuning tool does not read it either"),
    "lazy": ForeignKey(why="records are always read lazily here"),
    "save_generation_output": ForeignKey(
        why="generated answers are scored, not saved; `infer.py --data_file FILE --output answers.jsonl` saves them"
    ),
    "splits": ForeignKey(
        why="no named dataset is downloaded here",
        inert=_off,
        refuse='PaddleMIX downloads its named datasets by split; here every source names its "data_files"',
    ),
    "top_k": ForeignKey(why="generation during evaluation is greedy here"),
    "top_p": ForeignKey(why="generation during evaluation is greedy here"),
    "profiler_options": ForeignKey(why="no profiler hook here", inert=_off, refuse="profiling is not available here"),
    "prefix_tuning": ForeignKey(
        why="off, and not available here", inert=_off, refuse='prefix tuning is not available here; use "lora": true'
    ),
    "num_prefix_tokens": ForeignKey(why="prefix tuning is not available here"),
    "neftune": ForeignKey(
        why="off, and not available here",
        inert=_off,
        refuse="NEFTune embedding noise is not available here; set it to false",
    ),
    "neftune_noise_alpha": ForeignKey(why="NEFTune is not available here"),
    "from_aistudio": ForeignKey(
        why="models load from local folders",
        inert=_off,
        refuse="nothing is downloaded here; point model_name_or_path at a local folder and set it to false",
    ),
    "save_to_aistudio": ForeignKey(
        why="nothing is uploaded",
        inert=_off,
        refuse="uploading is not available here; upload output_dir yourself and set it to false",
    ),
    "aistudio_repo_id": ForeignKey(why="nothing is uploaded"),
    "aistudio_repo_private": ForeignKey(why="nothing is uploaded"),
    "aistudio_repo_license": ForeignKey(why="nothing is uploaded"),
    "aistudio_token": ForeignKey(why="nothing is uploaded"),
    # PaddleMIX's Qwen2-VL tool (examples/qwen2_vl/qwen2vl_finetune.py) and its shell recipes.
    "freeze_vit": ForeignKey(to="freeze_vision"),
    "max_seq_length": ForeignKey(to="max_length"),  # PaddleMIX cuts longer samples; here they are skipped (counted)
    "meta_path": ForeignKey(to="meta_path"),  # read into dataset.train by _meta_path_sources
    "sep_parallel_degree": ForeignKey(
        why="no sequence parallelism; 1 (or -1, unset) changes nothing",
        inert=lambda value: value in (None, -1, 1),
        refuse="sequence (sep) parallelism is not available here; set it to 1 and use sharding or data parallelism",
    ),
    "max_image_size": ForeignKey(why="PaddleMIX's Qwen2-VL tool overwrites it with image_resolution"),
    "cache_dir": ForeignKey(why="models load from local folders; nothing is downloaded"),
    "use_cache": ForeignKey(why="the KV cache is used by generation only, not by training"),
    "conv_style": ForeignKey(why="the conversation format is the model's chat template or a source's chat_template"),
    "normalize_type": ForeignKey(
        why="pixels are normalised by the model's image processor (PaddleMIX's Qwen2-VL tool does not read it either)"
    ),
    "pad2square": ForeignKey(
        why="off",
        inert=_off,
        refuse="padding images to a square is not available here; set it to false",
    ),
    "drop_path_rate": ForeignKey(
        why="0, no stochastic depth",
        inert=_off,
        refuse="stochastic depth (drop path) in the vision tower is not available here; set it to 0",
    ),
    "resize_vocab": ForeignKey(
        why="off", inert=_off, refuse="resizing the vocabulary is not available here; set it to false"
    ),
    "new_special_tokens": ForeignKey(
        why="none",
        inert=_off,
        refuse="adding special tokens is not available here; remove the key",
    ),
    "use_data_resampling": ForeignKey(
        why="off",
        inert=_off,
        refuse="square-root resampling of sources is not available here; set it to false and give each source a "
        '"sampling_rate" in "dataset"',
    ),
    "group_by_length": ForeignKey(
        why="off",
        inert=_off,
        refuse="grouping batches by length is not available here; set it to false (to avoid padding waste, set "
        '"mixtoken": true instead)',
    ),
    "save_safetensors": ForeignKey(why="checkpoints are saved as safetensors here"),
}
# Keys of one dataset source that PaddleMIX accepts and we do not.
PADDLEMIX_SOURCE_KEYS = {"splits": PADDLEMIX_KEYS["splits"]}


@dataclass(frozen=True)
class DatasetSource:
    """One entry of `dataset.train` / `dataset.eval`: a reader, its files and how much of it to use.

    `image_placeholder`: the text that marks an image in string content of records that have images (default
    `<image>`; elsewhere it is plain text). `inline_images`: whether `<img>path</img>` in string content is an image
    (unset = only in PaddleMIX's pair-list conversations; elsewhere it is plain text, as in HTML).
    `keep_empty_think`: with a thinking chat template (Qwen3's), whether the empty `<think></think>` block it
    writes before an answer without reasoning is trained (true, as the template renders it) or is part of the
    prompt (false: prompts are rendered with `enable_thinking=False`, which writes that block)."""

    name: SourceName
    data_files: list[str]
    chat_template: str | None = None
    sampling_rate: float = 1.0
    image_root: str | None = None
    prompt: str | None = None
    image_placeholder: str = "<image>"
    inline_images: bool | None = None
    keep_empty_think: bool = True


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
    # PaddleMIX's LLaVA key: the projector's learning rate (scaled along with the schedule); unset = learning_rate.
    mm_projector_lr: float | None = None


@dataclass(frozen=True)
class DataArgs:
    """The training and evaluation mixes, the sequence budget and how images are read: records with an image of
    more than `max_image_pixels` (default Pillow's `Image.MAX_IMAGE_PIXELS`) are skipped; images given as URLs are
    cached in `image_cache_dir` (default ~/.cache/paddlemix/images)."""

    train: list[DatasetSource] = field(default_factory=list)
    eval: list[DatasetSource] = field(default_factory=list)
    max_length: int = 2048
    packing: bool = False
    pack_window: int = 1000
    max_skip_ratio: float = 0.05
    max_image_pixels: int = 89_478_485
    image_cache_dir: str | None = None
    # PaddleMIX's Qwen2-VL key: the longer image side is scaled down to at most this (None = as stored).
    image_resolution: int | None = None
    # Special-token strings typed in record text are plain text (transformers' `split_special_tokens`); false makes
    # them control tokens.
    split_special_tokens: bool = True
    # Videos (Qwen-VL families), defaults under each record's own sampling keys: PaddleMIX's Qwen2-VL keys map onto
    # qwen-vl-utils' options: `video_fps` -> fps (frames sampled per second, default 2), `video_maxlen` ->
    # max_frames (default 768), `video_resolution` -> max_pixels = video_resolution^2 per frame;
    # `video_min_pixels` / `video_max_pixels` (LLaMA-Factory's names; the latter wins over video_resolution) set
    # the per-frame pixel bounds. Clips longer than `max_video_seconds` are skipped.
    video_fps: float | None = None
    video_maxlen: int | None = None
    video_resolution: int | None = None
    video_min_pixels: int | None = None
    video_max_pixels: int | None = None
    max_video_seconds: float | None = 10800.0


@dataclass(frozen=True)
class LoraArgs:
    """Low-rank adapters. `lora_target_modules`: module names (`q_proj`), `all-linear`, or regexes matched in full;
    see paddlemix/peft/targets.py. `lora_path`: a Hugging Face PEFT adapter folder to continue."""

    lora: bool = False
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: list[str] | None = None
    lora_path: str | None = None
    rslora: bool = False


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


@dataclass(frozen=True)
class PreferenceArgs:
    """`"stage": "dpo"` trains on preference pairs (README "Preference training (DPO)"). `pref_loss`: sigmoid (DPO),
    ipo, hinge, simpo, orpo (the last two need no reference); `pref_beta`: beta (ORPO: its lambda);
    `label_smoothing`: conservative DPO's epsilon; `pref_ftx`: weight of an SFT term on the chosen answer;
    `ref_model_name_or_path`: the reference of a full fine-tuning run (default the starting model)."""

    stage: Literal["sft", "dpo"] = "sft"
    pref_loss: Literal["sigmoid", "ipo", "hinge", "simpo", "orpo"] = "sigmoid"
    pref_beta: float = 0.1
    simpo_gamma: float = 0.5
    label_smoothing: float = 0.0
    pref_ftx: float = 0.0
    ref_model_name_or_path: str | None = None
    # Full fine-tuning: reference log-probs computed once before training (output_dir/reference_logps.json)
    # instead of a frozen copy kept in memory during training.
    precompute_ref_log_probs: bool = False


OWN_GROUPS = {"model": ModelArgs, "data": DataArgs, "lora": LoraArgs, "runtime": RuntimeArgs,
              "preference": PreferenceArgs}  # fmt: skip
# The preference keys under the names TRL and ms-swift use.
PREFERENCE_ALIASES = {"loss_type": "pref_loss", "beta": "pref_beta", "rpo_alpha": "pref_ftx"}
# What a preference run logs per logging interval and evaluation (`eval_` prefix); `sft_loss` with an SFT term.
PREFERENCE_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                      "logps/rejected", "logps/accuracies", "sft_loss")  # fmt: skip
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
    preference: PreferenceArgs = field(default_factory=PreferenceArgs)
    training_keys: tuple[str, ...] = ()
    # One line each about what the tool adjusted or ignored (PaddleMIX keys, CPU precision); logged by the run.
    notes: tuple[str, ...] = ()
    # Keys given as `--key value` overrides, so later checks name the command line rather than the file.
    cli_keys: frozenset[str] = frozenset()

    def origin(self, key: str) -> str:
        """Where `key` was given: "command line" for an override, else the argument file."""
        return "command line" if key in self.cli_keys else self.source_file

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved arguments in the JSON key space, as saved to run_args.json."""
        out: dict[str, Any] = {}
        for group in (self.model, self.lora, self.runtime, self.preference):
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


def _parse_source(entry: Any, split: str, index: int, problems: Problems) -> DatasetSource | None:
    key = f"dataset.{split}[{index}]"
    where = problems.origin("dataset")
    if not isinstance(entry, dict):
        problems.add(f'"{key}" must be an object like {{"name": "chatml_dataset", "data_files": ...}}.', "dataset")
        return None
    types_ = _field_types(DatasetSource)
    count = len(problems.items)
    values = {}
    for k, v in entry.items():
        foreign = PADDLEMIX_SOURCE_KEYS.get(k)
        if k in types_:
            try:
                values[k] = coerce(v, types_[k], f"{key}.{k}", where)
            except UserError as err:
                problems.error(err)
        elif foreign is not None and not foreign.inert(v):
            problems.add(f'"{key}.{k}" = {v!r}: {foreign.refuse}.', "dataset")
        elif foreign is None:
            problems.add(f'unknown key "{key}.{k}".{closest(k, types_)}', "dataset")
    for k in ("name", "data_files"):
        if k not in entry:
            problems.add(f'"{key}" needs "{k}".', "dataset")
    return DatasetSource(**values) if len(problems.items) == count else None


def _split_overrides(overrides: list[str]) -> dict[str, Any]:
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


def load(path: str | Path, overrides: list[str] | None = None, world_size: int | None = None) -> RunArgs:
    """Read the argument file and `--key value` overrides into RunArgs; raise one UserError listing every mistake
    (those of an override name the command line, not the file). `world_size`: the processes a launcher is about to
    start (train.sh checks the file before launching), else those of this launch (PADDLE_TRAINERS_NUM)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"argument file {path} does not exist.")
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise UserError(f"{path} must hold one JSON object of arguments.")
    cli = _split_overrides(overrides or [])
    raw.update(cli)
    return parse(raw, str(path), set(cli), world_size)


def known_keys() -> set[str]:
    """Every top-level key an argument file may hold: ours, paddleformers' TrainingArguments and PaddleMIX's."""
    own = {key for cls in OWN_GROUPS.values() for key in _field_types(cls) if key not in DATA_SPLITS}
    return own | set(_field_types(_training_arguments_cls())) | set(PADDLEMIX_KEYS) | {"dataset", "chat_template"}


def _suggest(key: str, training_types: dict[str, Any]) -> str:
    """The closest key: ours first (the ones users mean most often), then paddleformers'."""
    own = {k for cls in OWN_GROUPS.values() for k in _field_types(cls) if k not in DATA_SPLITS} | {"dataset"}
    return closest(key, own) or closest(key, training_types)


def parse(raw: dict[str, Any], where: str, cli_keys: set[str] | None = None, world_size: int | None = None) -> RunArgs:
    """Route each flat key to its dataclass, translate PaddleMIX's keys, check types, then check combinations (see
    `validate`); every problem found is reported in one UserError."""
    problems = Problems(where, cli_keys)
    training_cls = _training_arguments_cls()
    training_types = _field_types(training_cls)
    own_types = {name: _field_types(cls) for name, cls in OWN_GROUPS.items()}
    owner = {key: group for group, fields in own_types.items() for key in fields if key not in DATA_SPLITS}
    groups: dict[str, dict[str, Any]] = {name: {} for name in OWN_GROUPS}
    training: dict[str, Any] = {}
    notes: list[str] = []
    translated: dict[str, str] = {}  # our name -> the key that set it (a PaddleMIX key and ours must not clash)
    for key, value in raw.items():
        origin = problems.origin(key)
        name = key
        if key in PADDLEMIX_KEYS:
            foreign = PADDLEMIX_KEYS[key]
            if foreign.to is None:
                if foreign.inert(value):
                    notes.append(f"ignored: {key}: {foreign.why}")
                else:
                    problems.add(f'"{key}" = {json.dumps(value)}: {foreign.refuse}.', key)
                continue
            name = foreign.to
        name = PREFERENCE_ALIASES.get(name, name)
        if name in translated:
            problems.add(f'"{key}" and "{translated[name]}" both set {name}; keep one of them.', key)
            continue
        translated[name] = key
        try:
            if name == "dataset":
                groups["data"].update(_parse_dataset(value, problems))
            elif name == "meta_path":
                if "dataset" in raw:
                    problems.add(
                        f'"meta_path" = {json.dumps(value)} and "dataset" both name the training data; keep one of '
                        "them.",
                        key,
                    )
                else:
                    groups["data"].update(_meta_path_sources(value, origin, problems, notes))
            elif name == "chat_template":
                continue  # applied to the sources below
            elif name in owner:
                group = owner[name]
                groups[group][name] = coerce(value, own_types[group][name], key, origin)
            elif name in training_types:
                training[name] = coerce(value, training_types[name], key, origin)
            elif origin == "command line":
                hint = _suggest(key.replace("-", "_"), training_types).replace('"', '"--', 1)
                problems.add(f'unknown option "--{key}".{hint}', key)
            else:
                problems.add(f'unknown key "{key}".{_suggest(key, training_types)}', key)
        except UserError as err:
            problems.error(err)
    if "chat_template" in raw:
        _apply_chat_template(raw["chat_template"], groups["data"], problems, notes)
    if "model_name_or_path" not in groups["model"]:
        problems.add('"model_name_or_path" is required (a local model folder in Hugging Face layout).')
    if "output_dir" not in training:
        problems.add('"output_dir" is required.')
    try:
        _apply_train_type(groups["model"].get("train_type"), groups["lora"], problems.origin("train_type"))
    except UserError as err:
        problems.error(err)
    if "model_name_or_path" not in groups["model"]:
        problems.raise_if_any()
    # The combinations are checked even when some keys were wrong, so one run reports everything it can.
    args = RunArgs(
        model=ModelArgs(**groups["model"]),
        data=DataArgs(**groups["data"]),
        lora=LoraArgs(**groups["lora"]),
        runtime=RuntimeArgs(**groups["runtime"]),
        preference=PreferenceArgs(**groups["preference"]),
        training=None,
        source_file=where,
        cli_keys=frozenset(
            k for key in cli_keys or () for k in (key, getattr(PADDLEMIX_KEYS.get(key), "to", None)) if k
        ),
    )
    validate(args, training, problems, world_size)
    _validate_preference(args, set(translated), training, problems)
    problems.raise_if_any()
    kwargs, adjusted = training_kwargs_with_notes(training, args.runtime, args.data.packing)
    if kwargs["device"] == "cpu":  # GPU/NPU/XPU runs never import the stand-ins
        from paddlemix.distributed.cpu_collectives import install

        # before TrainingArguments: building it initialises fleet for the parallel degrees
        install("cpu", parallel_degrees(kwargs))
    args.training = _build_training_arguments(training_cls, kwargs, where)
    args.training_keys = tuple(dict.fromkeys((*training, *TRAINING_DEFAULTS)))
    args.notes = tuple(notes + adjusted)
    return args


def _meta_path_sources(value: Any, origin: str, problems: Problems, notes: list[str]) -> dict[str, Any]:
    """PaddleMIX's data meta file ({name: {"root", "annotation", "repeat_time", ...}}) as `dataset.train`: one
    chatml_dataset source per entry, image paths relative to the working directory as PaddleMIX's Qwen2-VL tool
    reads them (it does not use `root`), `repeat_time` as sampling_rate (both mean: that many passes over the
    records, a fraction taking that share of them)."""
    if not isinstance(value, str) or not Path(value).is_file():
        problems.add(
            f'"meta_path" = {json.dumps(value)}: no such meta file; give the path of a JSON file.', "meta_path"
        )
        return {}
    try:
        meta = read_json(value)
    except (OSError, ValueError) as err:
        problems.add(f'"meta_path" = {json.dumps(value)}: cannot be read as JSON ({err}).', "meta_path")
        return {}
    entries = []
    for name, entry in meta.items() if isinstance(meta, dict) else []:
        if not isinstance(entry, dict) or "annotation" not in entry:
            problems.add(f'"meta_path" file {value}: entry "{name}" needs "annotation" (its JSON file).', "meta_path")
            continue
        # The Qwen2-VL tool opens each record's image path as written (its join with "root" is commented out).
        source = {"name": "chatml_dataset", "data_files": entry["annotation"], "image_root": str(Path.cwd())}
        source["sampling_rate"] = entry.get("repeat_time", 1)
        entries.append(source)
    if not entries:
        problems.add(f'"meta_path" file {value} names no datasets; expected {{"name": {{"annotation": ...}}}}.')
        return {}
    notes.append(
        f"meta_path {value}: {len(entries)} sources read into dataset.train as chatml_dataset, image paths relative "
        "to the working directory (PaddleMIX's Qwen2-VL tool does not read root)"
    )
    return _parse_dataset({"train": entries}, problems)


def _apply_chat_template(value: Any, data: dict[str, Any], problems: Problems, notes: list[str]) -> None:
    """PaddleMIX's top-level `chat_template` (DataArgument) applies to every source that names none itself."""
    if value is None:
        return
    if not isinstance(value, str):
        problems.add(f'"chat_template" must be a path, got {value!r}.', "chat_template")
        return
    for split in DATA_SPLITS:
        data[split] = [dataclasses.replace(s, chat_template=s.chat_template or value) for s in data.get(split, [])]
    notes.append(f"chat_template {value} applies to every source without its own (PaddleMIX's top-level key)")


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


def _parse_dataset(value: Any, problems: Problems) -> dict[str, list[DatasetSource]]:
    if not isinstance(value, dict):
        problems.add('"dataset" must be an object {"train": [...], "eval": [...]}.', "dataset")
        return {}
    for k in value:
        if k not in DATA_SPLITS:
            problems.add(f'unknown key "dataset.{k}"; use "train" and "eval".', "dataset")
    out = {}
    for split in DATA_SPLITS:
        entries = value.get(split, [])
        if not isinstance(entries, list):
            entries = [entries]
        parsed = [_parse_source(e, split, i, problems) for i, e in enumerate(entries)]
        out[split] = [p for p in parsed if p is not None]
    return out


# Why half precision cannot train on CPU here (checked with Paddle 3.3: the vision towers' patch embeddings call
# conv3d (Qwen) and conv2d (CLIP), which have no CPU bfloat16 or float16 kernel, under O1 autocast and O2 alike).
CPU_HALF_PRECISION = (
    "Paddle 3.3 has no {kind} conv2d/conv3d kernels on CPU (the vision towers' patch embedding); the same file "
    "trains in {kind} on a GPU"
)


def training_kwargs_with_notes(
    training: dict[str, Any], runtime: RuntimeArgs, packing: bool
) -> tuple[dict[str, Any], list[str]]:
    """`training_kwargs`, adjusted where the device cannot run a setting, with one note per adjustment."""
    kwargs = training_kwargs(training, runtime, packing)
    notes = []
    if kwargs["device"] == "cpu" and (kwargs.get("bf16") or kwargs.get("fp16")):
        kind, key = ("bfloat16", "bf16") if kwargs.get("bf16") else ("float16", "fp16")
        asked = f"{key} {kwargs.get('fp16_opt_level', 'O1')}"
        notes.append(f"precision: float32, not {asked}: {CPU_HALF_PRECISION.format(kind=kind)}")
        kwargs.update(bf16=False, fp16=False, amp_master_grad=False)
    if (
        not kwargs.get("do_train", True)
        and kwargs.get("do_eval")
        and str(kwargs.get("evaluation_strategy")) in ("no", "None")
    ):
        # An evaluation-only run evaluates once; paddleformers refuses "do_eval" with the default strategy "no".
        kwargs["evaluation_strategy"] = "steps"
    notes.extend(sharding_notes(kwargs))
    return kwargs, notes


def training_kwargs(training: dict[str, Any], runtime: RuntimeArgs, packing: bool) -> dict[str, Any]:
    """The keyword arguments handed to paddleformers' TrainingArguments (parallel degrees already translated)."""
    from paddlemix.utils.device import resolve_device

    kwargs = {**TRAINING_DEFAULTS, **training, "device": resolve_device(runtime.device)}
    kwargs.setdefault("amp_master_grad", bool(kwargs.get("fp16") or kwargs.get("bf16")))
    if max(kwargs.get("pipeline_model_parallel_size", 1) or 1, 1) > 1:
        # Micro-batches keep their own lengths (padding to the longest in the batch); the stages exchange shapes.
        kwargs.setdefault("variable_seq_lengths", True)
    if packing:
        # The pack stream fast-forwards itself on resume; the trainer must not replay (and decode) skipped batches.
        kwargs["ignore_data_skip"] = True
    return kwargs


def _build_training_arguments(cls: type, kwargs: dict[str, Any], where: str) -> Any:
    try:
        return cls(**kwargs)
    except (ValueError, TypeError, AssertionError, RuntimeError) as err:
        raise UserError(f"{where}: the training arguments do not fit together: {err}") from None


def validate(args: RunArgs, training: dict[str, Any], problems: Problems, world_size: int | None = None) -> None:
    """Check paths and cross-field combinations that would otherwise fail after the model is loaded; every
    problem is added to `problems`."""
    add = problems.add
    model_dir = Path(args.model.model_name_or_path)
    if not (model_dir / "config.json").is_file():
        add(
            f'"model_name_or_path" = "{model_dir}" is not a local model folder with a config.json. '
            "Point it at a Hugging Face-layout folder (config.json, *.safetensors, tokenizer and processor files).",
            "model_name_or_path",
        )
    if args.data.image_resolution is not None and args.data.image_resolution < 28:
        add(
            f'"image_resolution" must be at least 28 (the smallest image side the vision towers take), got '
            f"{args.data.image_resolution}; leave it unset to keep images as stored.",
            "image_resolution",
        )
    for split in DATA_SPLITS:
        for k, source in enumerate(getattr(args.data, split)):
            if not source.image_placeholder.strip():
                add(f'"dataset.{split}[{k}].image_placeholder" is empty; give the text that marks an image in the '
                    'records (default "<image>").', "dataset")  # fmt: skip
    if training.get("fp16") and training.get("bf16"):
        add('"fp16" and "bf16" are both true; choose one.', "fp16")
    if training.get("fp16_opt_level") == "O2" and not (training.get("fp16") or training.get("bf16")):
        add('"fp16_opt_level": "O2" needs "fp16": true or "bf16": true.', "fp16_opt_level")
    if args.lora.lora and args.model.freeze_llm:
        add(
            '"freeze_llm": true leaves LoRA nothing to train (its adapters sit in the language model); '
            'set "lora": false to train only the vision tower or projector.',
            "freeze_llm",
        )
    if args.lora.lora and (args.lora.lora_rank < 1 or not 0 <= args.lora.lora_dropout < 1):
        add(
            f'"lora_rank" must be >= 1 and "lora_dropout" in [0, 1), got {args.lora.lora_rank} and '
            f"{args.lora.lora_dropout}.",
            "lora_rank",
        )
    if args.lora.lora_path and not args.lora.lora:
        add('"lora_path" is set but "lora" is false; set "lora": true to continue an adapter.', "lora_path")
    if args.lora.lora_path and not Path(args.lora.lora_path).is_dir():
        add(f'"lora_path" = "{args.lora.lora_path}" is not a folder.', "lora_path")
    if args.data.packing and training.get("max_steps", -1) <= 0 and training.get("num_train_epochs", 1) <= 0:
        add('"mixtoken": true needs a positive "max_steps" or "num_train_epochs".', "num_train_epochs")
    if args.model.mm_projector_lr is not None and args.model.mm_projector_lr <= 0:
        add(f'"mm_projector_lr" must be positive, got {args.model.mm_projector_lr}.', "mm_projector_lr")
    if args.data.pack_window < 1:
        add(f'"pack_window" must be at least 1, got {args.data.pack_window}.', "pack_window")
    if args.data.max_image_pixels < 28 * 28:
        add(
            f'"max_image_pixels" must be at least 784 (28 x 28), got {args.data.max_image_pixels}.', "max_image_pixels"
        )
    if not 0 <= args.data.max_skip_ratio <= 1:
        add(f'"max_skip_ratio" must be between 0 and 1, got {args.data.max_skip_ratio}.', "max_skip_ratio")
    reporters = training.get("report_to") or []
    if "tensorboard" in reporters and importlib.util.find_spec("tensorboardX") is None:
        add('"report_to" names tensorboard, which needs `pip install tensorboardX`.', "report_to")
    learning_rate, schedule = (
        float(training.get("learning_rate", 1e-5)),
        str(training.get("lr_scheduler_type", "linear")),
    )
    if learning_rate < 0 or (learning_rate == 0 and schedule in ("cosine", "polynomial")):
        add(
            f'"learning_rate" = {learning_rate:g} does not work with "lr_scheduler_type" "{schedule}" (paddleformers\' '
            'cosine and polynomial schedules divide by it); use a positive learning rate, "lr_scheduler_type": '
            '"constant" for a zero one, or "do_train": false to evaluate only.',
            "learning_rate",
        )
    if args.runtime.loss_chunk_size < 0:
        add('"loss_chunk_size" must be >= 0 (0 turns the chunked loss off).', "loss_chunk_size")
    if args.data.max_length < 16:
        add(f'"max_length" must be at least 16, got {args.data.max_length}.', "max_length")
    if training.get("do_train", True) and not args.data.train and "dataset" not in problems.keys:
        add('"dataset.train" is empty; name at least one source.', "dataset")
    if training.get("do_eval") and not args.data.eval:
        add('"do_eval" is true but "dataset.eval" is empty.', "do_eval")
    if training.get("load_best_model_at_end"):
        _validate_best_model(args, training, problems)
    for split in DATA_SPLITS:
        for i, source in enumerate(getattr(args.data, split)):
            _validate_source(source, f"dataset.{split}[{i}]", problems)
    captions = [s for s in args.data.eval if s.name == "coco_caption"]
    if args.runtime.eval_generation and captions and importlib.util.find_spec("sacrebleu") is None:
        add(
            '"eval_generation" scores caption sources (dataset.eval: '
            f"{', '.join(str(s.data_files[0]) for s in captions)}) with sacrebleu's BLEU, which is not installed; "
            "install the eval extra (pip install -e '.[eval]') or turn \"eval_generation\" off.",
            "eval_generation",
        )
    check_parallel(training, model_dir, problems, lora=args.lora.lora, world_size=world_size)
    if args.preference.stage == "sft":  # a preference run is refused with pipeline parallel in one message below
        check_pipeline(training, model_dir, problems, lora=args.lora.lora)


def _validate_best_model(args: RunArgs, training: dict[str, Any], problems: Problems) -> None:
    """`load_best_model_at_end` needs evaluations to compare and checkpoints to go back to."""
    # paddleformers turns "do_eval" on for any "evaluation_strategy" but "no" (TrainingArguments.__post_init__)
    no_eval = not args.data.eval or str(training.get("evaluation_strategy", "no")) == "no"
    if no_eval:
        problems.add(
            '"load_best_model_at_end": true needs evaluations to pick the best checkpoint, but this run never '
            'evaluates; set "do_eval": true with a "dataset.eval" source and "evaluation_strategy": "steps" (or '
            '"epoch"), or set "load_best_model_at_end": false.',
            "load_best_model_at_end",
        )
    if str(training.get("save_strategy", "steps")) == "no":
        problems.add(
            '"load_best_model_at_end": true needs checkpoints to go back to, but "save_strategy" is "no"; save at '
            'the evaluation steps ("save_strategy" equal to "evaluation_strategy") or set "load_best_model_at_end": '
            "false.",
            "load_best_model_at_end",
        )
    metric = str(training.get("metric_for_best_model") or "loss")
    if args.preference.stage == "dpo":  # pair evaluations log the loss and the preference metrics
        if metric.removeprefix("eval_") not in ("loss", *PREFERENCE_METRICS):
            problems.add(
                f'"metric_for_best_model" = "{metric}" is not logged by a preference run; use "eval_loss" or one of '
                f'{", ".join("eval_" + m for m in PREFERENCE_METRICS)} (with "greater_is_better": true for accuracies, '
                "rewards and margins).",
                "metric_for_best_model",
            )
    elif metric.removeprefix("eval_") != "loss" and not args.runtime.eval_generation:
        problems.add(
            f'"metric_for_best_model" = "{metric}" is not logged by this run: without "eval_generation": true the '
            'evaluation logs only "eval_loss"; use "eval_loss", or turn on "eval_generation" for "eval_accuracy" / '
            '"eval_bleu4".',
            "metric_for_best_model",
        )


def _validate_preference(args: RunArgs, given: set[str], training: dict[str, Any], problems: Problems) -> None:
    """The preference keys: ranges, combinations, and no preference key in an SFT run (it would be ignored)."""
    pref, add = args.preference, problems.add
    keys = [k for k in _field_types(PreferenceArgs) if k != "stage" and k in given]
    if pref.stage == "sft":
        if keys:
            add(f'{", ".join(keys)} only apply to preference training; add "stage": "dpo" or remove them.', keys[0])
        return
    if pref.pref_beta <= 0:
        add(f'"pref_beta" must be positive, got {pref.pref_beta}.', "pref_beta")
    if not 0 <= pref.label_smoothing < 0.5:
        add(f'"label_smoothing" must be in [0, 0.5), got {pref.label_smoothing}.', "label_smoothing")
    if pref.label_smoothing and pref.pref_loss not in ("sigmoid", "simpo"):
        add(f'"label_smoothing" applies to the sigmoid and simpo losses, not "{pref.pref_loss}".', "label_smoothing")
    if pref.pref_ftx < 0 or pref.simpo_gamma < 0:
        add(f'"pref_ftx" and "simpo_gamma" must be >= 0, got {pref.pref_ftx} and {pref.simpo_gamma}.', "pref_ftx")
    if pref.simpo_gamma != 0.5 and "simpo_gamma" in given and pref.pref_loss != "simpo":
        add(f'"simpo_gamma" applies to "pref_loss": "simpo" only, not "{pref.pref_loss}".', "simpo_gamma")
    m = args.model
    if args.lora.lora and (m.train_type == "use_lora" or m.freeze_projector is False or m.freeze_vision is False):
        add('"stage": "dpo" with LoRA trains the adapters only: its reference is the model with the adapters off, '
            'which fully trained modules would change. Drop "train_type": "use_lora" / "freeze_projector": false / '
            '"freeze_vision": false, or train without LoRA.', "train_type")  # fmt: skip
    if pref.precompute_ref_log_probs and (args.lora.lora or pref.pref_loss in ("simpo", "orpo")):
        add('"precompute_ref_log_probs" applies to full fine-tuning with a loss that has a reference (LoRA runs use '
            "the adapters-off model, SimPO and ORPO none); remove it.", "precompute_ref_log_probs")  # fmt: skip
    ref = pref.ref_model_name_or_path
    if ref is not None:
        if pref.pref_loss in ("simpo", "orpo"):
            add(f'"ref_model_name_or_path" is set but "{pref.pref_loss}" uses no reference model; remove it.',
                "ref_model_name_or_path")  # fmt: skip
        elif args.lora.lora:
            add('"ref_model_name_or_path" with "lora": true: the reference of a LoRA run is the base model with its '
                'adapters off (no second model); remove the key.', "ref_model_name_or_path")  # fmt: skip
        elif not (Path(ref) / "config.json").is_file():
            add(f'"ref_model_name_or_path" = "{ref}" is not a local model folder with a config.json.',
                "ref_model_name_or_path")  # fmt: skip
        else:
            _check_same_family(Path(ref), Path(args.model.model_name_or_path), problems)
    for split in DATA_SPLITS:
        for i, source in enumerate(getattr(args.data, split)):
            if source.name != "chatml_dataset":
                add(f'dataset.{split}[{i}]: "stage": "dpo" reads preference pairs from "chatml_dataset" sources '
                    f'(ms-swift, LLaMA-Factory, TRL or PaddleFormers pair records), not "{source.name}".', "dataset")  # fmt: skip
    if max(training.get("pipeline_model_parallel_size", 1) or 1, 1) > 1:
        add('"pipeline_parallel_degree" > 1 is not supported with "stage": "dpo" (the pair loss needs the whole '
            "model's logits of both answers in one place); use data parallelism, \"sharding\" or "
            '"tensor_parallel_degree" instead, and set "pipeline_parallel_degree": 1.', "pipeline_parallel_degree")  # fmt: skip
    if args.runtime.eval_generation:
        add('"eval_generation" is not supported with "stage": "dpo" (eval records are preference pairs); the '
            "evaluation logs the pair loss and eval_rewards/* and eval_logps/*. Score answers after training "
            "with paddlemix/tools/infer.py on SFT-format records.", "eval_generation")  # fmt: skip


def _check_same_family(ref: Path, model: Path, problems: Problems) -> None:
    """The reference scores the policy's token ids: same model type and vocabulary, or the log-probs mean nothing."""
    if not (model / "config.json").is_file():
        return

    def facts(folder: Path) -> tuple[Any, Any]:
        config = read_json(folder / "config.json")
        return config.get("model_type"), config.get("text_config", config).get("vocab_size", config.get("vocab_size"))

    (ref_type, ref_vocab), (own_type, own_vocab) = facts(ref), facts(model)
    if (ref_type, ref_vocab) != (own_type, own_vocab):
        problems.add(
            f'"ref_model_name_or_path" = "{ref}" is a {ref_type} model with a vocabulary of {ref_vocab}, but the '
            f"trained model is {own_type} with {own_vocab}: the reference must score the same token ids. Point it "
            "at a checkpoint of the same model (e.g. the SFT model), or remove it to use the starting model.",
            "ref_model_name_or_path",
        )


def _validate_source(source: DatasetSource, key: str, problems: Problems) -> None:
    def add(message: str) -> None:
        problems.add(message, "dataset")

    if source.sampling_rate < 0:
        add(f'"{key}.sampling_rate" must be >= 0, got {source.sampling_rate}.')
    for file in source.data_files:
        if not Path(file).is_file():
            add(f'"{key}.data_files" names {file}, which does not exist.')
    if source.chat_template is not None and not Path(source.chat_template).is_file():
        add(
            f'"{key}.chat_template" = "{source.chat_template}" does not exist; it must be a path to a '
            "chat_template.json or a Jinja template file."
        )
    if source.image_root is not None and not Path(source.image_root).is_dir():
        add(f'"{key}.image_root" = "{source.image_root}" is not a folder.')
