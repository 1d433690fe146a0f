from __future__ import annotations

import re

import paddle
import pytest

from paddlemix.peft.freeze import apply_freeze, freeze_plan, trainable_table


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


GROUPS = {"vision": ("visual.blocks.*",), "projector": ("visual.merger.*",), "llm": ("lm.*", "head.*")}
NO_SWITCH = {"vision": None, "projector": None, "llm": None}


@pytest.mark.parametrize(
    "train_type, lora, switches, frozen",
    [
        (None, False, {}, []),
        ("none", False, {}, []),
        ("freeze_vision", False, {}, ["vision"]),
        ("use_lora", True, {}, ["vision"]),
        (None, True, {}, ["vision", "projector"]),  # a bare "lora": true trains the adapters only
        ("use_lora", True, {"projector": True}, ["vision", "projector"]),
        ("freeze_vision", False, {"vision": False, "llm": True}, ["llm"]),
        ("none", False, {"projector": True}, ["projector"]),
    ],
)
def test_presets_and_switches(train_type, lora, switches, frozen) -> None:
    plan = freeze_plan(GROUPS, train_type, {**NO_SWITCH, **switches}, lora, ["extra.*"], ["lm.keep"])
    assert plan.frozen_groups == frozen
    assert plan.exclude == ["lm.keep"]
    if lora:  # LoRA freezes all non-adapter weights itself; unfrozen groups become fully trained modules
        assert plan.include == ["extra.*"]
        trained = [g for g in ("vision", "projector") if g not in frozen]
        name = {"vision": "visual.blocks.0.w", "projector": "visual.merger.mlp.w"}
        for group in ("vision", "projector"):
            hit = any(re.fullmatch(p, name[group]) for p in plan.lora_trainable)
            assert hit == (group in trained)
    else:
        assert plan.include == [p for g in frozen for p in GROUPS[g]] + ["extra.*"]
        assert plan.lora_trainable == []
