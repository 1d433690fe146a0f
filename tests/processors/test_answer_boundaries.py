"""Training prompts = inference prompts, and the token that ends every trained answer, per template style and
tokenizer the product accepts (issue 19): ChatML (Qwen, and a base checkpoint whose eos is <|endoftext|>),
llava-hf's Vicuna on a Llama LM (no end token of its own, a tokenizer that puts <s> first), Llama 3, ERNIE-style
and PaddleMIX chat_template.json, Qwen3's thinking template (rewrites earlier turns), empty answers."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from paddlemix.datasets.conversation import Message, Sample, SampleError, check_turns
from paddlemix.models import adapter_for
from paddlemix.processors.chat_template import template_for
from paddlemix.processors.sample_processor import IGNORE_INDEX
from paddlemix.processors.template_check import PROBE_CONVERSATION, template_report
from paddlemix.testing.tiny_llava import build_tiny_llava
from paddlemix.testing.tiny_model import build_tiny_qwen2_5_vl
from paddlemix.utils.errors import UserError

# Qwen3's thinking format, written compactly: reasoning is dropped from answers before the last user turn, the
# answers after it carry a <think> block (empty without reasoning); enable_thinking=False writes the empty block
# into the generation prompt.
THINKING = (
    "{% set ns = namespace(last=-1) %}{% for m in messages %}{% if m.role == 'user' %}"
    "{% set ns.last = loop.index0 %}{% endif %}{% endfor %}"
    "{% for m in messages %}{% if m.role == 'assistant' %}{% set content = m.content %}{% set reasoning = '' %}"
    "{% if '</think>' in content %}{% set reasoning = content.split('</think>')[0].split('<think>')[-1].strip() %}"
    "{% set content = content.split('</think>')[-1].lstrip() %}{% endif %}<|im_start|>assistant\n"
    "{% if loop.index0 > ns.last %}<think>\n{{ reasoning }}\n</think>\n\n{% endif %}{{ content }}<|im_end|>\n"
    "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and not enable_thinking %}"
    "<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n"
    "{{ m.content }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
ERNIE = {"system": "", "conversation": ["User: {{user}}\nAssistant: ", "{{bot}}<|end_of_sentence|>"],
         "query": "User: {{query}}\nAssistant: "}  # fmt: skip


@pytest.fixture(scope="module")
def vicuna_llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("vicuna") / "llava", language="llama", vicuna=True)


@pytest.fixture(scope="module")
def base_qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("base") / "qwen", base_layout=True)


def _setup(model_dir: Path, template_path: Path | None = None, keep_empty_think: bool = True):
    adapter = adapter_for(model_dir)
    processor = adapter.load_processor(model_dir)
    template = template_for(processor, template_path, keep_empty_think)
    return processor.tokenizer, adapter.sample_processor(processor, 4096), template


def _labelled_tokens(tokenizer, encoded) -> list[str]:
    """The tokens the labels train (labels are shifted: labels[t] is the target of position t)."""
    return [tokenizer.decode([t]) for t in encoded["labels"].tolist() if t != IGNORE_INDEX]


def test_base_layout_stops_on_the_end_of_turn_token_not_on_its_eos(base_qwen_dir: Path) -> None:
    tokenizer, encoder, template = _setup(base_qwen_dir)
    assert tokenizer.eos_token == "<|endoftext|>"
    assert template.stop_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert template.answer_eos == ""  # the template ends answers itself
    encoded = encoder(Sample((Message("user", "What color?"), Message("assistant", "red")), ()), template)
    assert _labelled_tokens(tokenizer, encoded) == ["red", "<|im_end|>"]


def test_vicuna_llava_trains_bos_first_eos_last_and_the_prompt_is_the_training_prefix(vicuna_llava_dir: Path) -> None:
    tokenizer, encoder, template = _setup(vicuna_llava_dir)
    assert template.stop_token_id == tokenizer.convert_tokens_to_ids("</s>")
    sample = Sample((Message("user", "What color is the circle?"), Message("assistant", "red")), ())
    encoded = encoder(sample, template)
    ids = encoded["input_ids"].tolist()
    assert tokenizer.decode([ids[0]]) == "<s>"  # as HF's processor encodes the rendered text
    assert _labelled_tokens(tokenizer, encoded) == [" red", "</s>"]  # one word, as the whole text tokenizes
    prompt = encoder.encode_prompt(Sample(sample.messages[:1], ()), template)["input_ids"].tolist()
    assert tokenizer.decode(prompt[1:]) == "USER: What color is the circle? ASSISTANT:"
    assert prompt == ids[: len(prompt)] and encoded["labels"][len(prompt) - 1] != IGNORE_INDEX
    assert template_report(encoder, template, "vicuna") is None


@pytest.mark.parametrize(
    ("style", "stop"), [("chatml", "<|im_end|>"), ("llama3", "<|eot_id|>"), ("ernie", "<|end_of_sentence|>")]
)
def test_every_template_style_encodes_training_as_inference(tiny_model_dir: Path, tmp_path: Path, style, stop) -> None:
    path = None
    if style == "llama3":
        path = tmp_path / "llama3.jinja"
        path.write_text(LLAMA3)
    elif style == "ernie":
        path = tmp_path / "chat_template.json"
        path.write_text(json.dumps(ERNIE))
    folder = tmp_path / "model"
    build_tiny_qwen2_5_vl(folder)
    if style != "chatml":  # the template's end token is a control token of this tokenizer
        config = json.loads((folder / "tokenizer_config.json").read_text())
        added = {str(900 + i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                "single_word": False, "special": True}
                 for i, t in enumerate(("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                                        "<|end_of_sentence|>"))}  # fmt: skip
        tokenizer = json.loads((folder / "tokenizer.json").read_text())
        for i, entry in added.items():
            tokenizer["added_tokens"].append({"id": int(i), **entry})
        (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
        config["added_tokens_decoder"].update(added)
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer, encoder, template = _setup(folder, path)
    assert tokenizer.convert_ids_to_tokens(template.stop_token_id) == stop
    assert template_report(encoder, template, style) is None
    encoded = encoder(Sample(PROBE_CONVERSATION, ()), template)
    answers = "".join(_labelled_tokens(tokenizer, encoded)).split(stop)
    assert [a.strip() for a in answers] == ["red", "A blue square.", ""]


def test_answer_boundary_that_tokenizes_otherwise_is_reported_in_one_paragraph(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "glued.json"  # " The" + "red" in training; the whole text " Thered" tokenizes as " There", "d"
    path.write_text(json.dumps({"conversation": ["Q: {{user}} The", "{{bot}}<|im_end|>"]}))
    _, encoder, template = _setup(tiny_model_dir, path)
    report = template_report(encoder, template, "source x")
    assert report is not None and report.startswith("source x: for a probe conversation, the training ids differ")
    assert "\n" not in report and "chat_template" in report


def test_paddlemix_template_without_query_asks_with_the_user_part(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "no_query.json"
    path.write_text(json.dumps({"conversation": ["Q: {{user}}\nA:", " {{bot}}<|im_end|>\n"]}))
    _, encoder, template = _setup(tiny_model_dir, path)
    assert (
        template.prompt(PROBE_CONVERSATION[:3])
        == "Q: What color is the circle?\nA: red<|im_end|>\nQ: And the square?\nA:"
    )
    assert template_report(encoder, template, "no query") is None


class _NoEos:
    """A tokenizer without eos (and bos), otherwise the tiny model's."""

    bos_token = eos_token = None
    all_special_ids: list[int] = []
    added_tokens_decoder: dict = {}

    def __init__(self, real, chat_template: str):
        self.real, self.chat_template = real, chat_template

    def __call__(self, text: str, **kwargs):
        return self.real(text, **kwargs)


