from __future__ import annotations

import json
from pathlib import Path

import pytest

from paddlemix.datasets.conversation import Message, SampleError
from paddlemix.processors.chat_template import (
    JinjaChatTemplate,
    PaddleMixChatTemplate,
    load_chat_template,
    paddlemix_to_jinja,
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


# --- PaddleMIX chat_template.json as a Hugging Face Jinja template ---------------------------------------------

SPECS = {
    "qwen": {
        "system": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
        "conversation": ["<|im_start|>user\n{{user}}<|im_end|>\n<|im_start|>assistant\n", "{{bot}}<|im_end|>\n"],
        "query": "<|im_start|>user\n{{query}}<|im_end|>\n<|im_start|>assistant\n",
    },
    # system text from the record, round numbers, parts that open with a newline and carry their own block tags
    "rounds": {
        "system": "{% if system %}SYSTEM: {{system}}\n{% endif %}",
        "conversation": [
            "\n[Round {{index + 1}}]\n  {% if index == 0 %}First: {% endif %}{{user}}\nA:",
            "{# the answer #}\n  {{bot}}\n",
        ],
        "query": "\n[Round {{index + 1}}]\n{{query}}\nA:",
    },
}
CONVERSATIONS = {
    "one turn": (Message("user", "<IMG>What color?"), Message("assistant", "red")),
    "two turns + system": (Message("system", "Be brief."), Message("system", "Answer in English."), *TWO_TURNS),
    "images in two turns": (Message("user", "<IMG>a<IMG>b"), Message("assistant", "x"), Message("user", "<IMG>c"),
                            Message("assistant", "y")),
}  # fmt: skip


def paddlemix_render(template: PaddleMixChatTemplate, messages) -> str:
    return "".join(text for text, _ in template.segments(messages))


@pytest.mark.parametrize("spec", sorted(SPECS))
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
def test_converted_paddlemix_template_renders_the_same(spec: str, conversation: str) -> None:
    ours, messages = PaddleMixChatTemplate(SPECS[spec]), CONVERSATIONS[conversation]
    jinja = JinjaChatTemplate(paddlemix_to_jinja(SPECS[spec], "<IMG>"))
    assert jinja.render(messages, add_generation_prompt=False) == paddlemix_render(ours, messages)
    last_user = max(i for i, m in enumerate(messages) if m.role == "user")
    assert jinja.prompt(messages[: last_user + 1]) == ours.prompt(messages[: last_user + 1])
    # labels of the converted template cover the same answers
    labels = [text for text, label in jinja.segments(messages) if label]
    assert labels == [text for text, label in ours.segments(messages) if label]


def test_converted_template_takes_typed_content_and_rejects_broken_turns() -> None:
    jinja = JinjaChatTemplate(paddlemix_to_jinja(SPECS["qwen"], "<IMG>"))
    typed = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color?"}]}]
    as_string = [{"role": "user", "content": "<IMG>What color?"}]
    assert jinja._render_turns(typed, True) == jinja._render_turns(as_string, True)
    assert "<IMG>What color?<|im_end|>\n<|im_start|>assistant\n" in jinja._render_turns(typed, True)
    with pytest.raises(SampleError, match="alternate"):
        jinja.render((Message("user", "a"), Message("user", "b")), False)


# --- templates written for Hugging Face processors -------------------------------------------------------------

# llava-hf LLaVA-1.5 style: content must be a list of typed parts, images are written before their text.
TYPED_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() }}: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '<image>\\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{% if message['role'] == 'assistant' %}</s>{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT: {% endif %}"
)
# SmolVLM style: typed content and the assistant's part inside {% generation %} ... {% endgeneration %}.
GENERATION_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}Assistant: {% generation %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "<end_of_utterance>{% endgeneration %}\n"
    "{% else %}{{ message['role'] | capitalize }}:{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% else %} {{ part['text'] }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
IMAGE_CHAT = (Message("user", "<image>What color?"), Message("assistant", "red"), Message("user", "And now?"),
              Message("assistant", "blue"))  # fmt: skip


def test_typed_content_template_renders_and_masks_per_turn() -> None:
    template = JinjaChatTemplate(TYPED_TEMPLATE)
    assert template.typed_content and template.image_text == "<image>\n"
    assert template.render(IMAGE_CHAT, False) == "USER: <image>\nWhat color?\nASSISTANT: red</s>\nUSER: And now?\n" \
        "ASSISTANT: blue</s>\n"  # fmt: skip
    # the generation prompt "ASSISTANT: " is the training text before each answer
    assert [text for text, label in template.segments(IMAGE_CHAT) if label] == ["red</s>", "blue</s>"]
    assert template.prompt(IMAGE_CHAT[:1]) == "USER: <image>\nWhat color?\nASSISTANT: "


def test_generation_tag_spans_are_the_labels() -> None:
    template = JinjaChatTemplate(GENERATION_TEMPLATE)
    # trim_blocks (as transformers renders) drops the newline right after {% endgeneration %}
    assert template.segments(IMAGE_CHAT) == [
        # the generation prompt ends at "Assistant:", so the space starts the answer
        ("User:<image> What color?<end_of_utterance>\nAssistant:", False),
        (" red<end_of_utterance>", True),
        ("User: And now?<end_of_utterance>\nAssistant:", False),
        (" blue<end_of_utterance>", True),
    ]
    assert template.prompt(IMAGE_CHAT[:3]).endswith("User: And now?<end_of_utterance>\nAssistant:")
    assert "\ue000" not in template.render(IMAGE_CHAT, False)


def test_template_that_shows_string_content_keeps_strings() -> None:
    from paddlemix.testing.tiny_model import CHAT_TEMPLATE  # Qwen2.5-VL's: strings and typed parts both work

    template = JinjaChatTemplate(CHAT_TEMPLATE)
    assert not template.typed_content
    assert template.render(TWO_TURNS[:2], False).endswith(
        "<|im_start|>user\nq1<|im_end|>\n<|im_start|>assistant\na1<|im_end|>\n"
    )


def test_answers_with_loss_false_are_context_in_both_template_kinds() -> None:
    turns = (TWO_TURNS[0], Message("assistant", "a1", loss=False), *TWO_TURNS[2:])
    spec = {"system": "", "conversation": ["Q:{{user}}A:", "{{bot}}\n"]}
    for template in (JinjaChatTemplate(CHATML), PaddleMixChatTemplate(spec)):
        segments = template.segments(turns)
        assert [text.rstrip("\n") for text, label in segments if label] in (["a2<|im_end|>"], ["a2"])
        assert any("a1" in text and not label for text, label in segments)
