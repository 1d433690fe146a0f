"""Records that quote image marks and control tokens as text, in the shapes users bring (code, SVG, HTML)."""

from __future__ import annotations


def code_records(image: str) -> list[dict]:
    """The five records of the report: text-only records mentioning `<image>` (question and answer), a typed text
    part quoting it next to a real image part, an HTML question with `<img>logo.png</img>` (no such file), and an
    SVG answer."""
    return [
        {"messages": [{"role": "user", "content": "What does the <image> token do in LLaVA's prompt?"},
                      {"role": "assistant", "content": "It marks where <image> features are inserted."}]},
        {"conversations": [{"from": "human", "value": "Write a Jinja line that emits <image>."},
                           {"from": "gpt", "value": "{{ '<image>' }}\n"}]},
        {"images": [image], "messages": [
            {"role": "user", "content": [{"type": "image"},
                                         {"type": "text", "text": "Write HTML for this; use <image> as alt text."}]},
            {"role": "assistant", "content": [{"type": "text", "text": '<img src="a.png" alt="<image>">'}]}]},
        {"messages": [{"role": "user", "content": "Fix this HTML: <div><img>logo.png</img></div>"},
                      {"role": "assistant", "content": '<div><img src="logo.png"></div>'}]},
        {"messages": [{"role": "user", "content": "Draw a red dot in SVG."},
                      {"role": "assistant", "content": '<svg><circle r="4" fill="red"/><image href="<image>"/></svg>'}]},
    ]  # fmt: skip
