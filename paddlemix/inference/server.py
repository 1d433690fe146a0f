"""An OpenAI-compatible HTTP server for a loaded `Generator`: `GET /v1/models`, `POST /v1/chat/completions` (JSON
or server-sent events with `stream: true`) and a chat page at `/`.

Requests go through the same encoding as training and tools/infer.py (`Generator.encode`: chat template, stop
ids, image processing, videos sampled with the training's settings) and are answered in shared batches
(batching.py). Messages take text, image and (for the Qwen-VL families) video parts (`parse_messages`). Every
client mistake is answered with an OpenAI-style JSON error, `{"error": {"message", "type", "param", "code"}}`, and
a 4xx status; the server keeps serving. Limits: request body bytes, image bytes and pixels, video bytes, seconds
and frame pixels, `max_tokens`, prompt + answer tokens (`max_model_len`), waiting requests and seconds per request.

Streaming sends the answer while its batch decodes (the decoding loop reports every step); the pieces join to
exactly the non-streamed answer.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from paddlemix.datasets.conversation import (
    IMAGE_PLACEHOLDER,
    VIDEO_PLACEHOLDER,
    ImageRef,
    Message,
    SampleError,
    VideoRef,
    guard_text,
)
from paddlemix.inference.batching import Answer, Batcher, QueueFull
from paddlemix.inference.decoding import GenerationSettings
from paddlemix.inference.media import MediaError, MediaKind, MediaPolicy
from paddlemix.utils.errors import UserError

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_TOKENS_LIMIT = 4096
ROLES = ("system", "user", "assistant")
MAX_STOP_STRINGS = 4


@dataclass(frozen=True)
class ServerConfig:
    """What the server answers as and its limits (see tools/serve.py for the flags)."""

    served_model_name: str
    api_key: str | None = None
    media: MediaPolicy = field(default_factory=MediaPolicy)
    max_model_len: int | None = None
    max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_waiting_requests: int = 64
    request_timeout: float = 600.0
    max_batch_size: int = 8


class ApiError(Exception):
    """A request the server refuses: HTTP status and an OpenAI-style error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    @property
    def kind(self) -> str:
        kinds = {401: "authentication_error", 404: "not_found_error", 413: "invalid_request_error",
                 429: "rate_limit_error"}  # fmt: skip
        return kinds.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    """A checked chat-completion request, encoded and ready to queue."""

    prompt: dict[str, Any]
    settings: GenerationSettings
    seed: int
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool


def _field(body: dict[str, Any], key: str, kinds: type | tuple[type, ...], default: Any = None) -> Any:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise ApiError(400, f"{key} has the wrong type (bool)", key, "invalid_type")
    if not isinstance(value, kinds):
        raise ApiError(400, f"{key} has the wrong type ({type(value).__name__})", key, "invalid_type")
    return value


@dataclass
class Parsed:
    """A request's messages with `<image>` / `<video>` placeholders where its media parts were, and the media in
    order."""

    messages: list[Message]
    images: list[ImageRef] = field(default_factory=list)
    videos: list[VideoRef] = field(default_factory=list)


def media_part(part: dict[str, Any]) -> tuple[MediaKind, Any] | None:
    """("image" | "video", its URL) of an image or video content part, None for other parts. Shapes: OpenAI's
    `{"type": "image_url", "image_url": {"url"} | url}`, vLLM's `{"type": "video_url", "video_url": {"url"} | url}`
    and `{"type": "video", "video": url}` (qwen-vl-utils' message shape)."""
    kind = part.get("type")
    if kind in ("image_url", "video_url"):
        url = part.get(kind)
        return kind.removesuffix("_url"), url.get("url") if isinstance(url, dict) else url
    if kind == "video":
        return "video", part.get("video")
    return None


