from __future__ import annotations

import logging

from paddlemix.utils.logging import PADDLEFORMERS_NOISE, PADDLEFORMERS_ONCE, MessageFilter


def record(message: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("PaddleFormers", level, __file__, 1, message, None, None)


def test_filter_drops_noise_and_debug_keeps_the_rest_and_repeats_once() -> None:
    f = MessageFilter(PADDLEFORMERS_NOISE, PADDLEFORMERS_ONCE, logging.INFO)
    assert not f.filter(record("Using download source: huggingface"))
    assert not f.filter(record("loss: 6.27474213, learning_rate: 0.000933, global_step: 1"))
    assert not f.filter(record("adam_beta1                    : 0.9", logging.DEBUG))
    assert f.filter(record("eval_loss: 5.71, eval_runtime: 0.15"))
    assert f.filter(record("***** Running training *****"))
    pad = "Setting `pad_token_id` to `eos_token_id`:151645 for open-end generation."
    assert [f.filter(record(pad)) for _ in range(3)] == [True, False, False]
    assert f.filter(record("an unrelated warning", logging.WARNING))


def test_fleet_strategy_table_stays_off_the_console() -> None:
    """TrainingArguments logs fleet's whole DistributedStrategy (about 70 lines) under TP, PP or sharding."""
    from paddle.distributed import fleet

    f = MessageFilter(PADDLEFORMERS_NOISE, PADDLEFORMERS_ONCE, logging.INFO)
    table = str(fleet.DistributedStrategy())
    assert "DistributedStrategy Overview" in table and table.count("\n") > 30
    assert not f.filter(record(table))
