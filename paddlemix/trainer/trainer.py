"""One thin subclass of paddleformers' Trainer; every override is short and says why it exists."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paddle
import paddleformers.trainer.trainer as _pf_trainer
from paddleformers.trainer import Trainer, TrainerCallback

from paddlemix.datasets.collator import BATCH_META, LABEL_TOKENS, REAL_TOKENS, SAMPLE_IDS, SKIPS
from paddlemix.peft.lora import save_adapter
from paddlemix.processors.template_files import write_chat_template
from paddlemix.trainer.accumulation import StepLoss, scale_gradients
from paddlemix.trainer.chunked_loss import lm_loss_without_full_logits, token_loss_sum
from paddlemix.utils import checkpoints
from paddlemix.utils.errors import UserError


class NonFiniteLossError(UserError):
    """The loss became NaN or infinite; the last good state was saved before stopping."""


# paddleformers 1.2 names `GPTModel` in its evaluation loop but imports it only when paddlefleet is installed;
# a placeholder class keeps evaluation working without paddlefleet (nothing is an instance of it).
if not hasattr(_pf_trainer, "GPTModel"):
    _pf_trainer.GPTModel = type("GPTModel", (), {})


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


class MIXTrainer(Trainer):
    """Trainer whose optimizer step is the token mean over all its micro-batches and ranks (see `accumulation`),
    and that counts what it trains: text and image tokens, row slots (fill), samples, rows and per-source `seen`."""

    def __init__(
        self, *args: Any, image_token_id: int | None = None, head_owner: Any = None, loss_chunk_size: int = 0,
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
        self.callback_handler.add_callback(RestoreRngOnResume(self))

    def training_step(self, model: Any, inputs: dict[str, Any], step_control: int = 0) -> Any:
        """Backpropagate this micro-batch's loss sum / n0 and return its share of the logged step loss: 0 until the
        step's last micro-batch, which returns the step's token-mean loss over all ranks."""
        real, labelled = int(inputs.pop(REAL_TOKENS)), int(inputs.pop(LABEL_TOKENS))
        sample_ids, skips = inputs.pop(SAMPLE_IDS, []), inputs.pop(SKIPS, [])
        images = int((inputs["input_ids"] == self.image_token_id).sum()) if self.image_token_id is not None else 0
        self.text_tokens += real - images
        self.image_tokens += images
        self.slots += int(inputs["input_ids"].numel())
        self.count_trained(sample_ids, skips)
        self.loss_divisor = self.step.begin_micro_batch(labelled, len(sample_ids), int(inputs["input_ids"].shape[0]))
        self.last_loss_sum = float("nan")
        backpropagated = float(super().training_step(model, inputs))
        if not (math.isfinite(backpropagated) and math.isfinite(self.last_loss_sum)):
            self.stop_on_non_finite(model, backpropagated, sample_ids)
        self.step.add_loss_sum(self.last_loss_sum)
        if (step_control + 1) % self.args.gradient_accumulation_steps:
            return paddle.zeros([], dtype="float32")
        return paddle.to_tensor(self.step.finish(), dtype="float32")

    def train(self, resume_from_checkpoint: str | None = None, **kwargs: Any) -> Any:
        self.resume_checkpoint = resume_from_checkpoint
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

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
            factor = self.step.gradient_factor(max(args.gradient_accumulation_steps, 1))
            if factor != 1.0:
                scale_gradients(
                    model._layers.parameters() if hasattr(model, "_layers") else model.parameters(), factor
                )
            self.samples += int(self.step.total[2])
            self.rows += int(self.step.total[3])
        if args.logging_steps > 0 and (self.state.global_step + 1) % args.logging_steps == 0:
            self.grad_norm = self.gradient_norm(model)
        self.step.reset()
        super().optimizer_step(args, model=model, parameters_list=parameters_list)

    @staticmethod
    def gradient_norm(model: Any) -> float:
        """L2 norm of the step's gradients as the optimizer gets them (before clipping; `main_grad` under
        master-grad AMP), computed only for steps that log."""
        grads = [getattr(p, "main_grad", None) if getattr(p, "main_grad", None) is not None else p.grad
                 for p in model.parameters()]  # fmt: skip
        squares = [(g.astype("float32") ** 2).sum() for g in grads if g is not None]
        return float(paddle.add_n(squares).sqrt()) if squares else 0.0

    def stop_on_non_finite(self, model: Any, loss: float, sample_ids: list[str]) -> None:
        """Save the weights of the last completed step (the optimizer has not applied this batch) and stop."""
        step = self.state.global_step
        self._save_checkpoint(model)
        raise NonFiniteLossError(
            f"the training loss became {loss} at step {step + 1} on samples {', '.join(sample_ids[:8])}. "
            f"The state after step {step} was saved to {self.args.output_dir}/checkpoint-{step}; lower the learning "
            "rate, check these samples, or train in float32, then rerun the same command to resume from it."
        )

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
                save_adapter(self.model, current)
            checkpoints.mark_complete(current, self.state.global_step)
            checkpoints.prune(folder, self.args.save_total_limit)

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
        with trainable_state_only(self.model):
            return super()._load_flex_checkpoint(resume_from_checkpoint)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, **kwargs: Any) -> Any:
        """Training: the sum of the micro-batch's token losses divided by the step's n0 (see `training_step`),
        through the chunked head + cross-entropy (no full [tokens, vocab] logits) when enabled. Evaluation, which
        may need logits, keeps the model's own loss."""
        if self.stage is not None and not return_outputs:
            loss_sum = self.stage(model, inputs, training=model.training)  # summed over the batch's pairs
        elif return_outputs or not model.training:
            return super().compute_loss(model, inputs, return_outputs, **kwargs)
        elif self.loss_chunk_size > 0 and self.head_owner is not None:
            loss_sum = lm_loss_without_full_logits(model, inputs, self.head_owner, self.loss_chunk_size, "sum")
        else:
            logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits  # [B, L, vocab]
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

    def prediction_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        for key in BATCH_META:
            inputs.pop(key, None)
        if self.stage is not None:  # pair batches: the mean loss of their pairs, metrics noted by the stage
            inputs = self._prepare_inputs(inputs)
            with paddle.no_grad():
                pairs = max(int(inputs["pair_count"]), 1)
                return self.stage(model, inputs, training=False).detach() / pairs, None, None
        return super().prediction_step(model, inputs, *args, **kwargs)

    def log(self, logs: dict[str, float], **kwargs: Any) -> None:
        """Add the stage's metrics (preference rewards and log-probs) to the training and evaluation logs, so the
        console, train_log.jsonl, VisualDL/TensorBoard and the final plot all see them."""
        if self.stage is not None:
            if "loss" in logs:
                logs.update(self.stage.pop_metrics("train"))
            if "eval_loss" in logs:
                logs.update(self.stage.pop_metrics("eval"))
        super().log(logs, **kwargs)
