from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from paddlemix.datasets.conversation import Message, TooLongError
from paddlemix.inference.generation import Generator, evaluate_exact_match
from paddlemix.inference.metrics import ocr_scores
from paddlemix.models import adapter_for

# ---- decoding through the real models (tiny folders from tests/conftest.py) ----

FAMILIES = {"qwen2_5_vl": "tiny_model_dir", "qwen3_vl": "tiny_qwen3_vl_dir", "llava": "tiny_llava_dir",
            "paddleocr_vl": "tiny_paddleocr_vl_dir"}  # fmt: skip
VISION_ENTRY = {
    "qwen2_5_vl": "model.visual",
    "qwen3_vl": "model.visual",
    "llava": "model.vision_tower.vision_model.embeddings",
    "paddleocr_vl": "visual.vision_model.embeddings",
}
NEW_TOKENS = 12


def family_dir(request, family: str) -> Path:
    return request.getfixturevalue(FAMILIES[family])


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    """Two images of different sizes (so different numbers of visual tokens for the Qwen families)."""
    folder = tmp_path_factory.mktemp("gen_images")
    paths = [folder / "red.png", folder / "blue.png"]
    Image.new("RGB", (60, 40), (200, 30, 30)).save(paths[0])
    Image.new("RGB", (90, 130), (20, 40, 220)).save(paths[1])
    return [str(p) for p in paths]


def conversations(images: list[str]) -> list[tuple[list[Message], list[str]]]:
    """Prompts of different lengths: short with an image, long with another image, text only."""
    return [
        ([Message("user", "<image>What color?")], images[:1]),
        ([Message("user", "<image>Describe the shape in the picture and say where it is, please.")], images[1:]),
        ([Message("user", "Is there a red circle?")], []),
    ]


def loaded(model_dir: Path) -> Generator:
    """The tiny builders' N(0, 0.02) weights already give varied greedy tokens (asserted where it matters)."""
    return Generator.from_pretrained(model_dir)


def count_calls(generator: Generator, family: str) -> list[int]:
    """A list that grows by one per forward call of the family's vision tower (its first layer)."""
    layer = dict(generator.model.named_sublayers())[VISION_ENTRY[family]]
    calls: list[int] = []
    layer.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("family", list(FAMILIES))
def test_cached_decoding_equals_full_recompute_and_runs_the_vision_tower_once(request, family, images) -> None:
    generator = loaded(family_dir(request, family))
    calls = count_calls(generator, family)
    settings = generator.settings.with_overrides(max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_ids=())
    prompt = generator.encode(*conversations(images)[1])
    cached = generator.generate_encoded([prompt], settings).generated.tokens[0]
    assert len(calls) == 1
    recomputed = generator.generate_encoded([prompt], settings, use_cache=False).generated.tokens[0]
    assert len(calls) == 1 + NEW_TOKENS  # the baseline really re-runs the tower each step
    assert cached == recomputed
    assert len(cached) == NEW_TOKENS and len(set(cached)) >= 4, cached  # not a degenerate repetition


@pytest.mark.parametrize("family", list(FAMILIES))
def test_batched_answers_equal_one_at_a_time(request, family, images) -> None:
    generator = loaded(family_dir(request, family))
    calls = count_calls(generator, family)
    settings = generator.settings.with_overrides(max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_ids=())
    prompts = [generator.encode(m, i) for m, i in conversations(images)]
    assert len({len(p["input_ids"]) for p in prompts}) == 3
    batched = generator.generate_encoded(prompts, settings).generated.tokens
    assert len(calls) == 1  # both images of the batch in one vision pass
    alone = [generator.generate_encoded([p], settings).generated.tokens[0] for p in prompts]
    assert batched == alone
    assert len({tuple(t) for t in alone}) == 3  # the rows really differ


@pytest.mark.parametrize("family", list(FAMILIES))
def test_generation_config_eos_stops_generation(request, family, images, tmp_path: Path) -> None:
    source = family_dir(request, family)
    free_run = loaded(source)
    settings = free_run.settings.with_overrides(max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_ids=())
    tokens = free_run.generate_encoded([free_run.encode(*conversations(images)[0])], settings).generated.tokens[0]
    stop = next(k for k, t in enumerate(tokens) if k >= 2 and t not in tokens[:k])  # a token it emits early
    copy = tmp_path / "model"
    copy.mkdir()
    for file in source.iterdir():
        if file.name != "generation_config.json":
            (copy / file.name).symlink_to(file)
    saved = json.loads((source / "generation_config.json").read_text())
    (copy / "generation_config.json").write_text(json.dumps({**saved, "eos_token_id": [tokens[stop], 1]}))
    generator = loaded(copy)
    # the file's ids, then the token that ends every answer of the chat template
    assert generator.settings.eos_token_ids == (tokens[stop], 1, generator.template.stop_token_id)
    stop = next(k for k, t in enumerate(tokens) if t in generator.settings.eos_token_ids)
    answer = generator.generate_encoded([generator.encode(*conversations(images)[0])])
    assert answer.generated.tokens[0] == tokens[: stop + 1]
    assert answer.texts[0] == generator.tokenizer.decode(tokens[:stop], skip_special_tokens=True).strip()


def chat(image: str, question: str, answer: str = "red") -> str:
    return json.dumps({"images": [image], "messages": [{"role": "user", "content": question},
                                                       {"role": "assistant", "content": answer}]})  # fmt: skip


