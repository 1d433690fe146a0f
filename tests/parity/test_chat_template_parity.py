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

from paddlemix.datasets.conversation import Message, Sample
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


TEXT_CHAT = (Message("user", "What color is the circle?"), Message("assistant", "red"),
             Message("user", "And the square?"), Message("assistant", "A blue square."))  # fmt: skip


@requires_reference
def test_training_ids_equal_transformers_ids_for_each_family_own_template(
    request, tmp_path: Path, tiny_model_dir: Path, tiny_qwen2_vl_dir: Path, tiny_qwen3_vl_dir: Path,
    tiny_llava_dir: Path,
) -> None:  # fmt: skip
    """Each family's own template: our training ids of a whole conversation and our prompt ids equal what
    transformers' processor `apply_chat_template(..., tokenize=True)` gives (BOS included as it adds it). llava-hf's
    Vicuna template ends answers with no token, so training appends </s> there: its prompts are compared."""
    from paddlemix.models import adapter_for
    from paddlemix.processors.chat_template import template_for
    from paddlemix.testing.tiny_llava import build_tiny_llava

    vicuna = build_tiny_llava(tmp_path / "vicuna", language="llama", vicuna=True)
    folders = {"qwen2_5_vl": tiny_model_dir, "qwen2_vl": tiny_qwen2_vl_dir, "qwen3_vl": tiny_qwen3_vl_dir,
               "llava": tiny_llava_dir, "llava_vicuna": vicuna}  # fmt: skip
    cases, ours = [], []
    for name, folder in folders.items():
        adapter = adapter_for(folder)
        processor = adapter.load_processor(folder)
        template, encoder = template_for(processor), adapter.sample_processor(processor, 4096)
        # HF messages as the template reads them: typed parts, or strings for a template that shows strings
        typed = hf_messages("<image>", TEXT_CHAT) if template.typed_content else [
            {"role": m.role, "content": m.content} for m in TEXT_CHAT
        ]  # fmt: skip
        full = encoder(Sample(TEXT_CHAT, ()), template)["input_ids"].tolist()
        prompt = encoder.encode_prompt(Sample(TEXT_CHAT[:1], ()), template)["input_ids"].tolist()
        if name != "llava_vicuna":
            cases.append({"folder": str(folder), "messages": typed, "add_generation_prompt": False, "mask": False,
                          "ids": True})  # fmt: skip
            ours.append((name, "training", full))
        cases.append({"folder": str(folder), "messages": typed[:1], "add_generation_prompt": True, "mask": False,
                      "ids": True})  # fmt: skip
        ours.append((name, "prompt", prompt))
    request_file, out = tmp_path / "request.json", tmp_path / "out.json"
    request_file.write_text(json.dumps(cases))
    proc = subprocess.run([REF_PYTHON, str(HERE / "hf_chat_template.py"), str(request_file), str(out)],
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    for (name, kind, ids), result in zip(ours, json.loads(out.read_text())):
        assert ids == result["ids"], (name, kind)
