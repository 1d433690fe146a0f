"""paddleformers 1.2's `_wrap_distributed_optimizer` writes its global-norm logger to `self.optimizer._inner_opt`
while `self.optimizer` is still unwrapped (AttributeError on every device once max_grad_norm > 0 under tensor,
pipeline or sharding stage-1 parallel); MIXTrainer puts it on the wrapped optimizer's clip."""

from __future__ import annotations

import types

from paddleformers.trainer import Trainer

from paddlemix.trainer.trainer import MIXTrainer


class Clip:
    def _global_norm(self, *args):
        return "original"


def paddleformers_1_2_wrap(self, optimizer):
    """What paddleformers 1.2 does, reduced to the faulty lines."""
    wrapped = types.SimpleNamespace(_inner_opt=types.SimpleNamespace(_grad_clip=Clip()))

    def new_global_norm(clip, *args):
        return "logged"

    self.optimizer._inner_opt._grad_clip._global_norm = types.MethodType(
        new_global_norm, wrapped._inner_opt._grad_clip
    )
    return wrapped


def test_global_norm_logger_lands_on_the_wrapped_optimizer(monkeypatch) -> None:
    monkeypatch.setattr(Trainer, "_wrap_distributed_optimizer", paddleformers_1_2_wrap)
    trainer = MIXTrainer.__new__(MIXTrainer)
    raw = types.SimpleNamespace(name="AdamW")  # no `_inner_opt`, as the real unwrapped optimizer
    trainer.optimizer = raw
    wrapped = trainer._wrap_distributed_optimizer(raw)
    assert wrapped._inner_opt._grad_clip._global_norm() == "logged"
    assert wrapped._inner_opt._grad_clip._global_norm.__self__ is wrapped._inner_opt._grad_clip
    assert trainer.optimizer is raw and not hasattr(raw, "_inner_opt")
