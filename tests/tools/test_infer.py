"""Command-line decoding flags of infer.py: unset flags keep generation_config.json's values."""

from __future__ import annotations

import pytest

from paddlemix.inference.decoding import GenerationSettings
from paddlemix.tools.infer import overrides, parse, shown_answer, speed_line

BASE = ["--model_name_or_path", "m", "--question", "q"]


@pytest.mark.parametrize(
    "flags, expected",
    [
        ([], {}),
        (["--temperature", "0.7"], {"temperature": 0.7, "do_sample": True}),  # as before: a temperature samples
        (["--temperature", "0"], {"temperature": 0.0, "do_sample": False}),
        (["--do_sample", "false", "--temperature", "0.5"], {"temperature": 0.5, "do_sample": False}),
        (["--max_new_tokens", "4", "--top_k", "0", "--top_p", "0.9"], {"max_new_tokens": 4, "top_k": 0, "top_p": 0.9}),
    ],
)
def test_only_given_flags_override(flags: list[str], expected: dict) -> None:
    base = GenerationSettings(max_new_tokens=None, max_length=99, do_sample=True, temperature=0.3, top_k=7)
    chosen = base.with_requests(**overrides(parse(BASE + flags)))
    untouched = {"max_new_tokens": None, "do_sample": True, "temperature": 0.3, "top_p": 1.0, "top_k": 7}
    assert {k: getattr(chosen, k) for k in untouched} == {**untouched, **expected}


def test_empty_answer_is_never_a_blank_line() -> None:
    assert shown_answer("red") == "red"
    assert shown_answer("").startswith('answer: ""  (') and "more training" in shown_answer("")


def test_speed_line_says_token_for_one() -> None:
    assert speed_line(1, 1.0, 0.1).startswith("generated 1 token in ")
    assert speed_line(2, 1.0, 0.1).startswith("generated 2 tokens in ")


def test_question_past_the_model_positions_is_one_paragraph(tiny_model_dir, tmp_path, run_tool) -> None:
    proc = run_tool("infer.py", "--model_name_or_path", str(tiny_model_dir), "--question", "red " * 5000,
                    cwd=tmp_path, check=False)  # fmt: skip
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "the prompt of --question is too long to answer: 5020 tokens after image expansion exceed max_length " \
           "4096 (the model's max_position_embeddings)" in proc.stdout + proc.stderr  # fmt: skip
    assert "Pass an image that opens" not in proc.stdout + proc.stderr  # the former, false hint
