"""Chat templates that render a conversation as (text, is_label) segments, so loss masking happens per turn.

Two kinds are supported: a Jinja chat template (the model's own, or a `.jinja` file) and PaddleMIX's
`chat_template.json` (`system`, `conversation` = [user part, bot part], `query`). Templates are rendered in a
sandboxed Jinja environment because template files may come from data folders. Jinja templates written for Hugging
Face processors get what they expect: typed content parts (`[{"type": "image"}, {"type": "text", "text": ...}]`)
when they do not render plain string content, and the `{% generation %}` tag, whose spans become the labels.
Saving the trained template into output folders is in `paddlemix.processors.template_files`.

Both kinds first cut a conversation into pieces (context, or an assistant answer), then one set of boundary rules
makes training segments and inference prompts agree byte for byte (`_boundary_segments`):
- an answer ends with the template's end-of-turn text (`<|im_end|>`, `</s>`, ...); where the template writes none,
  the tokenizer's eos follows the answer (`answer_eos`), as LLaVA's and LLaMA-Factory's training do;
- an answer starts where the generation prompt of its turn ends, so that prompt is exactly the training text
  before the answer (llava-hf renders `ASSISTANT: ` + `red ` but prompts with `ASSISTANT:`: the answer is trained
  as ` red`, as the whole text tokenizes too); whitespace after an answer is context;
- with `keep_empty_think=False`, the empty `<think></think>` block a thinking template writes before an answer is
  context, and prompts are rendered with `enable_thinking=False`, which writes that block into the prompt.
Templates that rewrite earlier turns (Qwen3's drops reasoning from past answers) are rendered once for the whole
conversation and each answer is located in that text.
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
# A rendered piece: (text, kind), kind CONTEXT, TRAINED (an answer with loss) or UNTRAINED (an answer without).
Piece = tuple[str, int]
CONTEXT, TRAINED, UNTRAINED = 0, 1, 2
# Private-use characters that bracket the output of `{% generation %}` blocks while rendering for labels.
GENERATION_START, GENERATION_END = "\ue000", "\ue001"
_PROBE = "\ue002"
_MARK = "\ue003"  # appended to one answer to find where the template's text after it begins
_EMPTY_THINK = re.compile(r"<think>\s*</think>\s*")


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


def _generation_pieces(text: str, messages: Sequence[Message]) -> list[Piece]:
    """Split a bracketed rendering into context and `{% generation %}` (answer) pieces; the n-th block is the n-th
    assistant turn's when the counts agree (for its `loss` flag)."""
    answers = [m for m in messages if m.role == "assistant"]
    chunks = text.split(GENERATION_START)
    trained = [m.loss for m in answers] if len(answers) == len(chunks) - 1 else [True] * (len(chunks) - 1)
    out: list[Piece] = [(chunks[0], CONTEXT)]
    for loss, chunk in zip(trained, chunks[1:]):
        answer, _, rest = chunk.partition(GENERATION_END)
        out += [(answer, TRAINED if loss else UNTRAINED), (rest, CONTEXT)]
    return out


def _answer_kind(message: Message) -> int:
    return TRAINED if message.loss else UNTRAINED


def _align_to_prompts(pieces: list[Piece], prompts: Sequence[str]) -> list[Piece]:
    """Move each answer's start to where the generation prompt of its turn (`prompts`, one per answer, the whole
    text a model would continue) ends: llava-hf's template renders `ASSISTANT: ` + `{% generation %}red ` but
    prompts with `ASSISTANT:`, so the space starts the answer (` red`, as the whole text tokenizes too)."""
    out = list(pieces)
    done, answer = "", 0
    for i, (text, kind) in enumerate(out):
        if kind != CONTEXT and answer < len(prompts) and i and out[i - 1][1] == CONTEXT:
            prompt, context = prompts[answer], out[i - 1][0]
            if done.startswith(prompt) and len(done) - len(prompt) <= len(context):  # context runs past the prompt
                cut = len(context) - (len(done) - len(prompt))
                out[i - 1], out[i] = (context[:cut], CONTEXT), (context[cut:] + text, kind)
            elif prompt.startswith(done) and text.startswith(prompt[len(done) :]):  # the prompt takes part of it
                cut = len(prompt) - len(done)
                out[i - 1], out[i] = (context + text[:cut], CONTEXT), (text[cut:], kind)
            answer += 1
        elif kind != CONTEXT:
            answer += 1
        done = "".join(t for t, _ in out[: i + 1])
    return out


