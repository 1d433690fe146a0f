"""Supervised fine-tuning from RunArgs: build model, data and trainer, train (resuming if possible), save HF layout."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from paddleformers.trainer import TrainerCallback

from paddlemix.arguments import RunArgs
from paddlemix.datasets.collator import Collator
from paddlemix.datasets.encoded import SkipLog, build_dataset, build_encoder
from paddlemix.datasets.loader_guard import GuardedCollator, worker_failure
from paddlemix.datasets.packing import PackedDataset
from paddlemix.datasets.pair_packing import PairProcessor, join_pairs
from paddlemix.datasets.pairs import PairSourceDataset
from paddlemix.distributed import stage3, tensor_parallel
from paddlemix.distributed.gather import gather_objects
from paddlemix.inference.decoding import add_stop_ids
from paddlemix.models import adapter_for
from paddlemix.models.adapter import ModelAdapter
from paddlemix.models.carried import carried_tensors, log_carried, save_with_carried
from paddlemix.models.hf_config import write_for_both
from paddlemix.peft.freeze import (
    apply_freeze,
    check_checkpoint_patterns,
    check_patterns,
    freeze_plan,
    scale_learning_rate,
    trainable_table,
)
from paddlemix.peft.lora import (
    apply_lora,
    base_model,
    check_not_fully_trained,
    load_adapter,
    lora_modules,
    to_peft,
)
from paddlemix.peft.merge import ADAPTER_CONFIG, check_adapter_base
from paddlemix.peft.peft_format import write_adapter
from paddlemix.processors.template_files import (
    chosen_template,
    read_folder_template,
    trained_templates,
    write_chat_template,
)
from paddlemix.trainer.callbacks import (
    TRAIN_LOG,
    JsonlLogCallback,
    SkipBudgetCallback,
    ThroughputCallback,
    peak_memory_mb,
)
from paddlemix.trainer.recompute import apply_recompute, recompute_settings
from paddlemix.trainer.report import LOSS_CURVE, SUMMARY, plot_loss_curve, read_log, summarize
from paddlemix.utils import checkpoints
from paddlemix.utils.device import device_env
from paddlemix.utils.errors import UserError
from paddlemix.utils.io import copy_side_files, read_json, to_numpy, write_json
from paddlemix.utils.logging import quiet_console

logger = logging.getLogger(__name__)

RUN_ARGS = "run_args.json"
SKIPPED = "skipped_samples.jsonl"


def setup_runtime(args: RunArgs) -> None:
    """Logging, device and distributed environment for this process; every choice is logged."""
    import paddle
    from paddle.distributed import fleet

    quiet_console()
    for key, value in device_env(args.training.device).items():
        if key.startswith("FLAGS_"):
            paddle.set_flags({key: value})
    paddle.set_device(args.training.device)
    if is_pipeline_run(args):
        from paddlemix.distributed.cpu_collectives import install_pipeline

        install_pipeline(args.training.device, args.training.pipeline_model_parallel_size)
    # paddleformers' checkpoint loader needs an initialised fleet, also in a single process. Its init writes a
    # "Modified FLAGS detected" banner straight to stderr (flags paddleformers set, not the user); errors still raise.
    # For hybrid parallelism (TP/PP/sharding) paddleformers' arguments have already initialised it with their
    # strategy (pipeline micro-batches, degrees); a second init would replace that strategy with the default one.
    from paddle.distributed.fleet.base import topology

    if topology._HYBRID_PARALLEL_GROUP is None:
        with contextlib.redirect_stderr(io.StringIO()):
            fleet.init(is_collective=True)
    seed_everything(args.training.seed)
    logger.info(
        "device %s, world size %d, seed %d", args.training.device, args.training.world_size, args.training.seed
    )
    for note in args.notes:
        logger.info("%s", note)


def seed_everything(seed: int) -> None:
    """Seed paddle's generators (all devices), numpy's and Python's global ones. Called before the model is built,
    so new weights (LoRA, a fresh projector) and dropout draw from `seed` on every rank; data order and packing
    use their own generators derived from the same `seed`."""
    import random

    import numpy as np
    import paddle

    paddle.seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


# Keys that make two runs different runs; changing others (max_steps, save_steps, ...) continues the same run.
RUN_IDENTITY = (
    "model_name_or_path", "dataset", "train_type", "lora", "lora_rank", "lora_target_modules", "mixtoken", "max_length",
    "stage", "pref_loss",
)  # fmt: skip


FINAL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")


def check_output_dir(args: RunArgs) -> None:
    """Refuse to resume into a folder that holds another run, and to train again into a finished one (its final
    model is there and no checkpoint is left to continue from), unless `overwrite_output_dir` is set."""
    t = args.training
    out = Path(t.output_dir)
    if t.overwrite_output_dir:
        return
    saved = out / RUN_ARGS
    if saved.is_file():
        old, new = json.loads(saved.read_text(encoding="utf-8")), args.to_dict()
        changed = [k for k in RUN_IDENTITY if old.get(k) != new.get(k)]
        if changed:
            raise UserError(
                f'output_dir "{t.output_dir}" holds a different run ({", ".join(changed)} differ from its '
                'run_args.json). Choose another output_dir, or set "overwrite_output_dir": true to start over there.'
            )
    final = [name for name in FINAL_WEIGHTS if (out / name).is_file()]
    last = Path(t.resume_from_checkpoint) if t.resume_from_checkpoint else checkpoints.last_complete(out)
    if t.do_train and final and last is None:
        raise UserError(
            f'output_dir "{t.output_dir}" holds a finished run ({final[0]} is there and no checkpoint is left to '
            'resume from); training again would overwrite its model. Set "overwrite_output_dir": true to train '
            "it again from the start, or choose another output_dir."
        )
    if t.do_train and last is not None and covers_whole_run(last, t):
        raise UserError(
            f"{last} already ends the run these settings describe ({run_length(t)}), so there is nothing left to "
            "train (paddleformers would train one step past the end and overwrite the model). Raise "
            '"max_steps" or "num_train_epochs" to train further, set "overwrite_output_dir": true to train again '
            "from the start, or choose another output_dir."
        )


def run_length(t: Any) -> str:
    return f"max_steps {t.max_steps}" if t.max_steps > 0 else f"num_train_epochs {t.num_train_epochs:g}"


def covers_whole_run(checkpoint: Path, t: Any) -> bool:
    """Whether `checkpoint` already holds every step of the run `t` (training arguments) describes: its step
    reaches `max_steps`, or (epoch runs) the rows it consumed fill `num_train_epochs` epochs (the marker's `rows`
    and `epoch_rows`; a pack stream has no epoch rows and is judged by `max_steps` only)."""
    if t.max_steps > 0:
        return checkpoints.step_of(checkpoint) >= t.max_steps
    record = checkpoints.progress(checkpoint)
    epoch_rows, rows = int(record.get("epoch_rows") or 0), record.get("rows")
    return bool(epoch_rows and rows is not None and int(rows) >= epoch_rows * t.num_train_epochs)


def clear_run_outputs(out: Path) -> None:
    """For `overwrite_output_dir`: remove the checkpoints and logs of the earlier run, nothing else."""
    for path in checkpoints.checkpoints(out):
        shutil.rmtree(path, ignore_errors=True)
    for name in (TRAIN_LOG, SKIPPED, "all_results.json", SUMMARY, LOSS_CURVE, "reference_logps.json"):
        (out / name).unlink(missing_ok=True)


def load_dtype(training: Any) -> str:
    """PaddleMIX's rule: O2 loads the weights in the half type; O1 keeps float32 master weights."""
    if training.fp16_opt_level == "O2" and (training.bf16 or training.fp16):
        return "bfloat16" if training.bf16 else "float16"
    return "float32"


