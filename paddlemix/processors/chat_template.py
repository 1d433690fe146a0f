"""Chat templates that render a conversation as (text, is_label) segments, so loss masking happens per turn.

Two kinds are supported: a Jinja chat template (the model's own, or a `.jinja` file) and PaddleMIX's
`chat_template.json` (`system`, `conversation` = [user part, bot part], `query`). Templates are rendered in a
sandboxed Jinja environment because template files may come from data folders. Jinja templates written for Hugging
Face processors get what they expect: typed content parts (`[{"type": "image"}, {"type": "text", "text": ...}]`)
when they do not render plain string content, and the `{% generation %}` tag, whose spans become the labels.
Saving the trained template into output folders is in `paddlemix.processors.template_files`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from jinja2 import nodes
from jinja2.exceptions import TemplateError
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from paddlemix.datasets.conversation import IMAGE_PLACEHOLDER, Message, SampleError
from paddlemix.utils.errors import UserError
from paddlemix.utils.io import read_json

Segment = tuple[str, bool]
# Private-use characters that bracket the output of `{% generation %}` blocks while rendering for labels.
GENERATION_START, GENERATION_END = "\ue000", "\ue001"
_PROBE = "\ue002"


def _raise(message: str) -> None:
    raise TemplateError(message)


class GenerationTag(Extension):
    """`{% generation %}...{% endgeneration %}`, the tag transformers' chat templates use to mark what the assistant
    generates (`return_assistant_tokens_mask`). The body renders unchanged, bracketed by GENERATION_START/END so
    the caller can find the spans (and strip the brackets)."""

    tags = {"generation"}

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_bracket"), [], [], body).set_lineno(lineno)

    def _bracket(self, caller: Any) -> str:
        return GENERATION_START + caller() + GENERATION_END


def _environment(**options: Any) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols", GenerationTag], **options)
    env.globals["raise_exception"] = _raise
    return env


def _strip_brackets(text: str) -> str:
    return text.replace(GENERATION_START, "").replace(GENERATION_END, "")


def _generation_segments(text: str) -> list[Segment]:
    """Split a bracketed rendering into context and `{% generation %}` (label) pieces."""
    out: list[Segment] = []
    for i, piece in enumerate(text.split(GENERATION_START)):
        label, _, rest = piece.partition(GENERATION_END) if i else ("", "", piece)
        out += [(label, True), (rest, False)]
    return [s for s in out if s[0]]


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
    """A Hugging Face-style Jinja chat template; assistant spans come from `{% generation %}` blocks when the
    template has them, else from rendering growing prefixes."""

    def __init__(self, source: str, special_tokens: dict[str, Any] | None = None):
        try:
            self.template = _environment(trim_blocks=True, lstrip_blocks=True).from_string(source)
        except TemplateError as err:
            raise UserError(f"the chat template does not parse: {err}") from None
        self.source = source
        self.special_tokens = special_tokens or {}
        self.typed_content, self.image_text = self._probe()

    def _render_turns(self, turns: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        return self.template.render(messages=turns, add_generation_prompt=add_generation_prompt, **self.special_tokens)

    def _probe(self) -> tuple[bool, str]:
        """(whether the template needs typed content parts, the text it writes for one image part).

        A template that does not show a plain string content (it iterates over `message['content']` as parts, as
        llava-hf and SmolVLM templates do) is given typed parts; the image text is what an image part adds."""
        try:
            if _PROBE in self._render_turns([{"role": "user", "content": _PROBE}], False):
                return False, IMAGE_PLACEHOLDER
            text = [{"type": "text", "text": _PROBE}]
            plain = _strip_brackets(self._render_turns([{"role": "user", "content": text}], False))
            image = _strip_brackets(
                self._render_turns([{"role": "user", "content": [{"type": "image"}, *text]}], False)
            )
        except Exception:  # a template that needs more than one user turn to render: keep plain strings
            return False, IMAGE_PLACEHOLDER
        if _PROBE not in plain:
            return False, IMAGE_PLACEHOLDER
        cut = plain.index(_PROBE)
        image_text = image[cut : image.index(_PROBE)] if image.startswith(plain[:cut]) else ""
        return True, image_text or IMAGE_PLACEHOLDER

    def content_parts(self, content: str) -> list[dict[str, str]]:
        """A message's text as typed parts: an image part where the text holds an image (the template's own image
        text, or `<image>`), text parts between them."""
        marker = next((m for m in (self.image_text, self.image_text.strip(), IMAGE_PLACEHOLDER) if m and m in content),
                      None)  # fmt: skip
        pieces = content.split(marker) if marker else [content]
        parts: list[dict[str, str]] = []
        for i, piece in enumerate(pieces):
            if i:
                parts.append({"type": "image"})
            if piece:
                parts.append({"type": "text", "text": piece})
        return parts

    def render(self, messages: Sequence[Message], add_generation_prompt: bool, brackets: bool = False) -> str:
        """The template's text; with `brackets`, `{% generation %}` output stays bracketed by GENERATION_START/END."""
        turns = [
            {"role": m.role, "content": self.content_parts(m.content) if self.typed_content else m.content}
            for m in messages
        ]
        try:
            text = self._render_turns(turns, add_generation_prompt)
        except TemplateError as err:
            raise SampleError(f"chat template failed: {err}") from None
        return text if brackets else _strip_brackets(text)

    def segments(self, messages: Sequence[Message]) -> list[Segment]:
        full = self.render(messages, add_generation_prompt=False, brackets=True)
        if GENERATION_START in full:
            return _generation_segments(full)
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
        self.spec = spec
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


