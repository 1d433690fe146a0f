"""One thin subclass of paddleformers' Trainer; every override is short and says why it exists."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paddle
import paddleformers.trainer.trainer as _pf_trainer
from paddleformers.trainer import Trainer

from paddlemix.datasets.collator import REAL_TOKENS, SAMPLE_IDS
from paddlemix.peft.lora import save_adapter
from paddlemix.processors.template_files import write_chat_template
from paddlemix.trainer.chunked_loss import lm_loss_without_full_logits
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


class MIXTrainer(Trainer):
    """Trainer that counts the real text and image tokens and the row slots it trains on (throughput, fill)."""

    def __init__(
        self, *args: Any, image_token_id: int | None = None, head_owner: Any = None, loss_chunk_size: int = 0,
        generation_eval: Callable[[], dict[str, float]] | None = None, chat_template: str | None = None,
        **kwargs: Any,
    ):  # fmt: skip
        super().__init__(*args, **kwargs)
        self.chat_template = chat_template
        self.generation_eval = generation_eval
        self.image_token_id = image_token_id
        self.head_owner = head_owner
        self.loss_chunk_size = loss_chunk_size
        self.text_tokens = 0
        self.image_tokens = 0
        self.slots = 0
        self.grad_norm: float | None = None

    def training_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        real = int(inputs.pop(REAL_TOKENS))
        sample_ids = inputs.pop(SAMPLE_IDS, [])
        images = int((inputs["input_ids"] == self.image_token_id).sum()) if self.image_token_id is not None else 0
        self.text_tokens += real - images
        self.image_tokens += images
        self.slots += int(inputs["input_ids"].numel())
        loss = super().training_step(model, inputs, *args, **kwargs)
        if not bool(paddle.isfinite(loss).all()):
            self.stop_on_non_finite(model, float(loss), sample_ids)
        if self.args.logging_steps > 0 and (self.state.global_step + 1) % self.args.logging_steps == 0:
            self.grad_norm = self.gradient_norm(model)
        return loss

    @staticmethod
    def gradient_norm(model: Any) -> float:
        """L2 norm of the gradients accumulated so far (before clipping), computed only for steps that log."""
        squares = [(p.grad.astype("float32") ** 2).sum() for p in model.parameters() if p.grad is not None]
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
        """Training loss through the chunked head + cross-entropy (no full [tokens, vocab] logits) when enabled;
        evaluation, which may need logits, keeps the model's own loss."""
        if self.loss_chunk_size <= 0 or return_outputs or not model.training or self.head_owner is None:
            return super().compute_loss(model, inputs, return_outputs, **kwargs)
        return lm_loss_without_full_logits(model, inputs, self.head_owner, self.loss_chunk_size)

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        """Loss-based evaluation, plus generated-answer scores (exact match / BLEU-4) when `eval_generation` is on."""
        metrics = super().evaluate(*args, **kwargs)
        if self.generation_eval is not None:
            scores = self.generation_eval()
            metrics.update(scores)
            self.log(scores)
        return metrics

    def prediction_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        inputs.pop(REAL_TOKENS, None)
        inputs.pop(SAMPLE_IDS, None)
        return super().prediction_step(model, inputs, *args, **kwargs)
