from __future__ import annotations

import paddle

from paddlemix.peft.freeze import apply_freeze, trainable_table


class Tiny(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.visual = paddle.nn.Sequential(paddle.nn.Linear(2, 2), paddle.nn.Linear(2, 2))
        self.head = paddle.nn.Linear(2, 3)


def test_exclude_wins_over_include() -> None:
    model = Tiny()
    frozen = apply_freeze(model, ["visual.*"], ["visual.1.*"])
    assert frozen == ["visual.0.weight", "visual.0.bias"]
    trainable = {n for n, p in model.named_parameters() if not p.stop_gradient}
    assert trainable == {"visual.1.weight", "visual.1.bias", "head.weight", "head.bias"}


def test_table_counts_per_module() -> None:
    model = Tiny()
    apply_freeze(model, ["visual.*"])
    table = trainable_table(model)
    lines = {line.split()[0]: line.split()[1:] for line in table.splitlines()[1:]}
    assert lines["visual.0"] == ["0", "6"] and lines["head"] == ["9", "0"]
    assert lines["total"][:2] == ["9", "12"]