def note_adapter_overrides(lora: Any, source_file: str) -> None:
    """Log that the adapter's r / lora_alpha are used when the argument file's lora_rank / lora_alpha differ."""
    config = (
        read_json(Path(lora.lora_path) / ADAPTER_CONFIG) if (Path(lora.lora_path) / ADAPTER_CONFIG).is_file() else {}
    )
    pairs = (("lora_rank", "r", lora.lora_rank), ("lora_alpha", "lora_alpha", lora.lora_alpha))
    differ = [
        f"{ours} {mine} -> {config[theirs]}"
        for ours, theirs, mine in pairs
        if theirs in config and config[theirs] != mine
    ]
    if differ:
        logger.info("%s: the adapter of lora_path %s sets %s (its adapter_config.json wins)", source_file,
                    lora.lora_path, ", ".join(differ))  # fmt: skip


def build_model(args: RunArgs, adapter: ModelAdapter) -> Any:
    """Load the base model, wrap it with LoRA if asked, apply freezing, and log the trainable table.

    LoRA targets and the user's freeze patterns are resolved against the checkpoint's tensor names before the
    weights load, and the patterns again against the loaded parameters: a target or pattern that matches nothing is
    a UserError, never a silent no-op.
    """
    path = args.model.model_name_or_path
    patterns = {"freeze_include": args.model.freeze_include, "freeze_exclude": args.model.freeze_exclude}
    by_origin: dict[str, dict[str, list[str]]] = {}  # so a pattern's error names the file or the command line
    for key, globs in patterns.items():
        by_origin.setdefault(args.origin(key), {})[key] = globs
    for where, group in by_origin.items():
        for note in check_checkpoint_patterns(path, group, adapter.parameter_name, adapter.paddlemix_names, where):
            logger.info("%s", note)
    lora, m = args.lora, args.model
    switches = {"vision": m.freeze_vision, "projector": m.freeze_projector, "llm": m.freeze_llm}
    plan = freeze_plan(adapter.module_groups, m.train_type, switches, lora.lora, m.freeze_include, m.freeze_exclude)
    modules = None
    if lora.lora_path:
        check_adapter_base(lora.lora_path, path, logger.warning)
        note_adapter_overrides(lora, args.source_file)
    if lora.lora and not lora.lora_path:
        modules = lora_modules(path, adapter, lora.lora_target_modules, f"{args.origin('lora_target_modules')}: ")
        check_not_fully_trained(modules, plan.modules_to_save)
    tp = tensor_parallel.current()
    unsplittable = tensor_parallel.check_lora_targets(modules or [], adapter.lora_targets, tp.degree)
    if unsplittable:
        raise UserError(" ".join(unsplittable))
    if is_pipeline_run(args):
        model = adapter.load_pipeline_stage(path, dtype=load_dtype(args.training), device=args.training.device)
    else:
        model = adapter.load_model(
            path,
            dtype=load_dtype(args.training),
            device=args.training.device,
            allow_pickle=args.model.allow_pickle_weights,
            tensor_parallel=tp,
        )
    logger.info("train_type %s: frozen groups %s", m.train_type or "(not set)", plan.frozen_groups or "none")
    if lora.lora_path:
        model = load_adapter(model, lora.lora_path, modules_to_save=plan.modules_to_save)
    elif modules is not None:
        model = apply_lora(
            model, modules, lora.lora_rank, lora.lora_alpha, lora.lora_dropout, plan.modules_to_save,
            seed=args.training.seed, use_rslora=lora.rslora, base_model_name_or_path=str(Path(path).resolve()),
        )  # fmt: skip
        warn_for_vllm(lora.lora_rank, modules, plan.modules_to_save, adapter)
    base = model.one_process_view() if is_pipeline_run(args) else base_model(model)
    names = [n for n, _ in base.named_parameters()]
    for where, group in by_origin.items():
        if any(group.values()):
            check_patterns(group, names, adapter.paddlemix_names, where)
    if plan.include:
        frozen = apply_freeze(base, plan.include, plan.exclude, adapter.paddlemix_names)
        logger.info("froze %d parameter tensors matching %s", len(frozen), plan.include)
    if m.mm_projector_lr is not None:
        set_projector_learning_rate(base, adapter, m.mm_projector_lr, args.training.learning_rate)
    logger.info("trainable parameters:\n%s", trainable_table(base))
    if tp.enabled:
        logger.info("%s", tensor_parallel.rank_summary(base, adapter.tensor_parallel_parts, adapter.module_groups, tp))
    return model


