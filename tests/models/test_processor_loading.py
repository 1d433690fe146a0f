"""What loading a family's processor sets beyond the folder's files."""

from __future__ import annotations

from pathlib import Path

import pytest

from paddlemix.auto import AutoProcessorMIX


@pytest.mark.parametrize("folder", ["tiny_model_dir", "tiny_qwen3_vl_dir", "tiny_paddleocr_vl_dir", "tiny_llava_dir"])
def test_long_texts_encode_without_the_tokenizers_model_max_length_warning(
    folder: str, request: pytest.FixtureRequest, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A long clip or document passes the tokenizer's model_max_length; lengths are checked against max_length
    after vision expansion, so the tokenizer's own warning ("Token indices sequence length is longer ...") only
    confused check_data's output."""
    processor = AutoProcessorMIX.from_pretrained(Path(request.getfixturevalue(folder)))
    tokenizer = processor.tokenizer
    capfd.readouterr()
    ids = tokenizer("word " * (tokenizer.model_max_length + 10))["input_ids"]
    assert len(ids) > tokenizer.model_max_length
    out, err = capfd.readouterr()
    assert "Token indices sequence length" not in out + err + caplog.text
