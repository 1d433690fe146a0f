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


def test_paddlemix_names_apply_through_aliases() -> None:
    from paddlemix.models.llava import ADAPTER

    model = Tiny()
    aliases = {"visual.0.weight": ("llama.mm_projector.0.weight",)}.get
    frozen = apply_freeze(model, ["*llama*"], (), lambda n: aliases(n, ()))
    assert frozen == ["visual.0.weight"]
    names = ADAPTER.paddlemix_names
    assert names("model.multi_modal_projector.linear_2.bias") == ("llama.mm_projector.2.bias",)
    assert names("model.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight") == (
        "llama.vision_tower.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight",
    )
    assert names("lm_head.weight") == ()


QWEN_NAMES = ["model.visual.blocks.0.attn.qkv.weight", "model.visual.merger.mlp.0.weight",
              "model.language_model.layers.0.self_attn.qkv_proj.weight", "lm_head.weight"]  # fmt: skip


def test_check_patterns_notes_translations_and_refuses_empty_patterns() -> None:
    from paddlemix.models.qwen2_5_vl import ADAPTER
    from paddlemix.peft.freeze import check_patterns
    from paddlemix.utils.errors import UserError

    aliases = ADAPTER.paddlemix_names
    notes = check_patterns(
        {"freeze_exclude": ["*visual.attn_pool*", "visual.blocks.*"]}, QWEN_NAMES, aliases, "a.json"
    )
    assert notes == [
        'freeze pattern "*visual.attn_pool*" (freeze_exclude) uses PaddleMIX\'s module names; here it matches 1 '
        "tensors in model.visual.merger",
        'freeze pattern "visual.blocks.*" (freeze_exclude) uses PaddleMIX\'s module names; here it matches 1 '
        "tensors in model.visual.blocks",
    ]
    assert check_patterns({"freeze_include": ["model.visual.*"]}, QWEN_NAMES, aliases, "a.json") == []
    with pytest.raises(UserError) as err:
        check_patterns({"freeze_include": ["*vit*", "*llama*"]}, QWEN_NAMES, aliases, "a.json")
    message = str(err.value)
    assert message.startswith('a.json: freeze patterns "*vit*" (freeze_include), "*llama*" (freeze_include) match no')
    assert "model.language_model.layers, model.visual.blocks, model.visual.merger" in message
    assert "transformer.visual.attn_pool" in message


def test_loaded_names_cover_fused_projections_and_checkpoint_layouts(tmp_path) -> None:
    import numpy as np

    from paddlemix.models.qwen2_5_vl import ADAPTER
    from paddlemix.peft.freeze import check_checkpoint_patterns, loaded_names
    from paddlemix.utils.errors import UserError
    from paddlemix.utils.io import save_safetensors
    from paddlemix.utils.safetensors_stream import safetensors_names

    tensors = {"model.layers.0.self_attn.k_proj.weight": np.zeros(2, "float32"),
               "visual.blocks.0.mlp.up_proj.weight": np.zeros(2, "float32")}  # fmt: skip
    save_safetensors(tensors, tmp_path / "model.safetensors")
    assert safetensors_names(tmp_path) == sorted(tensors)
    assert loaded_names(safetensors_names(tmp_path), ADAPTER.parameter_name) == {
        "model.language_model.layers.0.self_attn.k_proj.weight",
        "model.language_model.layers.0.self_attn.qkv_proj.weight",
        "model.visual.blocks.0.mlp.up_proj.weight",
        "model.visual.blocks.0.mlp.up_gate_proj.weight",
    }
    patterns = {"freeze_include": ["*qkv_proj*"], "freeze_exclude": []}
    assert check_checkpoint_patterns(tmp_path, patterns, ADAPTER.parameter_name, None, "a.json") == []
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {"lm_head.weight": "x.safetensors"}}')
    save_safetensors({"lm_head.weight": np.zeros(2, "float32")}, tmp_path / "x.safetensors")
    assert safetensors_names(tmp_path) == ["lm_head.weight"]
    (tmp_path / "x.safetensors").unlink()
    with pytest.raises(UserError, match="x.safetensors"):
        safetensors_names(tmp_path)