def warn_for_vllm(rank: int, modules: list[str], modules_to_save: Sequence[str], adapter: ModelAdapter) -> None:
    """Say before training what vLLM would ignore or refuse in the adapter this run saves (inference/vllm_export.py)."""
    from paddlemix.inference.vllm_export import adapter_notes, family_vision_test

    for note in adapter_notes(rank, modules, modules_to_save, family_vision_test(adapter)):
        logger.warning("for vLLM: %s", note)


def is_pipeline_run(args: RunArgs) -> bool:
    return args.training.pipeline_model_parallel_size > 1


def set_projector_learning_rate(model: Any, adapter: ModelAdapter, rate: float, learning_rate: float) -> None:
    """PaddleMIX's `mm_projector_lr`: the projector trains at its own rate, on the same schedule."""
    count = scale_learning_rate(model, adapter.module_groups["projector"], rate / learning_rate)
    if count:
        logger.info("mm_projector_lr: %d projector tensors train at %g (learning_rate %g)", count, rate, learning_rate)
    else:
        logger.info(
            'ignored: mm_projector_lr: the projector is frozen in this run ("lora": true without "train_type" '
            'trains the adapters only); "train_type": "use_lora" trains it too, as PaddleMIX\'s LLaVA trainer does'
        )


def build_datasets(
    args: RunArgs, processor: Any, adapter: ModelAdapter, config: Any, skips: SkipLog, consumed: int = 0
) -> tuple[Any, Any]:
    """Encoded train and eval datasets (eval is None without `dataset.eval` or `do_eval`).

    With MIXToken the train set is a stream of packs; on resume it skips the `consumed` packs the checkpoint's
    run trained (re-planned from lengths, nothing decoded).
    """
    encoder = build_encoder(adapter, processor, args.data)
    positions = adapter.position_fn(config)
    kind: dict[str, Any] = {}
    if args.preference.stage == "dpo":  # pairs: one sequence each (see datasets.pair_packing)
        encoder = PairProcessor(encoder, positions)
        kind = {"source_type": PairSourceDataset}
    seed = args.training.seed
    train = build_dataset(args.data.train, encoder, processor, seed, skips, **kind) if args.data.train else None
    evaluate = args.data.eval and args.training.do_eval
    eval_set = build_dataset(args.data.eval, encoder, processor, seed, skips, "eval", **kind) if evaluate else None
    if train is not None and args.data.packing:
        t = args.training
        group = t.per_device_train_batch_size * t.dataset_world_size
        build = {"build": join_pairs} if kind else {}
        train = PackedDataset(train, args.data.max_length, positions, seed, args.data.pack_window, consumed, group,
                              **build)  # fmt: skip
    # per-source `seen` counts what the trainer trains or evaluates, not what the loader prefetches
    for split in (train, eval_set):
        if split is not None:
            getattr(split, "encoded", split).count_loaded = False
    return train, eval_set


