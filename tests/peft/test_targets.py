"""Target names of the field resolved onto each family's layers from checkpoint headers, before any model loads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from paddlemix import arguments
from paddlemix.models import adapter_for
from paddlemix.models.adapter import ModelAdapter
from paddlemix.peft.lora import lora_modules
from paddlemix.peft.targets import (
    checkpoint_shapes,
    linear_modules,
    peft_target_modules,
    peft_target_regex,
    resolve_targets,
)
from paddlemix.trainer.sft import build_model
from paddlemix.utils.errors import UserError
from paddlemix.utils.io import save_safetensors

LM = "model.language_model.layers"
QWEN_GROUPS = {
    "vision": ("model.visual.patch_embed.*", "model.visual.blocks.*"),
    "projector": ("model.visual.merger.*",),
    "llm": ("model.language_model.*", "lm_head.*"),
}
PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# A Qwen2.5-VL-shaped module list: 3 decoder layers, 2 vision blocks whose MLP reuses the LM's names, the merger.
QWEN_MODULES = sorted(
    [f"{LM}.{i}.self_attn.{p}" for i in range(3) for p in PROJ[:4]]
    + [f"{LM}.{i}.mlp.{p}" for i in range(3) for p in PROJ[4:]]
    + [f"model.visual.blocks.{i}.attn.{p}" for i in range(2) for p in ("qkv", "proj")]
    + [f"model.visual.blocks.{i}.mlp.{p}" for i in range(2) for p in PROJ[4:]]
    + ["model.visual.merger.mlp.0", "model.visual.merger.mlp.2"]
)


def resolve(*targets: str) -> list[str]:
    return resolve_targets(list(targets), QWEN_MODULES, QWEN_GROUPS)


def lm(*names: str, layers=range(3)) -> list[str]:
    kind = {p: "self_attn" if p in PROJ[:4] else "mlp" for p in PROJ}
    return sorted(f"{LM}.{i}.{kind[n]}.{n}" for i in layers for n in names)


@pytest.mark.parametrize(
    "targets, expected",
    [
        (["q_proj", "v_proj"], lm("q_proj", "v_proj")),
        (["all-linear"], lm(*PROJ)),
        (["all"], lm(*PROJ)),
        ([".*down_proj.*"], lm("down_proj")),  # not the vision blocks' down_proj
        (["down_proj"], lm("down_proj")),
        (["model.layers.*q_proj.*"], lm("q_proj")),  # PaddleMIX's Qwen2-VL names
        (["llama.layer.*q_proj.*"], lm("q_proj")),  # PaddleMIX's LLaVA names
        ([r"model\.language_model\.layers\.1\.self_attn\.(q_proj|v_proj)"], lm("q_proj", "v_proj", layers=[1])),
        (["self_attn.o_proj", "mlp.gate_proj"], lm("o_proj", "gate_proj")),
        (["qkv_proj", "up_gate_proj"], lm("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")),  # fused names
        (
            [r"model\.language_model\.layers\.\d+\.self_attn\.(qkv_proj|o_proj)"],
            lm("q_proj", "k_proj", "v_proj", "o_proj"),
        ),
        (["qkv"], ["model.visual.blocks.0.attn.qkv", "model.visual.blocks.1.attn.qkv"]),  # vision-only name
        (["model.visual.*down_proj"], ["model.visual.blocks.0.mlp.down_proj", "model.visual.blocks.1.mlp.down_proj"]),
        (["visual.merger.mlp.0"], ["model.visual.merger.mlp.0"]),
    ],
)
def test_field_names_map_onto_layers(targets: list[str], expected: list[str]) -> None:
    assert resolve(*targets) == expected


@pytest.mark.parametrize("target", [r"model\.vision_tower\..*", "nothing_here"])
def test_target_that_matches_nothing_lists_language_model_names(target: str) -> None:
    with pytest.raises(UserError, match="matches no Linear layer") as err:
        resolve(target)
    assert "q_proj" in str(err.value) and "qkv" not in str(err.value) and "visual" not in str(err.value)


def test_bad_regex_and_output_head_are_user_errors() -> None:
    with pytest.raises(UserError, match="not a valid regex"):
        resolve("q_proj(")
    with pytest.raises(UserError, match="lm_head"):
        resolve("lm_head")


@pytest.mark.parametrize(
    "chosen", [lm("q_proj", "v_proj"), lm("q_proj", layers=[0, 2]), lm(*PROJ) + ["model.visual.merger.mlp.0"]]
)
def test_peft_regex_selects_exactly_the_chosen_modules(chosen: list[str]) -> None:
    pattern = peft_target_regex(chosen, QWEN_MODULES)
    # PEFT's rule for a string target: re.fullmatch against each module path.
    assert [m for m in QWEN_MODULES if re.fullmatch(pattern, m)] == sorted(chosen)


@pytest.mark.parametrize(
    "chosen, expected",
    [
        (lm("q_proj", "v_proj"), ["q_proj", "v_proj"]),  # PEFT's suffix rule is exact here
        (lm("down_proj"), r"(model\.language_model\.layers\.\d+\.mlp\.down_proj)"),  # the vision blocks have one too
        (lm("q_proj", layers=[1]), r"(model\.language_model\.layers\.1\.self_attn\.q_proj)"),
    ],
)
def test_peft_target_modules_is_a_list_only_when_exact(chosen: list[str], expected) -> None:
    assert peft_target_modules(chosen, QWEN_MODULES) == expected


def test_regex_collapses_layer_numbers_when_every_layer_is_chosen() -> None:
    assert peft_target_regex(lm("q_proj"), QWEN_MODULES) == r"(model\.language_model\.layers\.\d+\.self_attn\.q_proj)"


def test_sharded_checkpoint_is_read_through_its_index(tmp_path: Path) -> None:
    save_safetensors(
        {"model.layers.0.self_attn.q_proj.weight": np.zeros((8, 4), "float32")}, tmp_path / "a.safetensors"
    )
    save_safetensors(
        {"model.layers.0.mlp.down_proj.weight": np.zeros((4, 6), "float32"), "model.norm.weight": np.zeros(4)},
        tmp_path / "b.safetensors",
    )
    weight_map = {"model.layers.0.self_attn.q_proj.weight": "a.safetensors"}
    weight_map |= {"model.layers.0.mlp.down_proj.weight": "b.safetensors", "model.norm.weight": "b.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    shapes = checkpoint_shapes(tmp_path)
    assert shapes["model.layers.0.self_attn.q_proj.weight"] == (8, 4)
    names = linear_modules(shapes, adapter_for_type("qwen2_5_vl").parameter_name)
    assert names == [f"{LM}.0.mlp.down_proj", f"{LM}.0.self_attn.q_proj"]


def adapter_for_type(model_type: str) -> ModelAdapter:
    from paddlemix.models import ADAPTERS

    return ADAPTERS[model_type]


@pytest.mark.parametrize(
    "fixture, targets, count",
    [
        ("tiny_model_dir", None, 2 * 7),
        ("tiny_model_dir", ["qkv", "proj"], 2 * 2),  # Qwen2.5-VL vision attention
        ("tiny_qwen3_vl_dir", ["all-linear"], 3 * 7),
        ("tiny_qwen3_vl_dir", ["linear_fc1"], 3 + 1 + 2),  # vision blocks, merger, DeepStack mergers
        ("tiny_llava_dir", ["q_proj", "v_proj"], 2 * 2),  # the LM's, not the CLIP tower's q/v
        ("tiny_llava_dir", ["fc1"], 2),  # CLIP MLP
        ("tiny_llava_dir", ["model.vision_tower.*q_proj"], 2),
    ],
)
def test_real_tiny_checkpoints(request, fixture: str, targets, count: int) -> None:
    model_dir = request.getfixturevalue(fixture)
    assert len(lora_modules(model_dir, adapter_for(model_dir), targets)) == count


def test_unmatched_target_fails_before_the_model_loads(tiny_model_dir, shapes_data, tmp_path, monkeypatch) -> None:
    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the targets were checked")

    monkeypatch.setattr(ModelAdapter, "load_model", must_not_load)
    raw = {
        "model_name_or_path": str(tiny_model_dir),
        "output_dir": str(tmp_path / "out"),
        "dataset": {"train": [{"name": "chatml_dataset", "data_files": str(shapes_data["train"])}]},
        "lora": True,
        "lora_target_modules": ["q_proj", "c_attn"],
    }
    with pytest.raises(UserError, match="'c_attn' matches no Linear layer"):
        build_model(arguments.parse(raw, "args.json"), adapter_for(tiny_model_dir))


def test_tensor_parallel_lora_is_no_longer_refused_while_parsing(tiny_model_dir, shapes_data, tmp_path) -> None:
    """LoRA splits with its layers now; in one process the only problem left is the process count."""
    raw = {
        "model_name_or_path": str(tiny_model_dir),
        "output_dir": str(tmp_path / "out"),
        "dataset": {"train": [{"name": "chatml_dataset", "data_files": str(shapes_data["train"])}]},
        "lora": True,
        "tensor_parallel_degree": 2,
    }
    with pytest.raises(UserError, match="do not divide the 1 launched process") as raised:
        arguments.parse(raw, "args.json")
    assert "lora" not in str(raised.value)


@pytest.mark.parametrize("target", ["q_proj,v_proj", "q_proj, v_proj", "q_proj,v_proj,"])
def test_comma_separated_string_lists_names(target: str) -> None:
    assert resolve(target) == lm("q_proj", "v_proj")


def test_comma_separated_string_on_the_command_line(tiny_model_dir, shapes_data, tmp_path) -> None:
    file = tmp_path / "run.json"
    file.write_text(json.dumps({"model_name_or_path": str(tiny_model_dir), "output_dir": str(tmp_path / "out"),
                                "dataset": {"train": [{"name": "chatml_dataset", "data_files": str(shapes_data["train"])}]},
                                "lora": True}))  # fmt: skip
    args = arguments.load(file, ["--lora_target_modules", "q_proj,v_proj"])
    modules = lora_modules(tiny_model_dir, adapter_for(tiny_model_dir), args.lora.lora_target_modules)
    assert sorted({m.rsplit(".", 1)[-1] for m in modules}) == ["q_proj", "v_proj"] and len(modules) == 2 * 2


def test_empty_target_list_is_an_error_not_the_default(tiny_model_dir) -> None:
    with pytest.raises(UserError, match=r'"lora_target_modules": \[\] selects no layer'):
        resolve()
    with pytest.raises(UserError, match="selects no layer"):
        lora_modules(tiny_model_dir, adapter_for(tiny_model_dir), [])


@pytest.mark.parametrize("target, right", [("Q_PROJ", "q_proj"), ("Self_Attn.V_Proj", "self_attn.v_proj")])
def test_wrong_case_gets_the_right_spelling(target: str, right: str) -> None:
    with pytest.raises(UserError, match=f"case-sensitive: did you mean {right!r}"):
        resolve(target)


@pytest.mark.parametrize(
    "fixture, target, names",
    [("tiny_llava_dir", "qkv", ["q_proj", "out_proj", "fc1", "linear_1"]),
     ("tiny_qwen3_vl_dir", "fc1", ["qkv", "linear_fc1"])],
)  # fmt: skip
def test_other_familys_vision_name_lists_this_familys_vision_layers(request, fixture, target, names) -> None:
    model_dir = request.getfixturevalue(fixture)
    with pytest.raises(UserError, match=f"{target!r} matches no Linear layer") as err:
        lora_modules(model_dir, adapter_for(model_dir), [target])
    listed = str(err.value).split("vision and projector layers are named ")[1].split(". Use")[0]
    assert all(n in listed.split(", ") for n in names), listed