def parse_messages(messages: Any, media: MediaPolicy, no_video: str | None = None) -> Parsed:
    """OpenAI `messages` -> toolkit messages with `<image>` / `<video>` placeholders where the image and video parts
    were (user turns only), and the media in order, resolved by `media`. Text that spells `<image>` or `<video>`
    stays text. `no_video`: why the model takes no video (a video part is then refused before it is fetched).
    Raises ApiError (400) for malformed messages and refused media."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", "messages", "invalid_value")
    parsed = Parsed([])
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ApiError(400, f"{where} needs a role among {', '.join(ROLES)}", f"{where}.role", "invalid_value")
        content = message.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(parts, list):
            raise ApiError(400, f"{where}.content must be a string or a list of parts", f"{where}.content")
        text = []
        for k, part in enumerate(parts):
            found = media_part(part) if isinstance(part, dict) else None
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                text.append(guard_text(part["text"], (IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER)))
            elif found is not None and message["role"] == "user":
                kind, url = found
                param = f"{where}.content[{k}].{part['type']}"
                if kind == "video" and no_video:
                    raise ApiError(400, f"this model takes no video: {no_video}", param, "video_not_supported")
                try:
                    ref = media.resolve(url, kind)
                except MediaError as err:
                    raise ApiError(400, str(err), param, f"invalid_{kind}_url") from None
                if kind == "video":
                    parsed.videos.append(VideoRef(ref))
                    text.append(VIDEO_PLACEHOLDER)
                else:
                    parsed.images.append(ref)
                    text.append(IMAGE_PLACEHOLDER)
            else:
                raise ApiError(400, f"{where}.content[{k}] must be a text part or (in a user turn) an image_url, "
                               "video_url or video part", f"{where}.content[{k}]", "invalid_value")  # fmt: skip
        parsed.messages.append(Message(message["role"], "".join(text)))
    if parsed.messages[-1].role == "assistant":
        raise ApiError(400, "the last message must not be an assistant turn", "messages", "invalid_value")
    return parsed


def decoding_settings(body: dict[str, Any], base: GenerationSettings, config: ServerConfig) -> GenerationSettings:
    """The request's decoding settings over the model's defaults; `max_tokens` is bounded by `max_tokens_limit`."""
    max_tokens = _field(body, "max_completion_tokens", int) or _field(body, "max_tokens", int)
    if max_tokens is not None and not 1 <= max_tokens <= config.max_tokens_limit:
        raise ApiError(400, f"max_tokens must be between 1 and {config.max_tokens_limit}, got {max_tokens}",
                       "max_tokens", "invalid_value")  # fmt: skip
    default = base.max_new_tokens or config.max_tokens_limit
    values = {
        "max_new_tokens": max_tokens or min(default, config.max_tokens_limit),
        "temperature": _field(body, "temperature", (int, float)),
        "top_p": _field(body, "top_p", (int, float)),
    }
    try:
        return base.with_requests(**values)
    except UserError as err:
        raise ApiError(400, str(err).replace("command line: ", ""), None, "invalid_value") from None


def stop_strings(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stop, list) or len(stop) > MAX_STOP_STRINGS or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, f"stop must be a string or a list of up to {MAX_STOP_STRINGS} strings", "stop")
    return tuple(stop)


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """`text` up to the first stop string, and whether one was found."""
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


class ChatServer:
    """The state behind the app: the generator, its batcher and the limits."""

    def __init__(self, generator: Any, config: ServerConfig):
        self.generator = generator
        self.config = config
        self.batcher = Batcher(generator, config.max_batch_size, config.max_waiting_requests)
        self._encode_lock = threading.Lock()
        self.created = int(time.time())

    def no_video(self) -> str | None:
        """Why the served model takes no video (None when it does)."""
        vision = self.generator.encoder.vision
        return vision.why_no_video if vision.video is None else None

    def check_key(self, authorization: str | None) -> None:
        if not self.config.api_key:
            return
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), self.config.api_key.encode()):
            raise ApiError(401, "missing or wrong API key (send Authorization: Bearer KEY)", None, "invalid_api_key")

    def prepare(self, body: Any) -> ChatRequest:
        """Check and encode a request body (runs in a worker thread: images are decoded here)."""
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object", None, "invalid_json")
        model = body.get("model")
        if model is not None and model != self.config.served_model_name:
            raise ApiError(404, f"model {model!r} is not served here (this server serves "
                           f"{self.config.served_model_name!r})", "model", "model_not_found")  # fmt: skip
        if _field(body, "n", int, 1) != 1:
            raise ApiError(400, "only n = 1 is supported", "n", "invalid_value")
        parsed = parse_messages(body.get("messages"), self.config.media, self.no_video())
        settings = decoding_settings(body, self.generator.settings, self.config)
        stop = stop_strings(body)
        seed = _field(body, "seed", int, 0)
        if not 0 <= seed < 2**63:
            raise ApiError(400, f"seed must be between 0 and 2**63 - 1, got {seed}", "seed", "invalid_value")
        options = _field(body, "stream_options", dict, {})
        try:
            with self._encode_lock:
                prompt = self.generator.encode(parsed.messages, parsed.images, parsed.videos)
        except SampleError as err:
            raise ApiError(400, f"cannot use this request: {err}", "messages", "invalid_input") from None
        limit = self.config.max_model_len
        if limit is not None and len(prompt["input_ids"]) + settings.max_new_tokens > limit:
            raise ApiError(400, f"prompt ({len(prompt['input_ids'])} tokens) + max_tokens "
                           f"({settings.max_new_tokens}) exceed max_model_len {limit}", "max_tokens",
                           "context_length_exceeded")  # fmt: skip
        stream = bool(_field(body, "stream", bool, False))
        return ChatRequest(prompt, settings, seed, stop, stream, bool(options.get("include_usage")))

    def submit(self, request: ChatRequest, on_tokens: Callable[[list[int]], None] | None = None) -> Future:
        try:
            return self.batcher.submit(request.prompt, request.settings, request.seed, on_tokens)
        except QueueFull as err:
            raise ApiError(429, f"the server is busy ({err}); retry later", None, "too_many_requests") from None

    async def answer(self, request: ChatRequest) -> Answer:
        future = self.submit(request)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.config.request_timeout)
        except asyncio.TimeoutError:
            future.cancel()
            raise ApiError(504, f"no answer within {self.config.request_timeout} s", None, "timeout") from None

    def finish(self, request: ChatRequest, answer: Answer) -> tuple[str, str]:
        """The answer text after stop strings, and the OpenAI finish_reason (stop or length)."""
        text, stopped = cut_at_stop(answer.text, request.stop)
        eos = set(request.settings.eos_token_ids)
        stopped = stopped or bool(answer.tokens and answer.tokens[-1] in eos)
        return text, "stop" if stopped else "length"

    def usage(self, answer: Answer) -> dict[str, int]:
        done = len(answer.tokens)
        return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": done,
                "total_tokens": answer.prompt_tokens + done}  # fmt: skip

    def completion(self, request: ChatRequest, answer: Answer) -> dict[str, Any]:
        text, reason = self.finish(request, answer)
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                  "logprobs": None}  # fmt: skip
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": self.config.served_model_name, "choices": [choice], "usage": self.usage(answer)}  # fmt: skip

    def visible(self, request: ChatRequest, tokens: list[int]) -> str:
        """The part of the answer so far that can be sent now: `tokens` decoded as the final answer is (eos and
        special tokens off, cut at a stop string), without an incomplete last character, trailing spaces (the final
        answer is stripped) or a tail that may still become a stop string."""
        eos = set(request.settings.eos_token_ids)
        text = self.generator.tokenizer.decode([t for t in tokens if t not in eos], skip_special_tokens=True)
        text, stopped = cut_at_stop(text.lstrip(), request.stop)
        hold = 0 if stopped else max((len(s) - 1 for s in request.stop), default=0)
        return text[: len(text) - hold].rstrip("\ufffd").rstrip()

    def stream(self, request: ChatRequest) -> AsyncIterator[str]:
        """Queue a streamed request now (a full queue is a 429 before any event) and return its server-sent events."""
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue[list[int]] = asyncio.Queue()
        future = self.submit(request, lambda tokens: loop.call_soon_threadsafe(updates.put_nowait, tokens))
        return self.events(request, future, updates)

    async def events(self, request: ChatRequest, future: Future, updates: asyncio.Queue) -> AsyncIterator[str]:
        """Server-sent events of a streamed completion: text as the batch decodes it (the pieces join to exactly the
        non-streamed answer), the finish reason, usage if asked, `data: [DONE]`. A failure after the first event is
        an `error` event."""
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": self.config.served_model_name}  # fmt: skip

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            choices = [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
            return f"data: {json.dumps({**head, 'choices': choices}, ensure_ascii=False)}\n\n"

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.request_timeout
        done = asyncio.wrap_future(future)
        sent = ""
        yield chunk({"role": "assistant", "content": ""})
        try:
            while not done.done():
                update = asyncio.ensure_future(updates.get())
                ready, _ = await asyncio.wait({update, done}, timeout=max(deadline - loop.time(), 0),
                                              return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                if not ready:
                    update.cancel()
                    raise ApiError(504, f"no answer within {self.config.request_timeout} s", None, "timeout")
                if update not in ready:
                    update.cancel()
                    continue
                tokens = update.result()
                while not updates.empty():
                    tokens = updates.get_nowait()
                text = self.visible(request, tokens)
                if len(text) > len(sent) and text.startswith(sent):
                    yield chunk({"content": text[len(sent) :]})
                    sent = text
            answer = done.result()
        except ApiError as err:
            yield f"data: {json.dumps(err.body())}\n\ndata: [DONE]\n\n"
            return
        except Exception as err:  # noqa: BLE001 - the stream has started: the failure becomes an error event
            logger.exception("streamed request failed")
            yield f"data: {json.dumps(ApiError(500, f'generation failed ({type(err).__name__})').body())}\n\n"
            yield "data: [DONE]\n\n"
            return
        finally:
            if not done.done():
                future.cancel()  # the client left (or timed out) before its batch started
        text, reason = self.finish(request, answer)
        if text.startswith(sent) and len(text) > len(sent):
            yield chunk({"content": text[len(sent) :]})
        elif not text.startswith(sent):
            logger.warning("streamed text %r is not a prefix of the answer %r", sent, text)
        yield chunk({}, reason)
        if request.include_usage:
            yield f"data: {json.dumps({**head, 'choices': [], 'usage': self.usage(answer)})}\n\n"
        yield "data: [DONE]\n\n"


async def read_body(request: Request, limit: int) -> Any:
    """The JSON body, refused with 413 past `limit` bytes (checked on the header and while reading)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body over {limit} bytes", None, "request_too_large")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise ApiError(413, f"request body over {limit} bytes", None, "request_too_large")
    try:
        return json.loads(bytes(data))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ApiError(400, f"the request body is not valid JSON ({err})", None, "invalid_json") from None


