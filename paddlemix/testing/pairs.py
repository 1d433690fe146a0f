"""Preference pairs from the synthetic shapes data, written in each peer's own file shape.

The chosen answer is the record's right colour, the rejected one another colour (seeded), so a model that learns
the preference must read the image. Image paths are written relative to the pair file, as the peers keep them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from paddlemix.testing.shapes import COLORS

PAIR_FORMATS = ("swift", "llamafactory", "trl", "paddleformers")


def _record(fmt: str, images: list[str], question: str, chosen: str, rejected: str) -> dict[str, Any]:
    """One pair in the shape `fmt` writes it (question holds the `<image>` placeholder)."""
    if fmt == "swift":
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": chosen}],
                "images": images, "rejected_response": rejected}  # fmt: skip
    if fmt == "llamafactory":
        return {"conversations": [{"from": "human", "value": question}], "chosen": {"from": "gpt", "value": chosen},
                "rejected": {"from": "gpt", "value": rejected}, "images": images}  # fmt: skip
    if fmt == "trl":
        text = question.replace("<image>", "")
        content = [{"type": "image"}] * question.count("<image>") + [{"type": "text", "text": text}]
        return {"prompt": [{"role": "user", "content": content}],
                "chosen": [{"role": "assistant", "content": [{"type": "text", "text": chosen}]}],
                "rejected": [{"role": "assistant", "content": [{"type": "text", "text": rejected}]}],
                "images": images}  # fmt: skip
    if fmt == "paddleformers":
        return {"messages": [{"role": "user", "content": question}], "chosen_response": chosen,
                "rejected_response": rejected, "images": images}  # fmt: skip
    raise ValueError(f"unknown pair format {fmt!r}; one of {PAIR_FORMATS}")


def write_shape_pairs(source: str | Path, out: str | Path, fmt: str = "swift", seed: int = 0) -> Path:
    """Pairs for every record of a shapes JSONL file (`messages` + `images`) into `out` (JSONL; TRL: JSON array
    is not needed, JSONL as `datasets` exports it)."""
    source, out = Path(source), Path(out)
    rng = np.random.default_rng(seed)
    lines = []
    for line in source.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        question, right = record["messages"][0]["content"], record["messages"][1]["content"]
        wrong = str(rng.choice([c for c in COLORS if c != right]))
        images = [os.path.relpath(source.parent / p, out.parent) for p in record["images"]]
        lines.append(json.dumps(_record(fmt, images, question, right, wrong)))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def write_bad_pairs(image: str | Path, out: str | Path) -> tuple[Path, list[str]]:
    """A file of one good pair and the bad pairs users report, with the skip reason expected for each."""
    image = str(image)
    ask = [{"role": "user", "content": "<image>What color is it?"}]
    records = [
        ({"messages": [*ask, {"role": "assistant", "content": "red"}], "images": [image],
          "rejected_response": "blue"}, ""),
        ({"messages": [*ask, {"role": "assistant", "content": "red"}], "images": [image]}, "no rejected answer"),
        ({"messages": [*ask, {"role": "assistant", "content": "red"}], "images": [image],
          "rejected_response": "red"}, "identical"),
        ({"messages": [*ask, {"role": "assistant", "content": "red"}], "images": [image, image],
          "rejected_response": "blue"}, "placeholders but 2 images"),
        ({"messages": [*ask, {"role": "assistant", "content": "red"}], "images": [image],
          "rejected_response": "blue " * 400}, "max_length"),
        ({"prompt": "What color?", "chosen": "red"}, "no rejected answer"),
        ({"messages": [*ask, {"role": "assistant", "content": "red"}], "images": [image],
          "rejected_response": ""}, "no rejected answer"),
    ]  # fmt: skip
    out = Path(out)
    out.write_text("\n".join(json.dumps(r) for r, _ in records) + "\n", encoding="utf-8")
    return out, [reason for _, reason in records]