def plan_packed_steps(training: Any, train_set: PackedDataset) -> int:
    """Optimizer steps for `num_train_epochs` of a pack stream, which the trainer cannot count itself: packs per
    epoch (planned from sample lengths, nothing decoded) over the packs one step consumes, rounded up."""
    per_step = (
        training.per_device_train_batch_size * training.gradient_accumulation_steps * training.dataset_world_size
    )
    packs = train_set.packs_per_epoch()
    epochs = training.num_train_epochs
    total = epochs * packs
    mix = train_set.encoded.mix
    if any(rate % 1 for rate in mix.rates):  # a fresh draw each epoch: its packs are counted epoch by epoch
        counts = [train_set.packs_per_epoch(e) for e in range(math.ceil(epochs))]
        total = sum(counts[: int(epochs)]) + (epochs % 1) * (counts[-1] if epochs % 1 else 0)
    steps = max(math.ceil(total / per_step), 1)
    logger.info(
        "MIXToken: %d packs per epoch, %d per optimizer step: num_train_epochs %g = max_steps %d",
        packs, per_step, training.num_train_epochs, steps,
    )  # fmt: skip
    epoch_strategies_to_steps(training, max(math.ceil(packs / per_step), 1))
    return steps


def epoch_strategies_to_steps(training: Any, steps_per_epoch: int) -> None:
    """A pack stream has no epochs the trainer can see (it would evaluate and save "epoch" once, at the end), so
    `"epoch"` evaluation and saving become `"steps"` every planned epoch's optimizer steps."""
    from paddleformers.trainer.trainer_utils import IntervalStrategy

    changed = []
    for strategy, steps in (("evaluation_strategy", "eval_steps"), ("save_strategy", "save_steps")):
        if getattr(training, strategy) == IntervalStrategy.EPOCH:
            setattr(training, strategy, IntervalStrategy.STEPS)
            setattr(training, steps, steps_per_epoch)
            changed.append(f'{strategy} "epoch" = "steps" with {steps} {steps_per_epoch}')
    if changed:
        logger.info("MIXToken: %s (one planned epoch)", ", ".join(changed))


class LastEvalCallback(TrainerCallback):
    """The metrics of the latest evaluation and its step: when the schedule evaluated at the last step, the run's
    final evaluation reuses them rather than evaluating the same weights twice."""

    def __init__(self) -> None:
        self.step, self.metrics = -1, {}

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        # from the logs, not on_evaluate: the generated-answer scores are logged after the loss evaluation
        found = {k: v for k, v in (logs or {}).items() if k.startswith("eval_")}
        if found:
            if state.global_step != self.step:
                self.step, self.metrics = state.global_step, {}
            self.metrics.update(found)

    def at(self, step: int) -> dict[str, Any]:
        return self.metrics if self.step == step else {}


def preflight(train_set: Any, skips: SkipLog, eval_set: Any = None) -> None:
    """Draw the first training sample (or pack plan) and find a usable eval record in the main process, so data
    with no usable sample stops here with a UserError rather than later inside the data loader."""
    try:
        if isinstance(train_set, PackedDataset):
            next(train_set.plans())
        elif train_set is not None:
            train_set[0]
        if eval_set is not None:
            eval_set.first_usable()
    except UserError:
        skips.raise_if_exceeded()  # the more specific message (mis-formatted source, spent budget) first
        raise
    skips.raise_if_exceeded()


