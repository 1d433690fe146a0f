"""The server takes videos (FastAPI test client, the tiny models in process): `video_url` parts (vLLM's shape) and
`video` parts, as local paths under --allowed_local_media_path, data URLs or (when allowed) http(s) URLs, sampled
as infer.py samples them; the rules of images apply (path policy, size limit, SSRF guard); families without video
answer 400."""

from __future__ import annotations

import base64
from argparse import Namespace
from pathlib import Path

import pytest

from paddlemix.datasets.conversation import Message, VideoRef
from paddlemix.inference.generation import question_message
from paddlemix.inference.media import MediaPolicy
from paddlemix.testing.synthetic_video import moving_square, write_clip

pytest.importorskip("fastapi", reason="the server needs the serve extra (fastapi, uvicorn)")
pytest.importorskip("httpx", reason="FastAPI's test client needs httpx")

FLAGS = {"chat_template": None, "device": "cpu", "image_resolution": None, "split_special_tokens": None}
NEW_TOKENS = 4


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    write_clip(folder / "left.mp4", moving_square("left", 30, 64), fps=10)
    write_clip(folder / "right.mkv", moving_square("right", 20, 48, seed=1), fps=8)
    (folder / "junk.mp4").write_bytes(b"not a video" * 100)
    return folder


def load(model_dir: Path, **flags):
    from paddlemix.inference.loading import load_generator

    return load_generator(Namespace(model_name_or_path=str(model_dir), lora_path=None, **{**FLAGS, **flags}))


def client_for(generator, media: Path, **policy):
    from fastapi.testclient import TestClient

    from paddlemix.inference.server import ServerConfig, create_app

    config = ServerConfig(served_model_name="tiny", media=MediaPolicy(media, **policy), max_tokens_limit=64)
    return TestClient(create_app(generator, config))


@pytest.fixture(scope="module")
def qwen(tiny_model_dir: Path):
    return load(tiny_model_dir)


@pytest.fixture(scope="module")
def http(qwen, media: Path):
    with client_for(qwen, media, max_video_bytes=200_000) as client:
        yield client


def data_url(path: Path, kind: str = "video/mp4") -> str:
    return f"data:{kind};base64," + base64.b64encode(path.read_bytes()).decode()


def ask(http, *parts: dict, question: str = "Which way?", role: str = "user"):
    content = [*parts, {"type": "text", "text": question}]
    body = {"model": "tiny", "max_tokens": NEW_TOKENS, "temperature": 0,
            "messages": [{"role": role, "content": content}] + ([{"role": "user", "content": "?"}] * (role != "user"))}  # fmt: skip
    return http.post("/v1/chat/completions", json=body)


def infer_answer(generator, video: Path, question: str = "Which way?") -> tuple[str, int]:
    """infer.py's greedy answer and prompt length for `question` about `video` (its encoding and decoding)."""
    videos = [VideoRef(str(video))]
    prompt = generator.encode([question_message(question, [], videos)], [], videos)
    settings = generator.settings.with_requests(max_new_tokens=NEW_TOKENS).with_overrides(do_sample=False)
    return generator.generate_encoded([prompt], settings).texts[0], len(prompt["input_ids"])


@pytest.mark.parametrize("clip", ["left.mp4", "right.mkv"])
def test_video_parts_are_answered_as_infer_py_answers(http, qwen, media: Path, clip: str) -> None:
    expected, prompt_tokens = infer_answer(qwen, media / clip)
    assert prompt_tokens > 200  # the video's tokens are in the prompt
    kind = "video/mp4" if clip.endswith("mp4") else "video/x-matroska"
    shapes = [
        {"type": "video_url", "video_url": {"url": str(media / clip)}},
        {"type": "video_url", "video_url": f"file://{media / clip}"},
        {"type": "video", "video": data_url(media / clip, kind)},
    ]
    for part in shapes:
        response = ask(http, part)
        assert response.status_code == 200, response.text
        reply = response.json()
        assert reply["usage"]["prompt_tokens"] == prompt_tokens, part["type"]  # the same sampled frames and tokens
        assert reply["choices"][0]["message"]["content"] == expected


def test_video_text_stays_text(http, qwen) -> None:
    response = ask(http, question="What does <video> do in HTML?")
    assert response.status_code == 200, response.text
    text_only = qwen.encode([Message("user", "What does <\ue003video> do in HTML?")])
    assert response.json()["usage"]["prompt_tokens"] == len(text_only["input_ids"])


