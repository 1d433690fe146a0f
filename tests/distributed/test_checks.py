"""Multi-device settings checked before the model loads (paddlemix/distributed/checks.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paddlemix.distributed.checks import check_parallel, parallel_degrees, sharding_notes
from paddlemix.utils.errors import Problems, UserError

TEXT = {"num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 3, "vocab_size": 151}


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl", "text_config": TEXT}))
    return tmp_path


def problems_of(training: dict, model_dir: Path, world: int, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", str(world))
    problems = Problems("args.json")
    check_parallel(training, model_dir, problems)
    return problems.items


@pytest.mark.parametrize(
    "training, world, expected",
    [
        ({}, 4, {"tensor": 1, "pipeline": 1, "sharding": 1, "data": 4}),
        ({"sharding": "stage2"}, 4, {"tensor": 1, "pipeline": 1, "sharding": 4, "data": 4}),
        (
            {"sharding": "stage1", "tensor_model_parallel_size": 2},
            8,
            {"tensor": 2, "pipeline": 1, "sharding": 4, "data": 4},
        ),  # fmt: skip
        (
            {"sharding": "stage1", "sharding_parallel_size": 2},
            8,
            {"tensor": 1, "pipeline": 1, "sharding": 2, "data": 8},
        ),  # fmt: skip
        ({"sharding_parallel_size": 2}, 2, {"tensor": 1, "pipeline": 1, "sharding": 1, "data": 2}),
    ],
)
def test_degrees_resolve_as_paddleformers_does(training: dict, world: int, expected: dict) -> None:
    assert parallel_degrees(training, world) == expected


def test_stage1_without_master_grad_keeps_parameters_whole_and_says_so() -> None:
    kwargs = {"sharding": "stage1"}
    notes = sharding_notes(kwargs)
    assert kwargs["split_param"] is False and len(notes) == 1 and "split_param" in notes[0]
    kwargs = {"sharding": "stage3"}
    assert sharding_notes(kwargs) == [] and kwargs["split_param"] is False  # paddleformers asserts it otherwise
    kwargs = {"sharding": "stage1", "amp_master_grad": True}
    assert sharding_notes(kwargs) == [] and "split_param" not in kwargs
    kwargs = {"sharding": "stage1", "split_param": True}
    assert sharding_notes(kwargs) == [] and kwargs["split_param"] is True  # refused by check_parallel
    assert sharding_notes({}) == []


def test_good_settings_pass(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert problems_of({"sharding": "stage3"}, model_dir, 2, monkeypatch) == []
    assert problems_of({"tensor_model_parallel_size": 2, "sharding": "stage1", "vocab_size": 0}, model_dir.parent
                       / "absent", 4, monkeypatch) == []  # fmt: skip


def test_every_problem_is_listed_in_one_message(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    training = {"tensor_model_parallel_size": 4, "pipeline_model_parallel_size": 2, "sharding": "stage3",
                "split_param": True}  # fmt: skip
    items = problems_of(training, model_dir, 4, monkeypatch)
    text = "\n".join(items)
    for expected in (
        "4 x 2 x 1 do not divide the 4 launched process(es)",
        '"split_param": true with sharding stage3 needs "amp_master_grad"',
        '"sharding": "stage3" cannot be combined with "tensor_parallel_degree"',
        '"sharding": "stage3" cannot be combined with "pipeline_parallel_degree"',
        "num_key_value_heads = 2",
        "vocab_size = 151",
        "num_hidden_layers = 3",
    ):
        assert expected in text, (expected, text)
    assert "num_attention_heads" not in text  # 4 heads split over 4
    problems = Problems("args.json")
    problems.items = items
    with pytest.raises(UserError, match="7 problems, all listed here"):
        problems.raise_if_any()


def test_unknown_stage_is_refused(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (item,) = problems_of({"sharding": "stage4"}, model_dir, 1, monkeypatch)
    assert '"sharding" must be one of stage1, stage2, stage3' in item