class FinalSaveCallback(TrainerCallback):
    """Save the final model right after the last optimizer step, before the evaluation the trainer may run at that
    step: once training has finished its result is on disk, whatever a later evaluation does."""

    def __init__(self, save: Any):
        self.save = save
        self.saved = False

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.max_steps > 0 and state.global_step >= state.max_steps and not self.saved:
            self.save()
            self.saved = True


def settle_templates(args: RunArgs, processor: Any, adapter: ModelAdapter) -> list[int]:
    """Check every training source's chat template before the model loads and return the ids that end their
    answers (the stop ids written into the output's generation_config.json). A template whose answers end with no
    token is a UserError here; one that encodes training and inference prompts differently is a warning."""
    from paddlemix.datasets.encoded import source_names
    from paddlemix.processors.chat_template import template_for
    from paddlemix.processors.template_check import template_report

    encoder = build_encoder(adapter, processor, args.data)
    stops: list[int] = []
    for name, source in zip(source_names(args.data.train), args.data.train):
        template = template_for(processor, source.chat_template, source.keep_empty_think)
        if template.stop_token_id is not None and template.stop_token_id not in stops:
            stops.append(template.stop_token_id)
        problem = template_report(encoder, template, f'dataset.train source "{name}" ({args.source_file})')
        if problem and args.training.process_index == 0:
            logger.warning(problem)
    return stops


def write_stop_ids(folder: Path, stop_ids: list[int], config: Any, tokenizer: Any) -> None:
    """Add the trained answers' end ids to `folder`'s generation_config.json, saying so in one line."""
    changed = add_stop_ids(folder / "generation_config.json", stop_ids, config)
    if changed:
        names = ", ".join(tokenizer.convert_ids_to_tokens(int(i)) for i in stop_ids)
        logger.info(
            "generation_config.json: eos_token_id %s -> %s (%s ends every trained answer, so generation stops there)",
            changed[0], changed[1], names,
        )  # fmt: skip


def save_final(
    model: Any, args: RunArgs, adapter: ModelAdapter, processor_dir: str, stop_ids: list[int] | None = None,
    tokenizer: Any = None,
) -> None:  # fmt: skip
    """Write the output folder's model (HF layout) or adapter, plus the processor files, atomically per file set;
    a full model's generation_config.json lists `stop_ids` among its eos ids.

    Under tensor parallelism every rank calls it: the split tensors are gathered (a collective) into the same
    single-file layout one process writes, and process 0 writes it. Under pipeline parallelism every stage hands
    its part over the same way, and under sharding stage 3 every rank lends its slices of the split weights."""
    tp = tensor_parallel.current()
    if args.lora.lora:
        with stage3.whole_parameters(model, trainable_only=True):
            weights = to_peft(model)
    elif is_pipeline_run(args):
        from paddlemix.distributed.pipeline import gather_one_process_state

        weights = adapter.export_state_dict(gather_one_process_state(model, to_numpy), model.config)
    else:
        with stage3.whole_parameters(model):
            state = tensor_parallel.gather_state(model, adapter.tensor_parallel_parts, tp)
        weights = adapter.export_state_dict(state, model.config)
    if args.training.process_index != 0:
        return
    out = Path(args.training.output_dir)
    templates = trained_templates(args.data.train, processor_dir, adapter.vision_placeholder)
    with tempfile.TemporaryDirectory(dir=out, prefix=".final-") as staging:
        tmp = Path(staging)
        copy_side_files(processor_dir, tmp)
        write_for_both(tmp)  # files of a model saved by transformers 5.x, as 4.x reads them too
        # the sources' template, else the one the processor chose for a folder without one (PaddleOCR-VL's version)
        trained = chosen_template(templates) or getattr(tokenizer, "chat_template", None)
        if trained and trained != read_folder_template(processor_dir):  # where transformers reads the template
            write_chat_template(tmp, trained)
        if args.lora.lora:
            (tmp / "config.json").unlink(missing_ok=True)
            (tmp / "generation_config.json").unlink(missing_ok=True)
            write_adapter(
                replace(weights, base_model_name_or_path=str(Path(args.model.model_name_or_path).resolve())), tmp
            )
        else:
            save_full_model(weights, args.model.model_name_or_path, adapter, base_model(model).config, tmp)
            if stop_ids:
                write_stop_ids(tmp, stop_ids, base_model(model).config, tokenizer)
        # stop_token_ids: what ends the trained answers, for the merged model's generation_config.json
        write_json({**args.to_dict(), "chat_templates": templates, "stop_token_ids": stop_ids or []}, tmp / RUN_ARGS)
        for file in tmp.iterdir():
            file.replace(out / file.name)
    logger.info("saved %s to %s", "LoRA adapter" if args.lora.lora else "model", out)


