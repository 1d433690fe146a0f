"""One thin subclass of paddleformers' Trainer; every override is short and says why it exists."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paddle
import paddleformers.trainer.trainer as _pf_trainer
from paddleformers.trainer import Trainer, TrainerCallback
from paddleformers.utils.batch_sampler import MappingDistributedBatchSampler

from paddlemix.datasets.collator import BATCH_META, LABEL_TOKENS, REAL_TOKENS, SAMPLE_IDS, SKIPS
from paddlemix.datasets.pair_packing import PAIR_IDS
from paddlemix.distributed import grad_norm, stage3, tensor_parallel
from paddlemix.distributed.gather import gather_objects
from paddlemix.distributed.memory import optimizer_state_bytes, parameter_bytes
from paddlemix.peft.lora import to_peft
from paddlemix.peft.peft_format import write_adapter
from paddlemix.processors.sample_processor import IGNORE_INDEX
from paddlemix.processors.template_files import write_chat_template
from paddlemix.trainer.accumulation import StepLoss, scale_gradients, sum_over_ranks
from paddlemix.trainer.chunked_loss import lm_loss_without_full_logits, token_loss_sum, training_forward
from paddlemix.utils import checkpoints
from paddlemix.utils.errors import UserError

logger = logging.getLogger(__name__)


class NonFiniteLossError(UserError):
    """The loss became NaN or infinite; the last good state was saved before stopping."""


# paddleformers 1.2 names `GPTModel` in its evaluation loop but imports it only when paddlefleet is installed;
# a placeholder class keeps evaluation working without paddlefleet (nothing is an instance of it).
if not hasattr(_pf_trainer, "GPTModel"):
    _pf_trainer.GPTModel = type("GPTModel", (), {})


class _AttributeSink:
    """An object that only holds the attributes set on it (see MIXTrainer._wrap_distributed_optimizer)."""

    def __init__(self, **attributes: Any):
        self.__dict__.update(attributes)


@contextmanager
def trainable_state_only(model: Any) -> Iterator[None]:
    """Within the block, `model.sharded_state_dict()` (what flex checkpoints save and load) holds only trainable
    tensors, for a model with LoRA adapters; other models are left as they are."""
    if not hasattr(model, "lora_spec"):
        yield
        return
    full = model.sharded_state_dict
    trainable = {name for name, param in model.named_parameters() if not param.stop_gradient}
    model.sharded_state_dict = lambda *a, **k: {n: w for n, w in full(*a, **k).items() if n in trainable}
    try:
        yield
    finally:
        del model.sharded_state_dict


# paddleformers 1.2 calls `paddle.device.synchronize()` before scaling accumulated gradients whenever
# gradient_accumulation_steps > 1, and on a CPU-only build that call raises "device should be gpu, xpu". A CPU has
# no queued device work to wait for, so there the call returns at once; every other device keeps the real one.
_device_synchronize = paddle.device.synchronize


def _synchronize_unless_cpu(device: Any = None) -> None:
    if str(device or paddle.device.get_device()).startswith("cpu"):
        return
    _device_synchronize(device)


paddle.device.synchronize = _synchronize_unless_cpu


def source_of(sample_id: str) -> str:
    """The source name of a "source#index" sample id."""
    return sample_id.rsplit("#", 1)[0]


class RestoreRngOnResume(TrainerCallback):
    """Restore the random generators saved with the checkpoint a run resumes from, before its first step.

    paddleformers restores them only after replaying the skipped batches, which it does not do when
    `ignore_data_skip` is set (MIXToken: the pack stream fast-forwards itself), so a resumed run drew other
    dropout masks than the uninterrupted one."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        checkpoint = getattr(self.trainer, "resume_checkpoint", None)
        if checkpoint and args.ignore_data_skip:
            self.trainer._load_rng_state(checkpoint)
        step = getattr(self.trainer, "rescaled_step", None)
        scheduler = getattr(self.trainer, "lr_scheduler", None)
        if step is not None and scheduler is not None:  # the schedule continues at the step in the new units
            scheduler.last_epoch = step - 1
            scheduler.step()


