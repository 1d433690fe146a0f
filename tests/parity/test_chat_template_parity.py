"""A folder carrying our trained chat template, read by transformers 4.57.1: its processor and tokenizer render the
same prompt string as our training template, and its assistant mask covers the text our labels cover.

Templates: PaddleMIX's chat_template.json converted to Jinja, a llava-hf style typed-content template and a
SmolVLM-style template with `{% generation %}` (both written here in those styles).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from hf_parity import REF_PYTHON, requires_reference

from paddlemix.datasets.conversation import Message
from paddlemix.processors.chat_template import JinjaChatTemplate, PaddleMixChatTemplate, paddlemix_to_jinja
from paddlemix.processors.template_files import write_chat_template

HERE = Path(__file__).parent
QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
PADDLEMIX_SPEC = {
    "system": "{% if system %}<|im_start|>system\n{{system}}<|im_end|>\n{% endif %}",
    "conversation": ["<|im_start|>user\n{{user}}<|im_end|>\n<|im_start|>assistant\n", "{{bot}}<|im_end|>\n"],
    "query": "<|im_start|>user\n{{query}}<|im_end|>\n<|im_start|>assistant\n",
}
TYPED_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() }}: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '<image>\\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{% if message['role'] == 'assistant' %}</s>{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT: {% endif %}"
)
GENERATION_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}Assistant:\n{% generation %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "<|im_end|>{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{ message['role'] | capitalize }}:{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% else %} {{ part['text'] }}{% endif %}{% endfor %}"
    "<|im_end|>{{ '\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Assistant:\n{% endif %}"
)


def hf_messages(image_text: str, messages: tuple[Message, ...]) -> list[dict]:
    """Our messages as HF typed messages: `image_text` in the content becomes an image part."""
    out = []
    for m in messages:
        pieces = m.content.split(image_text)
        parts = [{"type": "image"}] * (len(pieces) - 1) + [{"type": "text", "text": "".join(pieces)}]
        out.append({"role": m.role, "content": parts})
    return out


def conversation(image_text: str) -> tuple[Message, ...]:
    return (Message("system", "Be brief."), Message("user", image_text + "What color is the circle?"),
            Message("assistant", "red"), Message("user", "And the square?"), Message("assistant", "blue"))  # fmt: skip


def labelled(segments) -> str:
    return "".join(text for text, label in segments if label)


@requires_reference
def test_transformers_renders_the_trained_template(tiny_model_dir: Path, tmp_path: Path) -> None:
    converted = paddlemix_to_jinja(PADDLEMIX_SPEC, QWEN_IMAGE)
    ours = {
        "paddlemix": (PaddleMixChatTemplate(PADDLEMIX_SPEC), converted, QWEN_IMAGE),
        "typed": (JinjaChatTemplate(TYPED_TEMPLATE), TYPED_TEMPLATE, "<image>"),
        "generation": (JinjaChatTemplate(GENERATION_TEMPLATE), GENERATION_TEMPLATE, "<image>"),
    }
    cases, expected = [], []
    for name, (template, jinja, image_text) in ours.items():
        folder = tmp_path / name
        shutil.copytree(tiny_model_dir, folder, ignore=shutil.ignore_patterns("*.safetensors"))
        write_chat_template(folder, jinja)
        messages = conversation(image_text)
        # string content with the image text in it, as the training renders, for both typed and string callers
        full, prompt = "".join(t for t, _ in template.segments(messages)), template.prompt(messages[:4])
        for hf, add in ((hf_messages(image_text, messages), False), (hf_messages(image_text, messages[:4]), True)):
            cases.append({"folder": str(folder), "messages": hf, "add_generation_prompt": add, "mask": not add})
            expected.append((name, prompt if add else full, labelled(template.segments(messages))))
    request, out = tmp_path / "request.json", tmp_path / "out.json"
    request.write_text(json.dumps(cases))
    proc = subprocess.run([REF_PYTHON, str(HERE / "hf_chat_template.py"), str(request), str(out)],
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    for (name, text, labels), result, case in zip(expected, json.loads(out.read_text()), cases):
        assert result["processor"] == text, name
        assert result["tokenizer"] == text, name
        if case["mask"] and name != "typed":  # the typed template has no {% generation %} block
            # token boundaries may add whitespace at span edges; the spans' text must be the same
            assert "".join(result["assistant_text"].split()) == "".join(labels.split()), name
            assert "red" in labels and "blue" in labels