def save_full_model(weights: dict[str, Any], base_dir: str, adapter: ModelAdapter, config: Any, out: Path) -> None:
    """`out/model.safetensors`: the exported tensors plus every tensor of the base checkpoint the model does not
    hold (e.g. PaddleOCR-VL's SigLIP pooling head), carried unchanged (`paddlemix.models.carried`)."""
    text = getattr(config, "text_config", None)
    tied = bool(getattr(config, "tie_word_embeddings", False) or getattr(text, "tie_word_embeddings", False))
    carried = carried_tensors(base_dir, set(weights), adapter.parameter_name, tied)
    save_with_carried(weights, carried, out / "model.safetensors")
    log_carried(carried, base_dir)


def trained_counts(trainer: Any, steps: int, runtime: float) -> dict[str, float]:
    """What this process's run trained (all ranks): steps, samples and rows, with samples and rows per second.
    paddleformers counts batch rows x steps as samples, which undercounts packed rows and counts resumed steps."""
    seconds = max(runtime, 1e-9)
    return {
        "train_steps": steps,
        "train_samples": trainer.samples,
        "train_rows": trainer.rows,
        "train_samples_per_second": round(trainer.samples / seconds, 4),
        "train_rows_per_second": round(trainer.rows / seconds, 4),
    }


def benchmark_report(metrics: dict[str, Any], trainer: Any, seconds: float) -> dict[str, float]:
    """Effective samples/s, tokens/s (text and image), peak memory and row fill (real tokens / slots) of the run."""
    tokens = trainer.text_tokens + trainer.image_tokens
    fill = tokens / max(trainer.slots, 1)
    peak_mb = peak_memory_mb()
    return {
        "train_samples_per_second": metrics.get("train_samples_per_second", 0.0),
        "tokens_per_second": tokens / max(seconds, 1e-9),
        "text_tokens_per_second": trainer.text_tokens / max(seconds, 1e-9),
        "image_tokens_per_second": trainer.image_tokens / max(seconds, 1e-9),
        "peak_memory_mb": peak_mb,
        "fill": fill,
    }


def generation_scorer(args: RunArgs, model: Any, processor: Any, adapter: ModelAdapter) -> Any:
    """A callable that answers up to `eval_generation_samples` records of each eval source with the live model,
    `per_device_eval_batch_size` at a time, and returns `eval_<source>_<accuracy|bleu4>` scores plus
    `eval_<source>_skipped` (records that failed; `eval_accuracy` / `eval_skipped` with one source). None when
    `eval_generation` is off."""
    if not (args.runtime.eval_generation and args.data.eval):
        return None
    from paddlemix.datasets.encoded import source_names, video_defaults
    from paddlemix.inference.generation import Generator, evaluate_generation
    from paddlemix.processors.images import ImageReader

    reader = ImageReader(
        args.data.max_image_pixels, args.data.image_cache_dir, image_resolution=args.data.image_resolution
    )

    def score() -> dict[str, float]:
        was_training = model.training
        model.eval()
        out = {}
        single = len(args.data.eval) == 1
        for name, source in zip(source_names(args.data.eval), args.data.eval):
            generator = Generator.from_parts(model, processor, adapter, source.chat_template,
                                             args.model.model_name_or_path, args.data.max_length,
                                             source.keep_empty_think)  # fmt: skip
            generator.encoder.reader = reader  # images read as in training (image_resolution, pixel limit, cache)
            generator.encoder.split_special_tokens = args.data.split_special_tokens  # record text as in training
            generator.encoder.video_options = video_defaults(args.data)  # videos sampled as in training
            generator.encoder.max_video_seconds = args.data.max_video_seconds
            result = evaluate_generation(generator, source, args.runtime.eval_generation_samples,
                                         batch_size=args.training.per_device_eval_batch_size)  # fmt: skip
            prefix = "eval" if single else f"eval_{Path(name.split(':')[-1]).stem}"
            out[f"{prefix}_{result['metric']}"] = round(result["score"], 4)
            for key in ("edit_distance", "cer"):  # transcription scores, beside exact match (OCR models)
                if key in result:
                    out[f"{prefix}_{key}"] = round(result[key], 4)
            out[f"{prefix}_skipped"] = result["skipped"]
        if was_training:
            model.train()
        return out

    return score


