from __future__ import annotations

from pathlib import Path

import pytest
from family_checks import FamilyChecks

from paddlemix.models import ADAPTERS, adapter_for
from paddlemix.models.adapter import check_safe_weights
from paddlemix.utils.errors import UserError


class TestQwen2_5_VL(FamilyChecks):
    @pytest.fixture(scope="class")
    def model_dir(self, tiny_model_dir: Path) -> Path:
        return tiny_model_dir


def test_unknown_model_type_lists_supported(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(UserError, match="supported: " + ", ".join(sorted(ADAPTERS))):
        adapter_for(tmp_path)


def test_pickle_weights_refused_unless_allowed(tmp_path: Path) -> None:
    (tmp_path / "model_state.pdparams").write_bytes(b"x")
    with pytest.raises(UserError, match="pickle"):
        check_safe_weights(tmp_path)
    check_safe_weights(tmp_path, allow_pickle=True)