def test_evaluation_batches_and_skips_failing_records(tiny_model_dir: Path, images, tmp_path: Path) -> None:
    """Records that cannot be read, encoded or generated are skipped with a reason and left out of the score;
    batched answers equal one-at-a-time answers."""
    red, blue = images
    lines = [chat(red, "<image>What color?"), chat("missing.png", "<image>What color?"),
             chat(blue, "<image>What shape is it?", "square"), '{"messages": [broken',
             chat(red, "<image>" + "word " * 40), chat(blue, "<image>Which color, and which shape, is it?"),
             chat(red, "What is this?")]  # fmt: skip
    data = tmp_path / "eval.jsonl"
    data.write_text("\n".join(lines) + "\n")
    generator = loaded(tiny_model_dir)
    generator.encoder.max_length = 100  # the 40-word record is longer
    poisoned = len(
        generator.encode([Message("user", "<image>Which color, and which shape, is it?")], [blue])["input_ids"]
    )
    real = generator.generate_encoded

    def failing(prompts, *args, **kwargs):
        if any(len(p["input_ids"]) == poisoned for p in prompts):
            raise RuntimeError("decode failed")
        return real(prompts, *args, **kwargs)

    generator.generate_encoded = failing
    batched = evaluate_exact_match(generator, [str(data)], batch_size=3, max_new_tokens=6)
    reasons = {r["index"]: r["reason"] for r in batched["skipped_records"]}
    assert sorted(reasons) == [1, 3, 4, 5] and batched["skipped"] == 4
    assert "image not found" in reasons[1] and "malformed JSON" in reasons[3]
    assert "exceed max_length 100" in reasons[4] and "decode failed" in reasons[5]
    assert [r["index"] for r in batched["results"]] == [0, 2, 6] and batched["total"] == 3
    predictions = [(r["prediction"], r["reference"]) for r in batched["results"]]
    assert batched["cer"] == pytest.approx(ocr_scores(*zip(*predictions))["cer"]) if predictions else True
    assert all(0 <= r["edit_distance"] <= 1 for r in batched["results"]) and 0 <= batched["edit_distance"] <= 1
    single = evaluate_exact_match(generator, [str(data)], batch_size=1, max_new_tokens=6)
    assert [r["prediction"] for r in single["results"]] == [r["prediction"] for r in batched["results"]]
    assert batched["new_tokens"] == single["new_tokens"] and 3 <= batched["new_tokens"] <= 18  # each run counted once


def test_prompts_past_the_model_positions_are_too_long(tiny_model_dir: Path, images) -> None:
    adapter = adapter_for(tiny_model_dir)
    model = adapter.load_model(tiny_model_dir)
    model.config.max_position_embeddings = 24
    generator = Generator.from_parts(model, adapter.load_processor(tiny_model_dir), adapter, max_length=1000)
    with pytest.raises(TooLongError, match="exceed max_length 24"):
        generator.encode(*conversations(images)[1])


def test_adapter_of_another_model_type_stops_before_loading(
    tiny_model_dir: Path, tiny_llava_dir: Path, tmp_path: Path
) -> None:
    from paddlemix.models import ADAPTERS
    from paddlemix.testing.peft_adapter import write_peft_adapter
    from paddlemix.utils.errors import UserError

    write_peft_adapter(tmp_path / "run", tiny_model_dir, ADAPTERS["qwen2_5_vl"].parameter_name, ("q_proj",))
    with pytest.raises(UserError, match="model_type 'qwen2_5_vl' vs 'llava'"):
        Generator.from_pretrained(str(tiny_llava_dir), str(tmp_path / "run"), None, "cpu")


def test_prompt_that_leaves_no_room_under_max_length_is_an_error(tiny_model_dir: Path, images) -> None:
    generator = loaded(tiny_model_dir)
    prompt = generator.encode(*conversations(images)[0])
    settings = generator.settings.with_overrides(max_length=len(prompt["input_ids"]))
    from paddlemix.utils.errors import UserError

    # transformers raises here too; before, the answer was "" with a hint that the model "ended at once"
    with pytest.raises(UserError, match=r"max_length = \d+ counts the prompt too.*Set max_new_tokens"):
        generator.generate_encoded([prompt], settings)
    room = settings.with_overrides(max_length=len(prompt["input_ids"]) + 2)
    assert len(generator.generate_encoded([prompt], room).generated.tokens[0]) <= 2


def test_python_api_with_lora_path_prompts_with_the_trained_template(tiny_model_dir: Path, tmp_path: Path) -> None:
    from paddlemix.models import ADAPTERS
    from paddlemix.processors.chat_template import JinjaChatTemplate
    from paddlemix.processors.template_files import write_chat_template
    from paddlemix.testing.peft_adapter import write_peft_adapter

    trained = "{% for m in messages %}{{ m.role }}: {{ m.content }}<|im_end|>\n{% endfor %}" \
              "{% if add_generation_prompt %}assistant:{% endif %}"  # fmt: skip
    write_peft_adapter(tmp_path / "run", tiny_model_dir, ADAPTERS["qwen2_5_vl"].parameter_name, ("q_proj",))
    write_chat_template(tmp_path / "run", trained)
    generator = Generator.from_pretrained(str(tiny_model_dir), str(tmp_path / "run"), None, "cpu")
    question = [Message("user", "What color?")]
    assert generator.template.prompt(question) == JinjaChatTemplate(trained).prompt(question) == \
        "user: What color?<|im_end|>\nassistant:"  # fmt: skip