def chat_page() -> str:
    return resources.files("paddlemix.inference").joinpath("chat_page.html").read_text(encoding="utf-8")


def create_app(generator: Any, config: ServerConfig) -> FastAPI:
    """The FastAPI app serving `generator`; `app.state.chat` is its `ChatServer` (close its batcher on exit)."""
    server = ChatServer(generator, config)
    app = FastAPI(title="PaddleMIX server", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.chat = server

    @app.exception_handler(ApiError)
    async def api_error(_: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, err: HTTPException) -> JSONResponse:
        return JSONResponse(ApiError(err.status_code, str(err.detail)).body(), status_code=err.status_code)

    @app.exception_handler(Exception)
    async def server_error(_: Request, err: Exception) -> JSONResponse:
        logger.exception("request failed")
        return JSONResponse(ApiError(500, f"internal error ({type(err).__name__})").body(), status_code=500)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return chat_page()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        batcher = server.batcher
        return {"status": "ok", "batches": batcher.batches, "largest_batch": batcher.largest_batch}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        server.check_key(request.headers.get("authorization"))
        model = {"id": config.served_model_name, "object": "model", "created": server.created,
                 "owned_by": "paddlemix", "max_model_len": config.max_model_len}  # fmt: skip
        return {"object": "list", "data": [model]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        server.check_key(request.headers.get("authorization"))
        body = await read_body(request, config.max_body_bytes)
        chat = await run_in_threadpool(server.prepare, body)
        if chat.stream:
            return StreamingResponse(server.stream(chat), media_type="text/event-stream")
        return server.completion(chat, await server.answer(chat))

    @app.on_event("shutdown")
    async def close() -> None:
        server.batcher.close()

    return app
