"""The server over loopback with the official `openai` client: same answers as tools/infer.py (streamed or not),
concurrent requests batched, every bad input a 4xx JSON error while the server keeps serving."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from paddlemix.testing.server import health, running_server
from paddlemix.testing.wild_images import huge_png_header

openai = pytest.importorskip("openai", reason="the openai client is in the test extra")
httpx = pytest.importorskip("httpx", reason="httpx comes with the openai client")
pytest.importorskip("fastapi", reason="the server needs the serve extra (fastapi, uvicorn)")

REPO = Path(__file__).resolve().parents[2]
KEY = "test-key"
NEW_TOKENS = 10
COLOURS = [(200, 30, 30), (20, 40, 220), (30, 180, 40), (240, 220, 30), (0, 0, 0), (250, 250, 250), (128, 0, 128),
           (0, 128, 128)]  # fmt: skip
QUESTIONS = ["What color?", "Which shape is it?", "Describe the picture.", "Is it round?"]


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    for i, colour in enumerate(COLOURS):
        Image.new("RGB", (40 + 8 * i, 56 - 2 * i), colour).save(folder / f"img{i}.png")
    return folder


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, media: Path, tmp_path_factory) -> str:
    log = tmp_path_factory.mktemp("server_log") / "serve.log"
    args = ["--model_name_or_path", str(tiny_model_dir), "--served_model_name", "tiny", "--api_key", KEY,
            "--allowed_local_media_path", str(media), "--allow_remote_media", "--max_tokens_limit", "256",
            "--max_body_bytes", str(8 * 1024 * 1024), "--max_image_pixels", str(4096 * 4096)]  # fmt: skip
    with running_server(*args, log=log) as base_url:
        yield base_url


def client(base_url: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0, timeout=300)


def data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def image_question(url: str, question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": question}]}]  # fmt: skip


def ask(base_url: str, messages: list[dict], **extra) -> openai.types.chat.ChatCompletion:
    return client(base_url).chat.completions.create(model="tiny", messages=messages, max_tokens=NEW_TOKENS,
                                                    temperature=0, **extra)  # fmt: skip


def infer_answer(model_dir: Path, image: Path, question: str, *extra: str) -> str:
    """tools/infer.py's greedy answer (stdout: the speed line, then the answer)."""
    proc = subprocess.run([sys.executable, str(REPO / "paddlemix/tools/infer.py"), "--model_name_or_path",
                           str(model_dir), "--image", str(image), "--question", question, "--max_new_tokens",
                           str(NEW_TOKENS), "--do_sample", "false", *extra], capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.split("\n", 1)[1].removesuffix("\n")


def test_models_lists_the_served_name(server) -> None:
    models = client(server).models.list()
    assert [m.id for m in models.data] == ["tiny"]


def test_answers_equal_infer_py_streamed_and_not(server, tiny_model_dir, media) -> None:
    image = media / "img0.png"
    expected = infer_answer(tiny_model_dir, image, QUESTIONS[0])
    assert expected and not expected.startswith('answer: ""')  # a real answer to compare, not the empty hint
    for url in (data_url(image), str(image), f"file://{image}"):
        reply = ask(server, image_question(url, QUESTIONS[0]))
        assert reply.choices[0].message.content == expected
    assert reply.usage.completion_tokens <= NEW_TOKENS and reply.usage.prompt_tokens > 20  # image tokens counted
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.choices[0].finish_reason in ("stop", "length")
    chunks = list(ask(server, image_question(data_url(image), QUESTIONS[0]), stream=True,
                      stream_options={"include_usage": True}))  # fmt: skip
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == expected and len([p for p in pieces if p]) > 1
    assert chunks[-1].usage.total_tokens == reply.usage.total_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == reply.choices[0].finish_reason


def test_stop_strings_cut_the_answer(server, media) -> None:
    full = ask(server, image_question(data_url(media / "img1.png"), QUESTIONS[1])).choices[0].message.content
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    cut = ask(server, image_question(data_url(media / "img1.png"), QUESTIONS[1]), stop=[stop]).choices[0]
    assert cut.message.content == full[: full.find(stop)] and cut.finish_reason == "stop"


def test_concurrent_clients_are_batched_and_answered_alone_alike(server, media) -> None:
    requests = [image_question(data_url(media / f"img{i}.png"), QUESTIONS[i % 4]) for i in range(8)]
    start = time.perf_counter()
    alone = [ask(server, r).choices[0].message.content for r in requests]
    one_by_one = time.perf_counter() - start
    together: list[str | None] = [None] * 8

    def run(i: int) -> None:
        together[i] = ask(server, requests[i]).choices[0].message.content

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    concurrent = time.perf_counter() - start
    assert together == alone
    assert health(server)["largest_batch"] > 1
    print(f"8 requests: one by one {one_by_one:.2f} s, concurrent {concurrent:.2f} s, "
          f"ratio {one_by_one / concurrent:.2f}")  # fmt: skip


def bad_requests(media: Path) -> dict[str, tuple[dict, int]]:
    """name -> (httpx.post keyword arguments, expected status)."""
    good = {"model": "tiny", "max_tokens": 4}
    bomb = "data:image/png;base64," + base64.b64encode(huge_png_header(30000, 30000)).decode()
    not_image = "data:image/png;base64," + base64.b64encode(b"this is not a picture").decode()

    def with_image(url: str) -> dict:
        return {"json": {**good, "messages": image_question(url, "What?")}}

    return {
        "malformed JSON": (
            {"content": b'{"model": "tiny", "messages": [', "headers": {"content-type": "application/json"}},
            400,
        ),  # fmt: skip
        "missing messages": ({"json": good}, 400),
        "message without role": ({"json": {**good, "messages": [{"content": "hi"}]}}, 400),
        "not an image": (with_image(not_image), 400),
        "decompression bomb": (with_image(bomb), 400),
        "50 MB body": ({"content": b" " * (50 * 1024 * 1024), "headers": {"content-type": "application/json"}}, 413),
        "path outside the folder": (with_image("/etc/hostname"), 400),
        "path escaping the folder": (with_image(str(media / ".." / "x.png")), 400),
        "file URL outside": (with_image("file:///etc/passwd"), 400),
        "loopback URL": (with_image("http://127.0.0.1:8000/v1/models"), 400),
        "metadata URL": (with_image("http://169.254.169.254/latest/meta-data/"), 400),
        "private URL": (with_image("http://10.0.0.1/x.png"), 400),
        "max_tokens 1e9": (
            {"json": {**good, "max_tokens": 10**9, "messages": [{"role": "user", "content": "hi"}]}},
            400,
        ),  # fmt: skip
        "n = 2": ({"json": {**good, "n": 2, "messages": [{"role": "user", "content": "hi"}]}}, 400),
        "negative seed": ({"json": {**good, "seed": -1, "messages": [{"role": "user", "content": "hi"}]}}, 400),
        "max_tokens as text": (
            {"json": {**good, "max_tokens": "10", "messages": [{"role": "user", "content": "hi"}]}},
            400,
        ),  # fmt: skip
        "image in an assistant turn": (
            {
                "json": {
                    **good,
                    "messages": [
                        {
                            "role": "assistant",
                            "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}],
                        },
                        {"role": "user", "content": "hi"},
                    ],
                }
            },
            400,
        ),  # fmt: skip
        "svg data URL": (with_image("data:image/svg+xml;base64," + base64.b64encode(b"<svg/>").decode()), 400),
        "top_p 0": ({"json": {**good, "top_p": 0, "messages": [{"role": "user", "content": "hi"}]}}, 400),
        "unknown model": ({"json": {**good, "model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}}, 404),
    }


def test_bad_inputs_get_4xx_json_errors_and_the_server_keeps_serving(server, media) -> None:
    headers = {"authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=server, timeout=120) as http:
        for name, (kwargs, status) in bad_requests(media).items():
            kwargs = {**kwargs, "headers": {**headers, **kwargs.get("headers", {})}}
            response = http.post("/v1/chat/completions", **kwargs)
            assert response.status_code == status, (name, response.text)
            error = response.json()["error"]
            assert error["message"] and error["type"], name
        wrong_key = http.post("/v1/chat/completions", headers={"authorization": "Bearer nope"},
                              json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
        assert wrong_key.status_code == 401 and wrong_key.json()["error"]["code"] == "invalid_api_key"
        assert http.get("/v1/models").status_code == 401
        assert http.get("/v1/nothing", headers=headers).json()["error"]["type"]
    with pytest.raises(openai.AuthenticationError):
        client(server, key="wrong").models.list()
    reply = ask(server, image_question(data_url(media / "img2.png"), "Still there?"))
    assert reply.choices[0].message.content is not None


def test_chat_page_is_served(server) -> None:
    page = httpx.get(f"{server}/", timeout=30)
    assert page.status_code == 200 and "/v1/chat/completions" in page.text


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no system Chromium at /usr/bin/chromium (apt-get install chromium)")
def test_chat_page_in_headless_chromium(server, media) -> None:
    """The page loads, takes the key and an uploaded image, and shows the streamed answer piece by piece; the
    answer equals the API's."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python) is in the test extra")
    image = media / "img3.png"
    expected = client(server).chat.completions.create(model="tiny", messages=image_question(data_url(image), "Hi?"),
                                                      temperature=0).choices[0].message.content  # fmt: skip
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=["--no-sandbox", "--disable-gpu"])  # fmt: skip
        try:
            page = browser.new_page()
            page.set_default_timeout(120_000)
            page.goto(f"{server}/")
            page.fill("#key", KEY)
            page.dispatch_event("#key", "change")
            page.wait_for_function("document.getElementById('model').textContent === 'tiny'")
            page.set_input_files("#image", str(image))
            page.wait_for_selector("#preview[src^='data:image/png']", state="attached")
            page.fill("#question", "Hi?")
            # every text the answer line was given, delta by delta (each sets a new text node)
            page.evaluate("""() => { window.seen = []; new MutationObserver((records) => records.forEach((r) => {
                if (r.target.classList?.contains('assistant')) r.addedNodes.forEach((n) => window.seen.push(
                n.textContent)); })).observe(document.getElementById('log'), {childList: true, subtree: true}); }""")
            page.click("#send")
            page.wait_for_selector("#answer-1[data-done='true']")
            shown = page.text_content("#answer-1")
            seen = [t for t in page.evaluate("window.seen") if t]
        finally:
            browser.close()
    assert shown == expected and expected
    assert len(set(seen)) > 1 and all(expected.startswith(t) for t in seen)  # streamed: growing prefixes


def test_cli_refuses_a_missing_media_folder(tiny_model_dir) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "paddlemix/tools/serve.py"), "--model_name_or_path",
                           str(tiny_model_dir), "--allowed_local_media_path", "/nonexistent/folder"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2 and "--allowed_local_media_path" in proc.stderr and "Traceback" not in proc.stderr


def test_eval_scores_the_same_at_batch_1_and_8_and_through_the_server(server, tiny_model_dir, shapes_data,
                                                                       tmp_path) -> None:  # fmt: skip
    """The evaluate tool's run with the tiny model loaded here, and with the server; the command line's own
    checks are in tests/tools/test_evaluate_cli.py."""
    from argparse import Namespace

    from paddlemix.inference.evaluate import evaluate_file, model_answerer, server_answerer
    from paddlemix.inference.loading import load_generator

    flags = {"chat_template": None, "device": "cpu", "image_resolution": None, "split_special_tokens": None}
    generator = load_generator(Namespace(model_name_or_path=str(tiny_model_dir), lora_path=None, **flags))
    answerers = {"b1": (model_answerer(generator, NEW_TOKENS), 1), "b8": (model_answerer(generator, NEW_TOKENS), 8),
                 "server": (server_answerer(f"{server}/v1", "tiny", KEY, NEW_TOKENS), 8)}  # fmt: skip
    runs = {}
    for name, (answer, batch_size) in answerers.items():
        report = evaluate_file(str(shapes_data["eval"]), "chatml_dataset", answer, tmp_path / name, batch_size)
        lines = (tmp_path / name / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
        runs[name] = (report["metrics"], sorted(json.dumps(json.loads(line), sort_keys=True) for line in lines))
    assert runs["b1"][0]["records"] == 8 and any(json.loads(line)["prediction"] for line in runs["b1"][1])
    assert runs["b1"] == runs["b8"] == runs["server"]


def test_base_plus_adapter_is_served_as_infer_py_answers_it(server, tiny_model_dir, media, tmp_path) -> None:
    """An adapter made by PEFT (random, non-zero B) on the base: the server answers what infer.py answers with the
    same --lora_path, and not what the base alone answers."""
    from paddlemix.models import ADAPTERS
    from paddlemix.testing.peft_adapter import write_peft_adapter

    adapter = tmp_path / "adapter"
    write_peft_adapter(adapter, tiny_model_dir, ADAPTERS["qwen2_5_vl"].parameter_name,
                       ("q_proj", "v_proj", "down_proj"), rank=8, std=0.5)  # fmt: skip
    image = media / "img5.png"
    expected = infer_answer(tiny_model_dir, image, QUESTIONS[2], "--lora_path", str(adapter))
    base = ask(server, image_question(data_url(image), QUESTIONS[2])).choices[0].message.content
    assert expected != base  # the adapter changes the answer, so the comparison below can fail
    args = ["--model_name_or_path", str(tiny_model_dir), "--lora_path", str(adapter), "--served_model_name", "tiny"]
    with running_server(*args, log=tmp_path / "serve.log") as url:
        reply = client(url, key="unused").chat.completions.create(
            model="tiny", messages=image_question(data_url(image), QUESTIONS[2]), max_tokens=NEW_TOKENS, temperature=0
        )
    assert reply.choices[0].message.content == expected