def preference_stage(args: RunArgs, adapter: ModelAdapter, model: Any, datasets: list[Any], collate: Any) -> Any:
    """The loss of `"stage": "dpo"` with its reference model (None for SFT); the reference choice is logged with
    its memory cost. `datasets` (encoded pair datasets) and `collate` serve `precompute_ref_log_probs`."""
    pref = args.preference
    if pref.stage != "dpo":
        return None
    from paddlemix.trainer.dpo_loss import PreferenceLoss
    from paddlemix.trainer.preference import (
        REFERENCE_LOGPS,
        PreferenceStage,
        copy_reference,
        lora_reference,
        precompute_reference,
        table_reference,
    )

    loss = PreferenceLoss(pref.pref_loss, pref.pref_beta, pref.simpo_gamma, pref.label_smoothing, pref.pref_ftx)
    reference = None
    if not loss.needs_reference:
        logger.info("preference loss %s: no reference model", pref.pref_loss)
    elif args.lora.lora:
        reference = lora_reference
        logger.info("preference loss %s: the reference is the base model with the adapters off (no extra memory)",
                    pref.pref_loss)  # fmt: skip
    else:
        path = pref.ref_model_name_or_path or args.model.model_name_or_path

        def load_reference() -> tuple[Any, float]:
            """The frozen copy and its size in MB on this rank (split like the policy under tensor parallel)."""
            copy = adapter.load_model(path, dtype=load_dtype(args.training), device=args.training.device,
                                      allow_pickle=args.model.allow_pickle_weights,
                                      tensor_parallel=tensor_parallel.current())  # fmt: skip
            return copy, sum(int(p.numel()) * p.element_size() for p in copy.parameters()) / 2**20

        if pref.precompute_ref_log_probs:
            file = Path(args.training.output_dir) / REFERENCE_LOGPS
            table = precompute_reference(load_reference, datasets, collate, args.training.per_device_eval_batch_size,
                                         file, args.training.process_index == 0)  # fmt: skip
            logger.info("preference loss %s: reference log-probs of %s precomputed once (no reference model in "
                        "memory while training)", pref.pref_loss, path)  # fmt: skip
            reference = table_reference(table, file)
        else:
            ref_model, size = load_reference()
            logger.info("preference loss %s: the reference is a frozen copy of %s (%.1f MB more memory)",
                        pref.pref_loss, path, size)  # fmt: skip
            reference = copy_reference(ref_model)
    logger.info("preference training: pref_loss %s, pref_beta %g%s", pref.pref_loss, pref.pref_beta,
                f", pref_ftx {pref.pref_ftx}" if pref.pref_ftx else "")  # fmt: skip
    return PreferenceStage(loss, reference)


def loss_chunk_size(args: RunArgs, config: Any) -> int:
    """The trainer's chunk size of the loss, 0 for full logits: below CHUNKED_LOSS_MIN_VOCAB words the chunked loss
    only costs time (see `paddlemix.trainer.chunked_loss`). Several processes: DataParallel's gradient reducer
    expects each parameter once per step, which the recomputed head chunks break, so data-parallel runs keep the
    full logits too."""
    from paddlemix.trainer.chunked_loss import CHUNKED_LOSS_MIN_VOCAB, uses_chunked_loss, vocab_size

    chunk, vocab = args.runtime.loss_chunk_size, vocab_size(config)
    if args.training.world_size > 1 or not uses_chunked_loss(vocab, chunk):
        if chunk and args.training.world_size == 1:
            logger.info("loss: full logits (a %d-word vocabulary is below %d, where chunking the loss only costs "
                        "time)", vocab, CHUNKED_LOSS_MIN_VOCAB)  # fmt: skip
        return 0
    return chunk


