from __future__ import annotations

import pytest

from paddlemix.generation import bleu4, normalize


def test_normalize_for_exact_match() -> None:
    assert normalize("  Red. ") == "red" and normalize("a blue square!") == "a blue square"


def test_bleu4_bounds_and_order() -> None:
    assert bleu4("a red circle on a dark background", "a red circle on a dark background") == pytest.approx(1.0)
    close = bleu4("a red circle on a grey background", "a red circle on a dark background")
    far = bleu4("a blue square", "a red circle on a dark background")
    assert 0 < far < close < 1
    assert bleu4("", "a red circle") == 0.0