def _boundary_segments(pieces: list[Piece], answer_eos: str = "", keep_empty_think: bool = True) -> list[Segment]:
    """Training segments from rendered pieces, with the answer-boundary rules of the module docstring applied."""
    out: list[Segment] = []
    for text, kind in pieces:
        if kind == CONTEXT:
            out.append((text, False))
            continue
        answer = text
        if not keep_empty_think:
            think = _EMPTY_THINK.match(answer)
            if think:
                out.append((answer[: think.end()], False))
                answer = answer[think.end() :]
        stripped = answer.rstrip()
        out += [(stripped + answer_eos, kind == TRAINED), (answer[len(stripped) :], False)]
    return [s for s in out if s[0]]


class ChatTemplate(Protocol):
    answer_eos: str
    keep_empty_think: bool
    stop_token_id: int | None

    def pieces(self, messages: Sequence[Message], add_generation_prompt: bool) -> list[Piece]:
        """The rendered conversation cut into context and answer pieces, before the boundary rules."""

    def segments(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> list[Segment]:
        """The whole conversation as ordered pieces; assistant answers are the pieces marked True."""

    def prompt(self, messages: Sequence[Message]) -> str:
        """The text a model continues to answer the last user turn (generation prompt included)."""


class _BoundaryRules:
    """What both template kinds share: the boundary rules on top of their `pieces`."""

    answer_eos: str = ""
    keep_empty_think: bool = True
    stop_token_id: int | None = None

    def pieces(self, messages: Sequence[Message], add_generation_prompt: bool) -> list[Piece]:
        raise NotImplementedError

    def segments(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> list[Segment]:
        pieces = self.pieces(messages, add_generation_prompt)
        return _boundary_segments(pieces, self.answer_eos, self.keep_empty_think)

    def prompt(self, messages: Sequence[Message]) -> str:
        return "".join(text for text, _ in self.segments(messages, add_generation_prompt=True))


class JinjaChatTemplate(_BoundaryRules):
    """A Hugging Face-style Jinja chat template; assistant spans come from `{% generation %}` blocks when the
    template has them, else from rendering growing prefixes, else (templates that rewrite earlier turns) from
    locating each answer in the rendering of the whole conversation."""

    def __init__(self, source: str, special_tokens: dict[str, Any] | None = None):
        try:
            self.template = _environment(trim_blocks=True, lstrip_blocks=True).from_string(source)
        except TemplateError as err:
            raise UserError(f"the chat template does not parse: {err}") from None
        self.source = source
        self.special_tokens = special_tokens or {}
        self.typed_content, self.image_text = self._probe()

    def _render_turns(self, turns: list[dict[str, Any]], add_generation_prompt: bool, final: bool = False) -> str:
        # Without labels for empty reasoning blocks, the generation prompt of the whole conversation (`final`)
        # carries that block (Qwen3's `enable_thinking=False`); renderings that locate answers keep the default.
        think = {} if self.keep_empty_think or not (final and add_generation_prompt) else {"enable_thinking": False}
        return self.template.render(
            messages=turns, add_generation_prompt=add_generation_prompt, **self.special_tokens, **think
        )

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

    def render(
        self, messages: Sequence[Message], add_generation_prompt: bool, brackets: bool = False, final: bool = False
    ) -> str:
        """The template's text; with `brackets`, `{% generation %}` output stays bracketed by GENERATION_START/END;
        `final` marks the rendering whose generation prompt is the one a model continues."""
        turns = [
            {"role": m.role, "content": self.content_parts(m.content) if self.typed_content else m.content}
            for m in messages
        ]
        try:
            text = self._render_turns(turns, add_generation_prompt, final)
        except TemplateError as err:
            raise SampleError(f"chat template failed: {err}") from None
        return text if brackets else _strip_brackets(text)

    def pieces(self, messages: Sequence[Message], add_generation_prompt: bool) -> list[Piece]:
        full = self.render(messages, add_generation_prompt, brackets=True, final=True)
        if GENERATION_START in full:
            prompts = [self.render(messages[:k], True) for k, m in enumerate(messages) if m.role == "assistant"]
            return _align_to_prompts(_generation_pieces(full, messages), prompts)
        try:
            return self._prefix_pieces(messages, add_generation_prompt)
        except SampleError:
            return self._located_pieces(messages, add_generation_prompt)

    def _prefix_pieces(self, messages: Sequence[Message], add_generation_prompt: bool) -> list[Piece]:
        """Answers as the growth of renderings of growing prefixes of the conversation."""
        out: list[Piece] = []
        done = ""
        for k, message in enumerate(messages):
            if message.role != "assistant":
                continue
            prompt = self.render(messages[:k], add_generation_prompt=True)
            full = self.render(messages[: k + 1], add_generation_prompt=False)
            if not (prompt.startswith(done) and full.startswith(prompt)):
                raise SampleError("chat template does not render turns as growing prefixes")
            out += [(prompt[len(done) :], CONTEXT), (full[len(prompt) :], _answer_kind(message))]
            done = full
        rest = self.render(messages, add_generation_prompt, final=True)
        if not rest.startswith(done):
            raise SampleError("chat template does not render turns as growing prefixes")
        return [*out, (rest[len(done) :], CONTEXT)]

    def _located_pieces(self, messages: Sequence[Message], add_generation_prompt: bool) -> list[Piece]:
        """Render the whole conversation once and locate each answer in it: it starts where the generation prompt
        of its turn ends, and ends where the text after it (found by marking the answer) begins, plus the
        end-of-turn text the template writes after it."""
        whole = self.render(messages, add_generation_prompt)
        out: list[Piece] = []
        done = 0
        for k, message in enumerate(messages):
            if message.role != "assistant":
                continue
            prompt = self.render(messages[:k], add_generation_prompt=True)
            marked = [*messages[:k], Message("assistant", message.content + _MARK, message.loss), *messages[k + 1 :]]
            after = self.render(marked, add_generation_prompt).partition(_MARK)[2]
            last = self.render(marked[: k + 1], add_generation_prompt=False).partition(_MARK)[2]
            end = len(whole) - len(after)
            if not (whole.startswith(prompt) and done <= len(prompt) <= end and whole.endswith(after)):
                raise SampleError(
                    "the chat template neither renders turns as growing prefixes nor keeps the rest of the "
                    f"conversation when turn {k} changes, so its answers cannot be located for per-turn masking"
                )
            closing = last.rstrip()  # the end-of-turn text (<|im_end|>) the template writes after an answer
            end += len(closing) if after.startswith(closing) else 0
            out += [(whole[done : len(prompt)], CONTEXT), (whole[len(prompt) : end], _answer_kind(message))]
            done = end
        final = self.render(messages, add_generation_prompt, final=True)
        if not final.startswith(whole[:done]):
            raise SampleError("the chat template's generation prompt rewrites the conversation before it")
        return [*out, (final[done:], CONTEXT)]


class PaddleMixChatTemplate(_BoundaryRules):
    """PaddleMIX's chat_template.json: a system text, a [user, bot] pair of Jinja strings, and a query string."""

    def __init__(self, spec: dict[str, Any], where: str = "chat_template.json"):
        conversation = spec.get("conversation")
        if not (isinstance(conversation, list) and len(conversation) == 2):
            raise UserError(f'{where}: "conversation" must be a list of two Jinja strings [user part, bot part].')
        env = _environment(keep_trailing_newline=True)
        self.spec = spec
        self.system = env.from_string(spec.get("system", ""))
        self.user, self.bot = (env.from_string(part) for part in conversation)
        # Without "query", the user part asks (PaddleMIX's files write `{{user}}` there, so both names are given).
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

    def pieces(self, messages: Sequence[Message], add_generation_prompt: bool) -> list[Piece]:
        system, rounds = self._rounds(messages)
        out: list[Piece] = [(self.system.render(system=system), CONTEXT)]
        prompts: list[str] = []
        for index, (user, bot) in enumerate(rounds):
            if bot is None:
                if add_generation_prompt:
                    out.append((self.query.render(query=user, user=user, index=index), CONTEXT))
                break
            prompts.append("".join(t for t, _ in out) + self.query.render(query=user, user=user, index=index))
            out.append((self.user.render(user=user, index=index), CONTEXT))
            out.append((self.bot.render(bot=bot.content, index=index), _answer_kind(bot)))
        return _align_to_prompts(out, prompts)


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


def template_for(processor: Any, path: str | Path | None = None, keep_empty_think: bool = True) -> ChatTemplate:
    """The template of `path` if given, else the model's own, with the tokenizer's bos/eos tokens for Jinja and
    its answer end settled (`settle_answer_end`)."""
    tokenizer = processor.tokenizer
    default = getattr(processor, "chat_template", None) or tokenizer.chat_template
    special = {"bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token}
    template = load_chat_template(path, default, special)
    template.keep_empty_think = keep_empty_think
    settle_answer_end(template, tokenizer, str(path) if path else "the model's chat template")
    return template


def rendered_answer_end(template: ChatTemplate) -> str:
    """The text a template writes right after an answer, up to whitespace (`<|im_end|>`, `<|eot_id|>`, `</s>`),
    found by rendering a probe answer; "" when it writes nothing there."""
    probe = [Message("user", "Hi"), Message("assistant", _PROBE)]
    saved, template.answer_eos = template.answer_eos, ""
    try:
        labels = [text for text, label in template.segments(probe) if label and _PROBE in text]
    except (SampleError, UserError):
        labels = []
    finally:
        template.answer_eos = saved
    return labels[0].partition(_PROBE)[2] if labels else ""


def control_token_ids(tokenizer: Any) -> set[int]:
    """Ids of the tokenizer's special (control) tokens: its named ones and added tokens flagged special."""
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return ids | {int(i) for i, token in decoder.items() if getattr(token, "special", False)}


def settle_answer_end(template: ChatTemplate, tokenizer: Any, where: str) -> None:
    """Set `template.stop_token_id`, the id that ends every labelled answer (a stop id wherever the model
    generates): the control token the template writes after an answer, else the tokenizer's eos, which is then
    appended to every answer (`template.answer_eos`). Raises UserError when there is neither."""
    end = rendered_answer_end(template)
    ids = list(tokenizer(end, add_special_tokens=False)["input_ids"]) if end else []
    if ids and ids[-1] in control_token_ids(tokenizer):
        template.answer_eos, template.stop_token_id = "", int(ids[-1])
        return
    eos = getattr(tokenizer, "eos_token", None)
    if not eos:
        raise UserError(
            f"{where} ends answers with {end!r}, no end-of-turn token, and the tokenizer has no eos_token, so a "
            "model trained on it would never stop. Use a template that ends each answer with a special token (as "
            "ChatML's <|im_end|> does), or set eos_token in the model's tokenizer_config.json."
        )
    template.answer_eos, template.stop_token_id = eos, int(tokenizer.convert_tokens_to_ids(eos))


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