def run_sft(args: RunArgs) -> dict[str, Any]:
    """Train per `args` and return the final metrics; resumes from the last complete checkpoint when present."""
    from paddlemix.trainer.trainer import MIXTrainer

    check_output_dir(args)
    setup_runtime(args)
    training = args.training
    out = Path(training.output_dir)
    resume = None if training.overwrite_output_dir else checkpoints.last_complete(out)
    resume = training.resume_from_checkpoint or resume
    if resume:
        logger.info("resuming from %s", resume)
    if training.process_index == 0:
        if training.overwrite_output_dir:
            clear_run_outputs(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(args.to_dict(), out / RUN_ARGS)

    recompute = recompute_settings(args.runtime.recompute, training, args.source_file)
    adapter = adapter_for(args.model.model_name_or_path)
    processor = adapter.load_processor(args.model.model_name_or_path)
    stop_ids = settle_templates(args, processor, adapter)
    model = build_model(args, adapter)
    if recompute:
        logger.info("recompute %s on %d model configs", recompute, apply_recompute(model, recompute))
    config = base_model(model).config
    consumed = 0  # rows (samples, or packs with MIXToken) the checkpoint's run trained
    if resume:
        t = training
        group = t.per_device_train_batch_size * t.gradient_accumulation_steps * t.dataset_world_size
        consumed = checkpoints.progress(resume).get("rows", checkpoints.step_of(Path(resume)) * group)
    skip_file = out / SKIPPED if training.process_index == 0 else None
    # the counts and skips of all ranks are merged at each step end and before the summary (process 0 writes)
    skips = SkipLog(skip_file, args.data.max_skip_ratio, lambda news: gather_objects(news, training.world_size),
                    training.process_index, training.dataset_rank)  # fmt: skip
    train_set, eval_set = build_datasets(args, processor, adapter, config, skips, consumed)
    if isinstance(train_set, PackedDataset) and training.max_steps <= 0 and training.do_train:
        training.max_steps = plan_packed_steps(training, train_set)
    if training.do_train or eval_set is not None:
        preflight(train_set if training.do_train else None, skips, eval_set)
    vision_tokens = (adapter.image_token, *((adapter.video_tokens.token,) if adapter.video_tokens else ()))
    image_token_id = tuple(processor.tokenizer.convert_tokens_to_ids(t) for t in vision_tokens)  # image + video
    templates = trained_templates(args.data.train, args.model.model_name_or_path, adapter.vision_placeholder)
    collator = Collator(processor.tokenizer.pad_token_id)
    trainer = MIXTrainer(
        model=model,
        args=training,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=GuardedCollator(collator),
        image_token_id=image_token_id,
        # One process: the LM head runs on the labelled positions only (see `loss_chunk_size`).
        head_owner=base_model(model) if training.world_size == 1 else None,
        loss_chunk_size=loss_chunk_size(args, config),
        generation_eval=generation_scorer(args, model, processor, adapter),
        chat_template=chosen_template(templates, warn=training.process_index == 0),
        skip_log=skips,
        stage=preference_stage(
            args, adapter, model, [getattr(d, "encoded", d) for d in (train_set, eval_set) if d is not None], collator
        ),  # fmt: skip
        callbacks=[JsonlLogCallback(), SkipBudgetCallback(skips)],
    )
    # First in line, so the printer, the progress bar and the JSONL log all see the throughput fields.
    trainer.callback_handler.callbacks.insert(0, ThroughputCallback(trainer, skips))
    final = FinalSaveCallback(
        lambda: save_final(model, args, adapter, args.model.model_name_or_path, stop_ids, processor.tokenizer)
    )
    # pipeline stages, tensor-parallel ranks and stage-3 sharding ranks all take part in gathering the saved model
    saves = (training.process_index == 0 or is_pipeline_run(args) or tensor_parallel.current().enabled
             or stage3.splits_parameters(training))  # fmt: skip
    if saves and not training.load_best_model_at_end:  # else saved once the best is back
        trainer.add_callback(final)
    last_eval = LastEvalCallback()
    trainer.add_callback(last_eval)
    metrics: dict[str, Any] = {}
    best = None
    try:
        if training.do_train:
            start = time.perf_counter()
            result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
            metrics.update(result.metrics)
            metrics.update(trained_counts(trainer, result.global_step, metrics.get("train_runtime", 0.0)))
            if args.runtime.benchmark:
                metrics.update(benchmark_report(metrics, trainer, time.perf_counter() - start))
            best = trainer.load_best_checkpoint()
            if best:
                name = training.metric_for_best_model
                name = name if name.startswith("eval_") else f"eval_{name}"  # as paddleformers compares it
                metrics["best_checkpoint"] = Path(best).name
                metrics[f"best_{name}"] = trainer.state.best_metric
                logger.info(
                    "load_best_model_at_end: the final %s is %s (step %d, %s %.6g)",
                    "adapter" if args.lora.lora else "model", Path(best).name, checkpoints.step_of(Path(best)),
                    name, trainer.state.best_metric,
                )  # fmt: skip
            if saves and not final.saved:
                final.save()
                final.saved = True
        if eval_set is not None:
            reuse = {} if best else last_eval.at(trainer.state.global_step)  # the best weights are evaluated afresh
            metrics.update(reuse or trainer.evaluate())
    except SystemError as err:
        raise worker_failure(err) or err from None
    metrics["skipped_by_source"] = skips.summary()  # every rank (a collective), loader workers included
    metrics["skipped_samples"] = sum(s["skipped"] for s in metrics["skipped_by_source"].values())
    if training.process_index == 0:
        write_json(metrics, out / "all_results.json")
        records = read_log(out / TRAIN_LOG)
        write_json(summarize(records, metrics), out / SUMMARY)
        if records:
            plot_loss_curve(records, out / LOSS_CURVE)
        logger.info("metrics: %s", json.dumps(metrics, default=str))
    return metrics
