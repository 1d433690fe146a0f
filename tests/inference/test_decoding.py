"""Decoding settings from generation_config.json, the load dtype, next-token rules and left padding
(paddlemix/inference/decoding.py); the model-driven checks (cache, batches, stops) are in tests/inference/test_generation.py."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from paddlemix.inference.decoding import GenerationSettings, left_pad, load_dtype, next_tokens, settings_for
from paddlemix.utils.errors import UserError


def folder(tmp_path: Path, generation: dict | None = None, config: dict | None = None) -> Path:
    if generation is not None:
        (tmp_path / "generation_config.json").write_text(json.dumps(generation))
    if config is not None:
        (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


QWEN_25_VL_INSTRUCT = {  # the generation_config.json of Qwen2.5-VL-*-Instruct
    "bos_token_id": 151643, "pad_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643],
    "repetition_penalty": 1.05, "temperature": 0.1, "top_p": 0.001, "top_k": 1, "transformers_version": "4.49.0",
}  # fmt: skip


def test_generation_config_sets_ids_and_defaults(tmp_path: Path) -> None:
    settings = settings_for(folder(tmp_path, QWEN_25_VL_INSTRUCT))
    assert settings.eos_token_ids == (151645, 151643) and settings.pad_token_id == 151643
    assert (settings.do_sample, settings.temperature, settings.top_p, settings.top_k) == (True, 0.1, 0.001, 1)
    assert settings.repetition_penalty == 1.05 and settings.max_new_tokens == 32  # transformers' default length
    # Flags that are not given (None) keep the file's values; given ones win.
    chosen = settings.with_overrides(temperature=None, do_sample=False, max_new_tokens=5)
    assert (chosen.do_sample, chosen.temperature, chosen.max_new_tokens) == (False, 0.1, 5)


def test_ids_fall_back_to_the_model_config_then_the_tokenizer(tmp_path: Path) -> None:
    text_config = SimpleNamespace(eos_token_id=7, pad_token_id=None)
    config = SimpleNamespace(eos_token_id=None, pad_token_id=None, text_config=text_config)
    settings = settings_for(tmp_path, config, SimpleNamespace(eos_token_id=9, pad_token_id=3))
    assert settings.eos_token_ids == (7,) and settings.pad_token_id == 3 and settings.origin == "defaults"
    settings = settings_for(folder(tmp_path, {"eos_token_id": 11}), config, SimpleNamespace(eos_token_id=9))
    assert settings.eos_token_ids == (11,) and settings.pad_token_id == 11  # no pad anywhere: the first eos


def test_max_length_counts_the_prompt_per_row(tmp_path: Path) -> None:
    settings = settings_for(folder(tmp_path, {"max_length": 20, "eos_token_id": 1}))
    assert settings.max_new_tokens is None and [settings.budget(n) for n in (5, 19, 30)] == [15, 1, 0]
    assert settings.with_overrides(max_new_tokens=4).budget(30) == 4
    both = settings_for(folder(tmp_path, {"max_length": 20, "max_new_tokens": 3}))
    assert both.budget(5) == 3  # max_new_tokens wins, as in transformers


@pytest.mark.parametrize(
    "content, words",
    [
        ('{"temperature": -1}', ["temperature", "-1", "generation_config.json"]),
        ('{"top_p": 0}', ["top_p", "generation_config.json"]),
        ('{"max_new_tokens": 0}', ["max_new_tokens"]),
        ('{"temperature": "0.7"}', ["temperature", "'0.7'", "must be float"]),
        ('{"do_sample": 1}', ["do_sample", "must be bool"]),
        ('{"top_k": 2.5}', ["top_k", "must be int"]),
        ("[1, 2]", ["JSON object"]),
        ('{"eos_token_id": ', ["not valid JSON"]),
    ],
)
def test_bad_generation_config_is_a_user_error(tmp_path: Path, content: str, words: list[str]) -> None:
    (tmp_path / "generation_config.json").write_text(content)
    with pytest.raises(UserError) as err:
        settings_for(tmp_path)
    assert all(word in str(err.value) for word in words), str(err.value)


def test_command_line_values_are_checked_too() -> None:
    with pytest.raises(UserError, match="command line: top_k = -2"):
        GenerationSettings().with_overrides(top_k=-2)


@pytest.mark.parametrize(
    "device, config, expected",
    [
        ("cpu", {"torch_dtype": "bfloat16"}, "float32"),
        ("gpu", {"torch_dtype": "bfloat16"}, "bfloat16"),
        ("gpu", {"dtype": "float16"}, "float16"),
        ("gpu", {"text_config": {"dtype": "bfloat16"}}, "bfloat16"),
        ("npu", {"torch_dtype": "auto"}, "float32"),
        ("gpu", {}, "float32"),
    ],
)
def test_load_dtype(tmp_path: Path, device: str, config: dict, expected: str) -> None:
    assert load_dtype(folder(tmp_path, config=config), device) == expected


def test_greedy_and_repetition_penalty() -> None:
    logits = np.array([[2.0, 1.9, -1.0, 0.5], [0.1, -0.2, -0.3, 0.0]], dtype="float32")
    seen = np.zeros_like(logits, dtype=bool)
    rng = np.random.default_rng(0)
    assert next_tokens(logits, seen, GenerationSettings(), rng).tolist() == [0, 0]
    seen[0, 0] = seen[1, 0] = True  # 2.0 / 1.1 = 1.82 < 1.9; 0.1 / 1.1 = 0.091 > 0.0
    assert next_tokens(logits, seen, GenerationSettings(repetition_penalty=1.1), rng).tolist() == [1, 0]
    negative = np.array([[-1.0, -1.2]], dtype="float32")  # a negative logit is multiplied: -1.5 < -1.2
    assert next_tokens(negative, np.array([[True, False]]), GenerationSettings(repetition_penalty=1.5), rng) == [1]


def test_sampling_keeps_top_k_and_the_top_p_nucleus() -> None:
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]] * 400, dtype="float32"))
    seen = np.zeros_like(logits, dtype=bool)
    rng = np.random.default_rng(0)

    def draws(**keys) -> set[int]:
        return set(next_tokens(logits, seen, GenerationSettings(do_sample=True, **keys), rng).tolist())

    assert draws(top_k=0) == {0, 1, 2, 3}
    assert draws(top_k=2) == {0, 1}
    assert draws(top_k=0, top_p=0.7) == {0, 1}  # 0.5 + 0.3 reach 0.7; 0.15 is outside the nucleus
    assert draws(top_k=0, top_p=0.01) == {0}
    assert draws(top_k=0, temperature=0.0) == {0}


def test_left_padding_keeps_each_row_positions() -> None:
    def positions(ids: np.ndarray, grid: np.ndarray | None) -> np.ndarray:
        base = np.arange(len(ids)) * 10  # a rule that is not just arange, so misplacement shows
        return np.stack([base, base + 1, base + 2])

    image = {"pixel_values": np.ones((4, 3), "float32"), "image_grid_thw": np.array([[1, 2, 2]])}
    prompts = [{"input_ids": np.array([5, 6])}, {"input_ids": np.array([7, 8, 9, 10]), **image}]
    batch = left_pad(prompts, pad_token_id=0, positions=positions)
    assert batch.input_ids.tolist() == [[0, 0, 5, 6], [7, 8, 9, 10]]
    assert batch.attention_mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert batch.position_ids[1].tolist() == [[0, 0, 1, 11], [1, 11, 21, 31]]
    assert batch.next_positions.tolist() == [13, 33] and batch.lengths.tolist() == [2, 4]
    assert batch.vision["pixel_values"].shape == (4, 3) and batch.vision["image_grid_thw"].tolist() == [[1, 2, 2]]
