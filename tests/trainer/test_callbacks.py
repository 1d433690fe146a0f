"""The per-step log record the callbacks add (see paddlemix/trainer/callbacks.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from paddlemix.trainer.callbacks import ThroughputCallback


@pytest.mark.parametrize("norm", [5.473612, 3.1e-6])
def test_logged_norm_keeps_six_significant_digits(norm: float) -> None:
    logs = {"loss": 1.0}
    ThroughputCallback(SimpleNamespace(text_tokens=0, image_tokens=0, slots=0, grad_norm=norm)).on_log(
        None, None, None, logs
    )
    assert logs["grad_norm"] == pytest.approx(norm, rel=1e-6)