@pytest.mark.parametrize(
    ("part", "message", "code"),
    [
        ({"type": "video_url", "video_url": {"url": "/etc/hostname"}}, "outside the folder", "invalid_video_url"),
        ({"type": "video_url", "video_url": {"url": "MEDIA/../x.mp4"}}, "outside the folder", "invalid_video_url"),
        ({"type": "video_url", "video_url": {"url": "MEDIA/gone.mp4"}}, "local video file not found", "invalid_video_url"),
        ({"type": "video", "video": "http://169.254.169.254/latest/"}, "video URLs are off", "invalid_video_url"),
        ({"type": "video", "video": "data:image/png;base64,AA=="}, "data:video/<type>;base64", "invalid_video_url"),
        ({"type": "video", "video": "BIG"}, "larger than 200000 bytes", "invalid_video_url"),
        ({"type": "video_url", "video_url": {"url": "MEDIA/junk.mp4"}}, "video cannot be decoded", "invalid_input"),
        ({"type": "video_url", "video_url": {}}, "video_url.url must be a non-empty string", "invalid_video_url"),
    ],
)  # fmt: skip
def test_refused_videos_are_400_with_the_reason(http, media: Path, part: dict, message: str, code: str) -> None:
    def fill(value):
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if value == "BIG":
            return "data:video/mp4;base64," + base64.b64encode(b"\0" * 300_000).decode()
        return value.replace("MEDIA", str(media)) if isinstance(value, str) else value

    response = ask(http, fill(part))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert message in error["message"] and error["code"] == code, error


def test_a_video_in_an_assistant_turn_is_refused(http, media: Path) -> None:
    response = ask(http, {"type": "video_url", "video_url": {"url": str(media / "left.mp4")}}, role="assistant")
    assert response.status_code == 400 and "image_url, video_url or video part" in response.json()["error"]["message"]


def test_remote_videos_follow_the_image_rules(qwen, media: Path) -> None:
    """With remote media allowed, a private address is still refused (the SSRF guard images have)."""
    with client_for(qwen, media, allow_remote_media=True) as http:
        response = ask(http, {"type": "video_url", "video_url": {"url": "http://127.0.0.1:9/clip.mp4"}})
    assert response.status_code == 400
    assert "loopback, link-local, private or reserved" in response.json()["error"]["message"]


@pytest.mark.parametrize("family", ["tiny_llava_dir", "tiny_paddleocr_vl_dir"])
def test_families_without_video_answer_400(request, media: Path, family: str) -> None:
    generator = load(request.getfixturevalue(family))
    with client_for(generator, media) as http:
        for part in ({"type": "video_url", "video_url": {"url": str(media / "left.mp4")}},
                     {"type": "video", "video": "http://example.com/never-fetched.mp4"}):  # fmt: skip
            response = ask(http, part)
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["code"] == "video_not_supported" and "takes no video" in error["message"], error
            assert "take images only" in error["message"]
        assert ask(http, question="hi").status_code == 200  # the server keeps serving


def test_eval_through_the_server_sends_video_records(http, qwen, media: Path, tmp_path: Path) -> None:
    """paddlemix-eval --server_url sends a record's videos as video_url data URLs (the server's answer is the local
    model's); frame lists and videos with their own sampling keys are skips with the reason."""
    import json

    from paddlemix.arguments import DatasetSource
    from paddlemix.datasets.sources import SourceDataset
    from paddlemix.inference.evaluate import openai_messages

    answer = {"role": "assistant", "content": "left"}
    records = [
        {"videos": [str(media / "left.mp4")], "messages": [{"role": "user", "content": "<video>Which way?"}, answer]},
        {"videos": [["f0.png", "f1.png"]], "messages": [{"role": "user", "content": "<video>Which way?"}, answer]},
        {"messages": [{"role": "user", "content": [{"type": "video", "video": str(media / "left.mp4"), "fps": 1},
                                                   {"type": "text", "text": "Which way?"}]}, answer]},
    ]  # fmt: skip
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    data = SourceDataset(DatasetSource(name="chatml_dataset", data_files=[str(tmp_path / "d.jsonl")]))
    sample = data[0]
    question = type(sample)(sample.messages[:1], sample.images, videos=sample.videos)
    messages = openai_messages(question)
    assert messages[0]["content"][0]["video_url"]["url"].startswith("data:video/mp4;base64,")
    body = {"model": "tiny", "max_tokens": NEW_TOKENS, "temperature": 0, "messages": messages}
    reply = http.post("/v1/chat/completions", json=body).json()
    expected, prompt_tokens = infer_answer(qwen, media / "left.mp4")
    assert reply["usage"]["prompt_tokens"] == prompt_tokens and reply["choices"][0]["message"]["content"] == expected
    for index, reason in ((1, "frame list"), (2, "its own video sampling")):
        with pytest.raises(ValueError, match=reason):
            openai_messages(data[index])
