from __future__ import annotations

import json
from pathlib import Path

import pytest

from paddlemix.datasets.conversation import Message, SampleError
from paddlemix.processors.chat_template import (
    JinjaChatTemplate,
    PaddleMixChatTemplate,
    load_chat_template,
)
from paddlemix.utils.errors import UserError

CHATML = (
    "{% for m in messages %}{% if loop.first and m.role != 'system' %}<|im_start|>system\nSYS<|im_end|>\n{% endif %}"
    "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TWO_TURNS = (
    Message("user", "q1"),
    Message("assistant", "a1"),
    Message("user", "q2"),
    Message("assistant", "a2"),
)


def test_jinja_segments_label_only_answers() -> None:
    segments = JinjaChatTemplate(CHATML).segments(TWO_TURNS)
    assert "".join(text for text, _ in segments) == JinjaChatTemplate(CHATML).render(TWO_TURNS, False)
    assert [text for text, label in segments if label] == ["a1<|im_end|>", "a2<|im_end|>"]
    assert segments[0] == (
        "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nq1<|im_end|>\n<|im_start|>assistant\n",
        False,
    )


def test_jinja_prompt_ends_with_generation_prompt() -> None:
    prompt = JinjaChatTemplate(CHATML).prompt(TWO_TURNS[:3])
    assert prompt.endswith("<|im_start|>user\nq2<|im_end|>\n<|im_start|>assistant\n")


def test_template_that_rewrites_history_is_rejected() -> None:
    unstable = "{% for m in messages %}{{ m.content }}{% if loop.last %}!{% endif %}{% endfor %}"
    with pytest.raises(SampleError, match="growing prefixes"):
        JinjaChatTemplate(unstable).segments(TWO_TURNS)


def test_sandbox_blocks_attribute_access() -> None:
    evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(SampleError):
        JinjaChatTemplate(evil).render(TWO_TURNS, False)


def test_paddlemix_template_rounds() -> None:
    spec = {
        "system": "S.",
        "conversation": ["[{{index}}]Q:{{user}}A:", "{{bot}}\n"],
        "query": "[{{index}}]Q:{{query}}A:",
    }
    template = PaddleMixChatTemplate(spec)
    segments = template.segments(TWO_TURNS)
    assert segments == [
        ("S.", False),
        ("[0]Q:q1A:", False),
        ("a1", True),
        ("\n", False),
        ("[1]Q:q2A:", False),
        ("a2", True),
        ("\n", False),
    ]
    assert template.prompt(TWO_TURNS[:3]) == "S.[0]Q:q1A:a1\n[1]Q:q2A:"


def test_load_missing_path_is_an_error_not_template_text(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_chat_template(str(tmp_path / "nope.json"), CHATML, {})


def test_load_json_kinds(tmp_path: Path) -> None:
    paddlemix_json = tmp_path / "chat_template.json"
    paddlemix_json.write_text(json.dumps({"conversation": ["{{user}}", "{{bot}}"]}))
    assert isinstance(load_chat_template(paddlemix_json, None, {}), PaddleMixChatTemplate)
    hf_json = tmp_path / "hf.json"
    hf_json.write_text(json.dumps({"chat_template": CHATML}))
    assert isinstance(load_chat_template(hf_json, None, {}), JinjaChatTemplate)
    jinja = tmp_path / "t.jinja"
    jinja.write_text(CHATML)
    assert load_chat_template(jinja, None, {}).prompt(TWO_TURNS[:1]).endswith("assistant\n")
    with pytest.raises(UserError, match="no chat template"):
        load_chat_template(None, None, {})


def test_answers_with_loss_false_are_context_in_both_template_kinds() -> None:
    turns = (TWO_TURNS[0], Message("assistant", "a1", loss=False), *TWO_TURNS[2:])
    spec = {"system": "", "conversation": ["Q:{{user}}A:", "{{bot}}\n"]}
    for template in (JinjaChatTemplate(CHATML), PaddleMixChatTemplate(spec)):
        segments = template.segments(turns)
        assert [text.rstrip("\n") for text, label in segments if label] in (["a2<|im_end|>"], ["a2"])
        assert any("a1" in text and not label for text, label in segments)
