"""Streaming sends text while the batch is still decoding, holds back what a stop string or the final strip may
still change, and joins to exactly the non-streamed answer. A stub generator decodes one step per signal."""

from __future__ import annotations

import asyncio
import json
import threading
from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi", reason="the server needs the serve extra (fastapi, uvicorn)")

from paddlemix.inference.decoding import GenerationSettings  # noqa: E402
from paddlemix.inference.server import ChatRequest, ChatServer, ServerConfig  # noqa: E402

EOS = 0
WORDS = {1: "The", 2: " red", 3: " circle", 4: " STOP", 5: " here", 6: " ", EOS: "<eos>"}


class StepTokenizer:
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(WORDS[i] for i in ids if not (skip_special_tokens and i == EOS))


class StepGenerator:
    """Answers `script` one token per `step.release()`, reporting every step to `on_step` as decode() does."""

    def __init__(self, script: list[int]) -> None:
        self.script = script
        self.tokenizer = StepTokenizer()
        self.settings = GenerationSettings(max_new_tokens=16, eos_token_ids=(EOS,))
        self.step = threading.Semaphore(0)

    def generate_encoded(self, prompts, settings, seed=0, on_step=None):
        tokens: list[int] = []
        for token in self.script:
            assert self.step.acquire(timeout=30), "the test stopped stepping"
            tokens.append(token)
            if on_step is not None:
                on_step([list(tokens)])
        text = self.tokenizer.decode(tokens).strip()
        return SimpleNamespace(texts=[text], generated=SimpleNamespace(tokens=[tokens]))


def request(stop: tuple[str, ...] = ()) -> ChatRequest:
    settings = GenerationSettings(max_new_tokens=16, eos_token_ids=(EOS,))
    return ChatRequest({"input_ids": [7, 8, 9]}, settings, 0, stop, True, True)


def contents(events: list[str]) -> list[str]:
    out = []
    for event in events:
        if event.startswith("data: [DONE]"):
            continue
        data = json.loads(event.removeprefix("data: "))
        out += [c["delta"]["content"] for c in data.get("choices", []) if c["delta"].get("content")]
    return out


async def collect(server: ChatServer, chat: ChatRequest, per_step: list[str | None]) -> tuple[list[str], list[str]]:
    """Release the stub one step at a time; after a step that should send a piece, take the next event (it must
    come before the next step decodes). Returns those pieces and all events after the last step."""
    events = server.stream(chat)
    early = [await events.__anext__()]  # the role chunk
    for piece in per_step:
        server.generator.step.release()
        if piece is not None:
            early.append(await asyncio.wait_for(events.__anext__(), 30))
    server.generator.step.release()  # the eos step
    rest = [e async for e in events]
    return contents(early), early + rest


@pytest.mark.parametrize(
    "script, stop, per_step, final",
    [([1, 2, 3, EOS], (), ["The", " red", " circle"], "The red circle"),
     # with a stop string, a tail that may begin it waits; the answer ends before it and nothing after is sent
     ([1, 2, 4, 5, EOS], (" STOP",), [None, "The", " red", None], "The red")],
)  # fmt: skip
def test_pieces_arrive_while_decoding_and_join_to_the_answer(script, stop, per_step, final) -> None:
    server = ChatServer(StepGenerator(script), ServerConfig(served_model_name="stub"))
    try:
        early, events = asyncio.run(collect(server, request(stop), per_step))
    finally:
        server.batcher.close()
    assert early == [p for p in per_step if p]  # each piece came before the next step was allowed to decode
    assert "".join(contents(events)) == final
    assert events[-1] == "data: [DONE]\n\n"
    finish = [c["finish_reason"] for e in events[:-1] for c in json.loads(e[6:]).get("choices", [])]
    assert finish[-1] == "stop"


def test_trailing_space_is_held_back_as_the_final_answer_is_stripped() -> None:
    server = ChatServer(StepGenerator([1, 6, EOS]), ServerConfig(served_model_name="stub"))
    assert server.visible(request(), [1, 6]) == "The"
    assert server.visible(request((" STOP",)), [1, 2, 4]) == "The red"  # a whole stop string cuts
    assert server.visible(request(("XYZ",)), [1, 2]) == "The r"  # 2 characters may begin "XYZ"
    server.batcher.close()