def _keep_whitespace(part: str) -> str:
    """A PaddleMIX template part for Hugging Face's Jinja options (trim_blocks, lstrip_blocks): its own block tags
    get the `+` modifiers that switch both off and its comments go, so it renders as it did in PaddleMIX's plain
    environment."""
    part = re.sub(r"\{#(?![+-]).*?(?<![+-])#\}", "", part, flags=re.DOTALL)  # a plain comment renders nothing
    part = re.sub(r"\{%(?![+-])", "{%+", part)
    return re.sub(r"(?<![+-])%\}", "+%}", part)


def paddlemix_to_jinja(spec: dict[str, Any], image_placeholder: str = IMAGE_PLACEHOLDER) -> str:
    """A Hugging Face chat template (Jinja, for `trim_blocks`/`lstrip_blocks` rendering as transformers and vLLM
    do) that renders exactly what `PaddleMixChatTemplate(spec)` renders: the system part with the joined system
    turns, then per round the user and bot parts (`index` counts rounds), and with `add_generation_prompt` the
    query part for a last user turn. Content may be a string or typed parts; an image part becomes
    `image_placeholder` (the text the training put where the record had an image). The answer sits in a
    `{% generation %}` block (its trailing whitespace after it, as PaddleMIX labels it), so the assistant mask of
    transformers' `return_assistant_tokens_mask` and our labels match the training's."""
    user, bot = (_keep_whitespace(p) for p in spec["conversation"])
    system = _keep_whitespace(spec.get("system", ""))
    query = _keep_whitespace(spec.get("query", spec["conversation"][0]))
    image = image_placeholder.replace("'", "\\'")
    # Every tag of our own carries "+" on both sides, so no whitespace of the parts is trimmed.
    return (
        "{%+ macro text(content) +%}{%+ if content is string +%}{{ content }}{%+ else +%}"
        "{%+ for part in content +%}{%+ if part['type'] == 'image' or 'image' in part or 'image_url' in part +%}"
        f"{{{{ '{image}' }}}}"
        "{%+ elif 'text' in part +%}{{ part['text'] }}{%+ endif +%}{%+ endfor +%}{%+ endif +%}{%+ endmacro +%}"
        "{%+ set ns = namespace(system='', sep='', index=0, expect='user') +%}"
        "{%+ for message in messages if message['role'] == 'system' +%}"
        "{%+ set ns.system = ns.system + ns.sep + text(message['content']) +%}{%+ set ns.sep = ' ' +%}{%+ endfor +%}"
        "{%+ set system = ns.system +%}" + system + "{%+ for message in messages if message['role'] != 'system' +%}"
        "{%+ if message['role'] != ns.expect +%}{{ raise_exception('turns must alternate user, assistant') }}"
        "{%+ endif +%}{%+ set index = ns.index +%}{%+ if message['role'] == 'user' +%}{%+ set ns.expect = 'assistant' +%}"
        "{%+ if loop.last +%}{%+ if add_generation_prompt +%}{%+ set query = text(message['content']) +%}" + query +
        "{%+ endif +%}{%+ else +%}{%+ set user = text(message['content']) +%}" + user + "{%+ endif +%}"
        "{%+ else +%}{%+ set ns.expect = 'user' +%}{%+ set bot = text(message['content']) +%}"
        "{%+ set answer +%}" + bot + "{%+ endset +%}{%+ generation +%}{{ answer.rstrip() }}{%+ endgeneration +%}"
        "{{ answer[answer.rstrip() | length :] }}{%+ set ns.index = ns.index + 1 +%}{%+ endif +%}{%+ endfor +%}"
    )  # fmt: skip


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
