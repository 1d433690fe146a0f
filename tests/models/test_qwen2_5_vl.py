from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from paddlemix.auto import AutoConfigMIX, AutoModelMIX
from paddlemix.models import ADAPTERS, adapter_for
from paddlemix.models.adapter import check_safe_weights
from paddlemix.utils.errors import UserError
from paddlemix.utils.io import load_safetensors, to_numpy


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path):
    return AutoModelMIX.from_pretrained(tiny_model_dir)


def test_export_inverts_loading_exactly(model, tiny_model_dir: Path) -> None:
    """Loading fuses and transposes HF tensors; exporting must give back the checkpoint bit for bit."""
    state = {k: to_numpy(v) for k, v in model.state_dict().items()}
    exported = adapter_for(tiny_model_dir).export_state_dict(state, model.config)
    original = load_safetensors(tiny_model_dir / "model.safetensors")
    assert set(exported) == set(original)
    for name, value in original.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)


def test_config_prepared_for_cpu(tiny_model_dir: Path) -> None:
    config = AutoConfigMIX.from_pretrained(tiny_model_dir, device="cpu")
    assert config.text_config.fuse_rms_norm is False and config.vision_config.fuse_rms_norm is False


def test_module_groups_cover_every_parameter_once(model, tiny_model_dir: Path) -> None:
    from paddlemix.peft.freeze import matches

    groups = adapter_for(tiny_model_dir).module_groups
    for name, _ in model.named_parameters():
        owners = [g for g, patterns in groups.items() if matches(name, patterns)]
        assert len(owners) == 1, (name, owners)


def test_unknown_model_type_lists_supported(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(UserError, match="supported: " + ", ".join(sorted(ADAPTERS))):
        adapter_for(tmp_path)


def test_pickle_weights_refused_unless_allowed(tmp_path: Path) -> None:
    (tmp_path / "model_state.pdparams").write_bytes(b"x")
    with pytest.raises(UserError, match="pickle"):
        check_safe_weights(tmp_path)
    check_safe_weights(tmp_path, allow_pickle=True)


def test_import_inverts_export_and_loads_the_same_model(model, tiny_model_dir: Path, monkeypatch) -> None:
    """The replicated loader used by data-parallel processes gives the same parameters as paddleformers' loader."""
    adapter = adapter_for(tiny_model_dir)
    state = {k: to_numpy(v) for k, v in model.state_dict().items()}
    imported = adapter.import_state_dict(load_safetensors(tiny_model_dir / "model.safetensors"), model.config,
                                         set(state))  # fmt: skip
    assert set(imported) == set(state)
    for name, value in state.items():
        np.testing.assert_array_equal(imported[name], value, err_msg=name)
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "2")
    replicated = AutoModelMIX.from_pretrained(tiny_model_dir)
    for name, value in replicated.state_dict().items():
        np.testing.assert_array_equal(to_numpy(value), state[name], err_msg=name)
