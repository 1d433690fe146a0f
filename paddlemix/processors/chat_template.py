"""Chat templates that render a conversation as (text, is_label) segments, so loss masking happens per turn.

Two kinds are supported: a Jinja chat template (the model's own, or a `.jinja` file) and PaddleMIX's
`chat_template.json` (`system`, `conversation` = [user part, bot part], `query`). Templates are rendered in a
sandboxed Jinja environment because template files may come from data folders.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from paddlemix.datasets.conversation import Message, SampleError
from paddlemix.utils.errors import UserError
from paddlemix.utils.io import read_json

Segment = tuple[str, bool]


def _raise(message: str) -> None:
    raise TemplateError(message)


def _environment(**options: Any) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"], **options)
    env.globals["raise_exception"] = _raise
    return env


class ChatTemplate(Protocol):
    def segments(self, messages: Sequence[Message]) -> list[Segment]:
        """The whole conversation as ordered pieces; assistant answers are the pieces marked True."""

    def prompt(self, messages: Sequence[Message]) -> str:
        """The text a model continues to answer the last user turn (generation prompt included)."""


def _split_answer(text: str, trained: bool = True) -> list[Segment]:
    """Keep the answer and its end-of-turn token as label (unless the turn is not `trained`, ms-swift's
    `"loss": false`), the whitespace after it as context."""
    stripped = text.rstrip()
    return [(stripped, trained), (text[len(stripped) :], False)]


class JinjaChatTemplate:
    """A Hugging Face-style Jinja chat template; assistant spans come from rendering growing prefixes."""

    def __init__(self, source: str, special_tokens: dict[str, Any] | None = None):
        try:
            self.template = _environment(trim_blocks=True, lstrip_blocks=True).from_string(source)
        except TemplateError as err:
            raise UserError(f"the chat template does not parse: {err}") from None
        self.special_tokens = special_tokens or {}

    def render(self, messages: Sequence[Message], add_generation_prompt: bool) -> str:
        turns = [{"role": m.role, "content": m.content} for m in messages]
        try:
            return self.template.render(
                messages=turns, add_generation_prompt=add_generation_prompt, **self.special_tokens
            )
        except TemplateError as err:
            raise SampleError(f"chat template failed: {err}") from None

    def segments(self, messages: Sequence[Message]) -> list[Segment]:
        out: list[Segment] = []
        done = ""
        for k, message in enumerate(messages):
            if message.role != "assistant":
                continue
            prompt = self.render(messages[:k], add_generation_prompt=True)
            full = self.render(messages[: k + 1], add_generation_prompt=False)
            if not (prompt.startswith(done) and full.startswith(prompt)):
                raise SampleError("chat template does not render turns as growing prefixes; per-turn masking fails")
            out.append((prompt[len(done) :], False))
            out.extend(_split_answer(full[len(prompt) :], message.loss))
            done = full
        return [s for s in out if s[0]]

    def prompt(self, messages: Sequence[Message]) -> str:
        return self.render(messages, add_generation_prompt=True)


class PaddleMixChatTemplate:
    """PaddleMIX's chat_template.json: a system text, a [user, bot] pair of Jinja strings, and a query string."""

    def __init__(self, spec: dict[str, Any], where: str = "chat_template.json"):
        conversation = spec.get("conversation")
        if not (isinstance(conversation, list) and len(conversation) == 2):
            raise UserError(f'{where}: "conversation" must be a list of two Jinja strings [user part, bot part].')
        env = _environment(keep_trailing_newline=True)
        self.system = env.from_string(spec.get("system", ""))
        self.user, self.bot = (env.from_string(part) for part in conversation)
        self.query = env.from_string(spec.get("query", conversation[0]))

    def _rounds(self, messages: Sequence[Message]) -> tuple[str, list[tuple[str, Message | None]]]:
        system = " ".join(m.content for m in messages if m.role == "system")
        turns = [m for m in messages if m.role != "system"]
        rounds: list[tuple[str, Message | None]] = []
        for message in turns:
            if message.role == "user":
                rounds.append((message.content, None))
            elif rounds and rounds[-1][1] is None:
                rounds[-1] = (rounds[-1][0], message)
            else:
                raise SampleError("turns must alternate user, assistant")
        return system, rounds

    def segments(self, messages: Sequence[Message]) -> list[Segment]:
        system, rounds = self._rounds(messages)
        out: list[Segment] = [(self.system.render(system=system), False)]
        for index, (user, bot) in enumerate(rounds):
            if bot is None:
                break
            out.append((self.user.render(user=user, index=index), False))
            out.extend(_split_answer(self.bot.render(bot=bot.content, index=index), bot.loss))
        return [s for s in out if s[0]]

    def prompt(self, messages: Sequence[Message]) -> str:
        system, rounds = self._rounds(messages)
        text = self.system.render(system=system)
        for index, (user, bot) in enumerate(rounds):
            if bot is None:
                return text + self.query.render(query=user, index=index)
            text += self.user.render(user=user, index=index) + self.bot.render(bot=bot.content, index=index)
        return text


def template_for(processor: Any, path: str | Path | None = None) -> ChatTemplate:
    """The template of `path` if given, else the model's own, with the tokenizer's bos/eos tokens for Jinja."""
    tokenizer = processor.tokenizer
    default = getattr(processor, "chat_template", None) or tokenizer.chat_template
    special = {"bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token}
    return load_chat_template(path, default, special)


def load_chat_template(path: str | Path | None, default: str | None, special_tokens: dict[str, Any]) -> ChatTemplate:
    """The template from `path` (chat_template.json or a Jinja file), else the model's own `default`."""
    if path is None:
        if not default:
            raise UserError(
                "the model folder has no chat template (chat_template.json / tokenizer_config.json) and the source "
                'sets no "chat_template"; add one of them.'
            )
        return JinjaChatTemplate(default, special_tokens)
    spec = read_template_file(path)
    if isinstance(spec, dict):
        return PaddleMixChatTemplate(spec, str(path))
    return JinjaChatTemplate(spec, special_tokens)


def read_template_file(path: str | Path) -> str | dict[str, Any]:
    """A template file's content: Jinja text (a Jinja file, or an HF-style JSON's "chat_template" string), or the
    spec of a PaddleMIX chat_template.json (a dict with "conversation")."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f'chat template "{path}" does not exist; give a path to a chat_template.json or Jinja file.')
    if path.suffix != ".json":
        return path.read_text(encoding="utf-8")
    spec = read_json(path)
    if isinstance(spec, dict) and "conversation" in spec:
        return spec
    if isinstance(spec, dict) and isinstance(spec.get("chat_template"), str):
        return spec["chat_template"]
    raise UserError(f'{path} has neither PaddleMIX\'s "conversation" nor a "chat_template" string.')