@contextmanager
def resumed_at_step(step: int | None) -> Iterator[None]:
    """Within the block, the trainer state read from a checkpoint says `step` (when not None): after a change of
    the global batch, the step that many samples make in the new batch size (see `MIXTrainer.resumed_step`)."""
    if step is None:
        yield
        return
    state_cls = _pf_trainer.TrainerState
    originals = {name: state_cls.__dict__[name] for name in ("load", "load_from_json") if name in state_cls.__dict__}

    def at_step(original: Any) -> Any:
        def load(cls: type, path: str) -> Any:
            state = original.__func__(cls, path)
            state.global_step = step
            return state

        return classmethod(load)

    for name, original in originals.items():
        setattr(state_cls, name, at_step(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(state_cls, name, original)


class EpochIndexed:
    """Batch-sampler mixin that adds `epoch * epoch_size` to every index, so the dataset reads the epoch from the
    index (see `paddlemix.datasets.mixing`): data-loader workers keep their dataset copy across epochs and would
    never see an epoch set on the main process's copy."""

    epoch_size = 0

    def __iter__(self) -> Iterator[list[int]]:
        offset = getattr(self, "epoch", 0) * self.epoch_size
        for batch in super().__iter__():
            yield [offset + int(i) for i in batch]


_EPOCH_SAMPLERS: dict[type, type] = {}


def epoch_indexed(sampler: Any, epoch_size: int) -> Any:
    """A copy of `sampler` as its `EpochIndexed` subclass (same state and base class, so paddleformers' resume and
    per-epoch reseeding still apply to it)."""
    cls = type(sampler)
    if cls not in _EPOCH_SAMPLERS:
        _EPOCH_SAMPLERS[cls] = type(f"EpochIndexed{cls.__name__}", (EpochIndexed, cls), {})
    indexed = object.__new__(_EPOCH_SAMPLERS[cls])
    indexed.__dict__.update(vars(sampler))
    indexed.epoch_size = epoch_size
    return indexed


def even_eval_sampler(dataset: Any, batch_size: int, ranks: int, rank: int) -> Any:
    """A batch sampler giving `rank` its share of every sample of `dataset`, in batches of `batch_size`: the set
    is padded to a multiple of `ranks` with its first samples again (each rank runs the same number of eval steps,
    which paddleformers' loop gathers step by step), never cut. Repeated samples keep their sample id, and the eval
    loss counts each id once (`MIXTrainer.eval_token_mean`)."""
    return paddle.io.DistributedBatchSampler(dataset, batch_size, num_replicas=ranks, rank=rank, shuffle=False,
                                             drop_last=False)  # fmt: skip


class LogLastStep(TrainerCallback):
    """Log the last optimizer step even when it is not a multiple of `logging_steps`: otherwise a run shorter than
    `logging_steps` logs no step loss at all, and a longer one loses the loss of its last steps."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.max_steps > 0 and state.global_step >= state.max_steps:
            control.should_log = True


class MIXTrainer(Trainer):
    """Trainer whose optimizer step is the token mean over all its micro-batches and ranks (see `accumulation`),
    and that counts what it trains: text and image tokens, row slots (fill), samples, rows and per-source `seen`."""

    def __init__(
        self, *args: Any, image_token_id: int | tuple[int, ...] | None = None, head_owner: Any = None,
        loss_chunk_size: int = 0,
        generation_eval: Callable[[], dict[str, float]] | None = None, chat_template: str | None = None,
        skip_log: Any = None, stage: Any = None, **kwargs: Any,
    ):  # fmt: skip
        super().__init__(*args, **kwargs)
        self.stage = stage  # `"stage": "dpo"`: a `PreferenceStage` supplies the loss of pair batches
        self.chat_template = chat_template
        self.skip_log = skip_log
        self.step = StepLoss(self.args.world_size, self.args.dataset_world_size)
        self.samples = 0  # trained samples (all ranks), for samples/s
        self.rows = 0  # trained rows (all ranks); a MIXToken row holds several samples
        self.rows_before = 0  # rows the checkpoint this run resumed from had consumed
        self.rescaled_step: int | None = None
        self.loss_divisor = 1.0
        self.last_loss_sum = float("nan")
        self.generation_eval = generation_eval
        self.image_token_id = image_token_id
        self.head_owner = head_owner
        self.loss_chunk_size = loss_chunk_size
        self.text_tokens = 0
        self.image_tokens = 0
        self.slots = 0
        self.grad_norm: float | None = None
        self.grad_norm_note = False  # the reason grad_norm is not logged, said once
        self.checkpoint_adapter: Any = None
        self.memory_logged = False
        self.eval_sums: dict[str, tuple[float, int]] = {}  # sample id -> (loss sum, labelled tokens)
        self.keep_best = bool(self.args.load_best_model_at_end)  # see `train` and `load_best_checkpoint`
        self.callback_handler.add_callback(RestoreRngOnResume(self))
        self.callback_handler.add_callback(LogLastStep())

    def training_step(self, model: Any, inputs: dict[str, Any], step_control: int = 0) -> Any:
        """Backpropagate this micro-batch's loss sum / n0 and return its share of the logged step loss: 0 until the
        step's last micro-batch, which returns the step's token-mean loss over all ranks."""
        real, labelled = int(inputs.pop(REAL_TOKENS)), int(inputs.pop(LABEL_TOKENS))
        sample_ids, skips = inputs.pop(SAMPLE_IDS, []), inputs.pop(SKIPS, [])
        vision_ids = self.image_token_id if isinstance(self.image_token_id, tuple) else (self.image_token_id,)
        images = sum(int((inputs["input_ids"] == i).sum()) for i in vision_ids if i is not None)  # video tokens too
        self.text_tokens += real - images
        self.image_tokens += images
        self.slots += int(inputs["input_ids"].numel())
        self.count_trained(sample_ids, skips)
        self.loss_divisor = self.step.begin_micro_batch(labelled, len(sample_ids), int(inputs["input_ids"].shape[0]))
        self.last_loss_sum = float("nan")
        pipeline_loss = self.pipeline_loss(model)
        if pipeline_loss is not None:
            pipeline_loss.divisor = self.loss_divisor
        backpropagated = float(super().training_step(model, inputs))
        if pipeline_loss is not None:
            self.last_loss_sum = self.pipeline_loss_sum(pipeline_loss)
        if not (math.isfinite(backpropagated) and math.isfinite(self.last_loss_sum)):
            self.stop_on_non_finite(model, backpropagated, sample_ids)
        self.step.add_loss_sum(self.last_loss_sum)
        if (step_control + 1) % self.args.gradient_accumulation_steps:
            return paddle.zeros([], dtype="float32")
        loss = self.step.finish()
        if self.stage is not None:  # the step's preference metrics summed over the data-parallel ranks
            self.stage.finish_step(lambda v: sum_over_ranks(v, self.args.world_size, self.args.dataset_world_size))
        return paddle.to_tensor(loss, dtype="float32")

    def pipeline_loss(self, model: Any) -> Any:
        """The last stage's `TokenLoss` of a pipeline-parallel model (on every stage), else None."""
        if self.args.pipeline_model_parallel_size <= 1:
            return None
        layers = getattr(model, "_layers", model)
        return getattr(layers, "token_loss", None)

    def pipeline_loss_sum(self, pipeline_loss: Any) -> float:
        """This rank's share of the step's loss sum under pipeline parallelism: the pipeline runs all micro-batches
        of a step at its last one, and only the last stage computes losses. `StepLoss` sums over all ranks and
        divides by the ranks that hold the same batch, so the last stage counts its sums once per stage."""
        sums = pipeline_loss.take_sums()
        if not sums:  # a buffered micro-batch, or a stage without the loss
            return 0.0
        return sum(sums) * self.args.pipeline_model_parallel_size

    def train(self, resume_from_checkpoint: str | None = None, **kwargs: Any) -> Any:
        self.resume_checkpoint = resume_from_checkpoint
        self.rows_before, self.rescaled_step = 0, None
        if resume_from_checkpoint:
            self.rows_before, self.rescaled_step = self.resumed_step(Path(resume_from_checkpoint))
        # paddleformers' own best-model loading at the end of its loop looks for `model_state.pdparams`, which
        # flex checkpoints do not write, and only warns; `load_best_checkpoint` loads the flex checkpoint instead.
        self.args.load_best_model_at_end = False
        try:
            with resumed_at_step(self.rescaled_step):
                return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        finally:
            self.args.load_best_model_at_end = self.keep_best

    def global_batch(self) -> int:
        a = self.args
        return a.per_device_train_batch_size * a.gradient_accumulation_steps * a.dataset_world_size

    def epoch_rows(self) -> int | None:
        """Rows one epoch feeds the trainer (the distributed sampler drops the remainder over the ranks); None for
        a pack stream, which has no epochs the trainer sees."""
        if self.train_dataset is None or isinstance(self.train_dataset, paddle.io.IterableDataset):
            return None
        n, ranks = len(self.train_dataset), max(self.args.dataset_world_size, 1)
        return n // ranks * ranks if self.args.world_size > 1 else n

    def resumed_step(self, checkpoint: Path) -> tuple[int, int | None]:
        """(rows the checkpoint's run consumed, the step to resume at, None when it is the checkpoint's own).

        paddleformers continues at `global_step x global batch` samples, which is wrong once the global batch
        changed. The checkpoint records the rows (samples, or packs with MIXToken) it consumed; the run resumes
        at the step that ends exactly there, or stops with a UserError when no step of the new batch does."""
        record, step = checkpoints.progress(checkpoint), checkpoints.step_of(checkpoint)
        batch = self.global_batch()
        old_batch = int(record.get("global_batch", batch))
        rows = int(record.get("rows", step * old_batch))
        if old_batch == batch:
            return rows, None
        epoch_rows = self.epoch_rows()
        done_epochs, offset = divmod(rows, epoch_rows) if epoch_rows else (0, rows)
        a = self.args
        settings = (f"per_device_train_batch_size {a.per_device_train_batch_size} x gradient_accumulation_steps "
                    f"{a.gradient_accumulation_steps} x {a.dataset_world_size} data-parallel processes")  # fmt: skip
        problem = ""
        if epoch_rows and (record.get("epoch_rows") or epoch_rows) != epoch_rows:
            problem = f"an epoch now holds {epoch_rows} rows instead of {record['epoch_rows']}"
        elif offset % batch:
            where = f"{offset} rows into epoch {done_epochs}" if epoch_rows else f"{offset} rows (MIXToken packs)"
            problem = f"it stopped {where}, which is not a whole number of steps of {batch}"
        if problem:
            raise UserError(
                f"{checkpoint} was trained with a global batch of {old_batch} and cannot be resumed exactly with "
                f"{batch} ({settings}): {problem}. Resume with a global batch that divides it (e.g. the old "
                f'{old_batch}), or set "overwrite_output_dir": true to start over.'
            )
        steps_per_epoch = max(len(self._get_train_sampler()) // a.gradient_accumulation_steps, 1) if epoch_rows else 0
        new_step = done_epochs * steps_per_epoch + offset // batch
        logger.info(
            "resuming %s (%d rows at global batch %d) at step %d of global batch %d", checkpoint.name, rows,
            old_batch, new_step, batch,
        )  # fmt: skip
        return rows, new_step

    def count_trained(self, sample_ids: list[str], skips: list[str]) -> None:
        """Per-source `seen`: the samples of a batch when it is trained, and the skips met while reading it."""
        if self.skip_log is None:
            return
        for sample_id in sample_ids:  # first, so a batch that carries many skips is not taken for a bad source
            self.skip_log.ok(source_of(sample_id))
        for line in skips:
            self.skip_log.add_line(line)

    def optimizer_step(self, args: Any, model: Any, parameters_list: Any = None) -> None:
        """Rescale the accumulated gradients to the step's token mean (`StepLoss.gradient_factor`), note the
        gradient norm of the update for the log, then let paddleformers apply it."""
        if self.step.micro_batches:
            accumulation = max(args.gradient_accumulation_steps, 1)
            factor = self.step.gradient_factor(accumulation)
            if factor != 1.0 or accumulation > 1:  # > 1: stage 3's slices still lack paddleformers' 1 / M
                parameters = model._layers.parameters() if hasattr(model, "_layers") else model.parameters()
                scale_gradients(parameters, factor, accumulation)
            self.samples += int(self.step.total[2])
            self.rows += int(self.step.total[3])
        step = self.state.global_step + 1
        if args.logging_steps > 0 and (step % args.logging_steps == 0 or step >= self.state.max_steps > 0):
            self.grad_norm = self.gradient_norm(model)
        self.step.reset()
        super().optimizer_step(args, model=model, parameters_list=parameters_list)
        if not self.memory_logged:  # after the first update, when the optimizer state exists
            self.memory_logged = True
            logger.info(
                "rank %d of %d holds parameters %d bytes, optimizer state %d bytes", args.process_index,
                args.world_size, parameter_bytes(model), optimizer_state_bytes(self.optimizer),
            )  # fmt: skip

    def _wrap_distributed_optimizer(self, optimizer: Any) -> Any:
        """paddleformers 1.2 wraps `optimizer` for hybrid parallel (tensor, pipeline, sharding stage 1) and, when
        `max_grad_norm` > 0, installs its global-norm logger with `self.optimizer._inner_opt._grad_clip... = ...`:
        `self.optimizer` is still the unwrapped optimizer there (AttributeError `_inner_opt`), on every device.
        The method it builds is bound to the wrapped optimizer's clip already; only the target is wrong. During the
        call `self.optimizer` is a stand-in that catches the assignment, which then lands on the wrapped optimizer."""
        catcher = _AttributeSink()
        self.optimizer = _AttributeSink(_inner_opt=_AttributeSink(_grad_clip=catcher))
        try:
            wrapped = super()._wrap_distributed_optimizer(optimizer)
        finally:
            self.optimizer = optimizer
        if "_global_norm" in vars(catcher):
            wrapped._inner_opt._grad_clip._global_norm = catcher._global_norm
        return wrapped

    def gradient_norm(self, model: Any) -> float | None:
        """Global L2 norm of the step's gradients as the optimizer gets them (before clipping, without the fp16 loss
        scale; `main_grad` under master-grad AMP), the one-process value under every parallel mode (see
        `paddlemix.distributed.grad_norm`); computed only for steps that log. None (not logged) where the gradients
        are not final yet (see `paddlemix.distributed.grad_norm`), said once in the log."""
        opt = self.optimizer
        try:
            if self.do_grad_scaling and (getattr(opt, "_sharding_enable", False) or getattr(opt, "_dp_enable", False)):
                raise NotImplementedError("with fp16 loss scaling, fleet reduces gradients inside the optimizer step")
            grads = grad_norm.step_gradients(model, opt)
        except NotImplementedError as e:
            if not self.grad_norm_note:
                self.grad_norm_note = True
                logger.info("grad_norm is not logged: %s", e)
            return None
        a = self.args
        sharding = a.sharding_parallel_size if a.sharding else 1  # a sharding degree without a stage shards nothing
        groups = grad_norm.hybrid_groups(a.tensor_model_parallel_size, sharding, a.pipeline_model_parallel_size)
        norm = grad_norm.global_norm(grads, groups)
        if self.do_grad_scaling:  # fp16: the gradients carry the loss scale until the scaler's step removes it
            norm /= float(self.scaler._scale)
        return norm

    def stop_on_non_finite(self, model: Any, loss: float, sample_ids: list[str]) -> None:
        """Save the weights of the last completed step (the optimizer has not applied this batch) and stop."""
        step = self.state.global_step
        self._save_checkpoint(model)
        raise NonFiniteLossError(
            f"the training loss became {loss} at step {step + 1} on samples {', '.join(sample_ids[:8])}. "
            f"The state after step {step} was saved to {self.args.output_dir}/checkpoint-{step}; lower the learning "
            "rate, check these samples, or train in float32, then rerun the same command to resume from it."
        )

    def _save_checkpoint(self, model: Any, metrics: Any = None) -> None:
        """Gather a LoRA adapter split over ranks (tensor parallel, sharding stage 3) on every rank before
        paddleformers saves (only process 0 then writes it, in `_rotate_checkpoints`, where a collective would wait
        forever for the other ranks). Under stage 3 every rank runs this (paddleformers' save gathers the split
        weights, a collective); `stage3.checkpoint_ready` readies frozen split weights for that gather and gives
        the gathered memory back after it."""
        split = tensor_parallel.current().enabled or stage3.splits_parameters(self.args)
        self.checkpoint_adapter = None
        with stage3.checkpoint_ready(self.model_wrapped):
            if hasattr(self.model, "lora_spec") and split:
                with stage3.whole_parameters(self.model, trainable_only=True):
                    self.checkpoint_adapter = to_peft(self.model)
            try:
                super()._save_checkpoint(model, metrics)
            finally:
                self.checkpoint_adapter = None

    def _rotate_checkpoints(self, use_mtime: bool = False, output_dir: str | None = None) -> None:
        """Called once the checkpoint of this step is on disk: add the LoRA adapter in PEFT format (so any
        checkpoint loads in PEFT, vLLM or as `lora_path`), mark it complete, then rotate among complete checkpoints
        only, so neither a kill during a save nor `save_total_limit` can remove the last good one."""
        folder = Path(output_dir or self.args.output_dir)
        current = folder / f"checkpoint-{self.state.global_step}"
        if current.is_dir():
            if self.chat_template and self.args.process_index == 0:  # checkpoints carry the trained template too
                write_chat_template(current, self.chat_template)
            if hasattr(self.model, "lora_spec"):
                write_adapter(self.checkpoint_adapter or to_peft(self.model), current)
            rows = self.rows_before + self.rows
            checkpoints.mark_complete(current, self.state.global_step, rows=rows, global_batch=self.global_batch(),
                                      epoch_rows=self.epoch_rows() or 0)  # fmt: skip
            best = self.state.best_model_checkpoint if self.keep_best else None
            checkpoints.prune(folder, self.args.save_total_limit, protect=best)

    def load_best_checkpoint(self) -> str | None:
        """For `load_best_model_at_end`: put the weights of the best checkpoint back into the model (the trainable
        tensors of a LoRA run) and return its folder; None when no evaluation chose one. Under sharding stage 3
        every rank loads (its slices of the split weights)."""
        best = self.state.best_model_checkpoint
        if not (self.keep_best and best and Path(best).is_dir()):
            return None
        with stage3.loading_slices(self.model_wrapped):
            self._load_flex_checkpoint(best)
        return best

    def _get_train_sampler(self) -> Any:
        # Fractional sampling_rate: each epoch draws its own subset of the mix; the index carries the epoch.
        sampler = super()._get_train_sampler()
        if sampler is not None and hasattr(self.train_dataset, "mix"):
            return epoch_indexed(sampler, len(self.train_dataset))
        return sampler

    # LoRA runs: paddleformers' flex checkpoints would hold the whole model (the frozen base included, as large as
    # the model itself) although only the adapters and fully trained modules change. Saving and resuming see the
    # trainable tensors only; the base comes from `model_name_or_path` on resume, as it did at the start.
    def _save_flex_model_state(self, output_dir: str) -> None:
        with trainable_state_only(self.model):
            super()._save_flex_model_state(output_dir)

    def _save_flex_optimizer_state(self, output_dir: str) -> None:
        with trainable_state_only(self.model):
            super()._save_flex_optimizer_state(output_dir)

    def _load_flex_checkpoint(self, resume_from_checkpoint: str) -> Any:
        # Sharding stage 2: the state lives in the wrapped optimizer (`_optim`, this rank's parameters), which
        # creates its moments lazily at its first step. paddleformers prepares the wrapper's moments only, so the
        # loaded optimizer state would find nothing to fill and the run would restart Adam from zero (any device).
        inner = getattr(self.optimizer, "_optim", None)
        if inner is not None and hasattr(inner, "_create_accumulators"):
            block = paddle.base.framework.default_main_program().global_block()
            entries = inner._parameter_list or []  # parameters, or groups of them ({"params": [...], ...})
            params = [p for e in entries for p in (e["params"] if isinstance(e, dict) else [e])]
            inner._create_accumulators(block, [p for p in params if not p.stop_gradient])
        with trainable_state_only(self.model):
            loaded = super()._load_flex_checkpoint(resume_from_checkpoint)
        if hasattr(self.model, "lora_spec"):  # no frozen tensor was loaded: stage 3 keeps their slices
            stage3.keep_frozen_slices(self.model)
        return loaded

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, **kwargs: Any) -> Any:
        """Training: the sum of the micro-batch's token losses divided by the step's n0 (see `training_step`),
        with the head on the labelled positions only when `head_owner` is given (one process), in chunks of
        `loss_chunk_size` (no full [tokens, vocab] logits) when that is > 0; with a preference
        stage, the sum of the micro-batch's pair losses, divided alike (n0 counts pairs). Evaluation, which may
        need logits, keeps the model's own loss."""
        if self.stage is not None and not return_outputs:
            loss_sum = self.stage(model, inputs, training=model.training)  # summed over the batch's pairs
        elif return_outputs or not model.training:
            return super().compute_loss(model, inputs, return_outputs, **kwargs)
        elif self.head_owner is not None:  # the head on labelled positions only, chunked when loss_chunk_size > 0
            loss_sum = lm_loss_without_full_logits(model, inputs, self.head_owner, self.loss_chunk_size, "sum")
        else:
            logits = model(**training_forward(inputs)).logits  # [B, L, vocab]
            loss_sum = token_loss_sum(logits, inputs["labels"])
        self.last_loss_sum = float(loss_sum)
        return loss_sum / self.loss_divisor

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        """Loss-based evaluation, plus generated-answer scores (exact match / BLEU-4) when `eval_generation` is on."""
        metrics = super().evaluate(*args, **kwargs)
        if self.generation_eval is not None:
            scores = self.generation_eval()
            metrics.update(scores)
            self.log(scores)
        return metrics

    def evaluation_loop(self, *args: Any, metric_key_prefix: str = "eval", **kwargs: Any) -> Any:
        """paddleformers' loop averages per-batch mean losses, which depends on the eval batch size; the reported
        loss is replaced by the token-weighted mean over every eval sample of all ranks (`eval_token_mean`)."""
        self.eval_sums = {}
        output = super().evaluation_loop(*args, metric_key_prefix=metric_key_prefix, **kwargs)
        loss = self.eval_token_mean()
        if loss is not None:
            output.metrics[f"{metric_key_prefix}_loss"] = loss
        if self.stage is not None:  # preference metrics of every eval pair, each counted once
            output.metrics.update(self.stage.eval_metrics(self.gather_ranks(self.stage.take_eval_rows()),
                                                          metric_key_prefix))  # fmt: skip
        return output

    def gather_ranks(self, part: dict[str, Any]) -> dict[str, Any]:
        """The union of a per-sample dict over all ranks (the eval sampler repeats samples to even out the ranks;
        keyed by sample, each counts once)."""
        merged: dict[str, Any] = {}
        for each in gather_objects(part, self.args.world_size):
            merged.update(each)
        return merged

    def _get_eval_sampler(self, eval_dataset: Any) -> Any:
        """Several data-parallel ranks: every eval sample on some rank, the same number of batches on each.
        paddleformers' distributed eval sampler drops the samples past the last multiple of the rank count (7 eval
        records on 2 ranks were evaluated as 6), so the eval loss depended on the process count."""
        sampler = super()._get_eval_sampler(eval_dataset)
        if type(sampler) is MappingDistributedBatchSampler:
            return even_eval_sampler(eval_dataset, self.args.per_device_eval_batch_size,
                                     self.args.dataset_world_size, self.args.dataset_rank)  # fmt: skip
        return sampler

    def eval_token_mean(self) -> float | None:
        """Sum of the labelled-token losses over the eval set / their number, each sample counted once (a
        distributed sampler repeats samples to even out the ranks), the same for any batch size, order or
        process count."""
        sums = self.gather_ranks(self.eval_sums)
        tokens = sum(n for _, n in sums.values())
        return sum(s for s, _ in sums.values()) / tokens if tokens else None

    def prediction_step(self, model: Any, inputs: dict[str, Any], prediction_loss_only: bool, *args: Any,
                        **kwargs: Any) -> Any:  # fmt: skip
        """Evaluation: keep each sample's loss sum and labelled-token count (for `eval_token_mean`) and return the
        batch's token mean; pipeline-parallel runs and prediction (logits wanted) keep paddleformers' step."""
        skips = inputs.get(SKIPS, [])
        sample_ids = inputs.pop(SAMPLE_IDS, [])
        for key in BATCH_META:
            inputs.pop(key, None)
        if self.skip_log is not None:  # eval samples are seen once each; skips met in loader workers logged here
            for sample_id in sample_ids:
                if sample_id != "?":  # "?": a sample without id (not from our datasets), nothing to count it by
                    self.skip_log.ok(source_of(sample_id), sample_id)
            for line in skips:
                self.skip_log.add_line(line)
        if self.stage is not None:  # pair batches: each pair's loss, metrics noted by the stage
            return self.pair_prediction_step(model, inputs)
        labels = inputs.get("labels")
        if not prediction_loss_only or labels is None or self.args.pipeline_model_parallel_size > 1:
            return super().prediction_step(model, inputs, prediction_loss_only, *args, **kwargs)
        with paddle.no_grad():
            logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits  # [B, L, vocab]
            total, count = 0.0, 0
            for row in range(labels.shape[0]):
                loss_sum = float(token_loss_sum(logits[row], labels[row]))
                tokens = int((labels[row] != IGNORE_INDEX).sum())
                sample = sample_ids[row] if row < len(sample_ids) and sample_ids[row] != "?" else None
                # without an id a sample cannot be recognised when repeated: counted on its own (key of this rank)
                sample = sample or f"rank{self.args.process_index}:row{len(self.eval_sums)}"
                self.eval_sums[sample] = (loss_sum, tokens)
                total, count = total + loss_sum, count + tokens
        return paddle.to_tensor(total / max(count, 1), dtype="float32"), None, None

    def pair_prediction_step(self, model: Any, inputs: dict[str, Any]) -> Any:
        """Evaluation of a pair batch: each pair's loss kept by pair id (the eval loss is the mean over the eval
        set's pairs, each counted once, as `eval_token_mean` counts samples) and the batch's mean returned."""
        inputs = self._prepare_inputs(inputs)
        with paddle.no_grad():
            self.stage(model, inputs, training=False)
        losses = self.stage.last_losses.numpy().tolist()  # [P]
        for pair_id, loss in zip(inputs[PAIR_IDS], losses):
            self.eval_sums[pair_id] = (loss, 1)
        return paddle.to_tensor(sum(losses) / max(len(losses), 1), dtype="float32"), None, None

    def log(self, logs: dict[str, float], **kwargs: Any) -> None:
        """Add the stage's training metrics (preference rewards and log-probs, over all ranks since the last log)
        to the training logs, so the console, train_log.jsonl, VisualDL/TensorBoard and the final plot see them;
        evaluation metrics come with the eval loss (`evaluation_loop`)."""
        if self.stage is not None and "loss" in logs:
            logs.update(self.stage.pop_metrics())
        super().log(logs, **kwargs)