def test_template_without_end_token_and_tokenizer_without_eos_fails_before_training(tiny_model_dir: Path) -> None:
    processor = adapter_for(tiny_model_dir).load_processor(tiny_model_dir)
    plain = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}" \
            "assistant:{% endif %}"  # fmt: skip
    fake = SimpleNamespace(tokenizer=_NoEos(processor.tokenizer, plain), chat_template=plain)
    with pytest.raises(UserError, match="no end-of-turn token, and the tokenizer has no eos_token"):
        template_for(fake)


def test_thinking_template_trains_multi_turn_records(tiny_qwen3_vl_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "thinking.jinja"
    path.write_text(THINKING)
    messages = (Message("user", "q1"), Message("assistant", "<think>\nlook\n</think>\n\na1"), Message("user", "q2"),
                Message("assistant", "a2"))  # fmt: skip
    tokenizer, encoder, template = _setup(tiny_qwen3_vl_dir, path)
    labels = [text for text, label in template.segments(messages) if label]
    # the whole conversation as the template renders it: reasoning of the earlier turn dropped
    assert labels == ["a1<|im_end|>", "<think>\n\n</think>\n\na2<|im_end|>"]
    assert "".join(t for t, _ in template.segments(messages)) == template.render(messages, False)
    assert template_report(encoder, template, "thinking", [Sample(messages, ())]) is None

    _, encoder, dropped = _setup(tiny_qwen3_vl_dir, path, keep_empty_think=False)
    assert [text for text, label in dropped.segments(messages) if label] == ["a1<|im_end|>", "a2<|im_end|>"]
    assert dropped.prompt(messages[:3]).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert template_report(encoder, dropped, "thinking", [Sample(messages, ())]) is None


def test_empty_answers_are_not_trained(tiny_model_dir: Path) -> None:
    tokenizer, encoder, template = _setup(tiny_model_dir)
    messages = (Message("user", "q1"), Message("assistant", " "), Message("user", "q2"), Message("assistant", "a2"))
    assert _labelled_tokens(tokenizer, encoder(Sample(messages, ()), template)) == ["a", "2", "<|im_end|>"]
    with pytest.raises(SampleError, match="every answer is empty"):
        check_turns([Message("user", "q1"), Message("assistant", "")])
