"""Synthetic OCR data: rendered text lines with known transcriptions, in ERNIEKit's record format.

Each image is one line of 168 x 56 pixels (3 cells of 56 x 56: PaddleOCR-VL's image processor keeps it as 4 x 12
patches of 14 pixels, 2 x 6 merged tokens, so each letter spans 2 x 2 tokens) holding one word of `WORDS` drawn with
Pillow's default font (FreeType, 44 px, bold strokes), one letter per cell, with up to 3 pixels of jitter and
varying grey levels (background 200-255, ink 0-89). Held-out lines are new renderings (other greys and jitter) of
the same words. Records are ERNIEKit's (`image_info` + `text_info`, the task prompt `OCR:` as "mask" and the word as
"no_mask"), the format PaddleOCR-VL is fine-tuned on; demos and tests train on them and score held-out lines by CER.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CELL = 56  # a letter's square: 2 x 2 merged tokens (4 x 4 patches of 14 pixels)
CELLS = 3
STROKE = 2  # bold strokes: thin ones take a tiny vision tower far longer to tell apart
WORDS = ("cat", "dog", "sun", "map", "key", "box", "pen", "cup", "hat", "bus", "car", "egg", "fox", "ink", "jam",
         "leg", "net", "owl", "pig", "rug", "toy", "van", "web", "zip")  # fmt: skip
MAX_START = 0  # every word of WORDS fills the line
PROMPT = "OCR:"
IMAGE_DIR = "images"


def render_line(text: str, rng: np.random.Generator, start: int = 0) -> Image.Image:
    """`text` drawn one character per cell from cell `start` on a light background, RGB, 168 x 28."""
    font = ImageFont.load_default(size=44)
    background = int(rng.integers(200, 256))
    image = Image.new("RGB", (CELL * CELLS, CELL), (background,) * 3)
    draw = ImageDraw.Draw(image)
    ink = int(rng.integers(0, 90))
    for i, char in enumerate(text, start):
        left, top, right, bottom = draw.textbbox((0, 0), char, font=font, stroke_width=STROKE)
        x = i * CELL + (CELL - (right - left)) // 2 - left + int(rng.integers(-3, 4))
        y = (CELL - (bottom - top)) // 2 - top + int(rng.integers(-3, 4))
        draw.text((x, y), char, fill=(ink, ink, ink), font=font, stroke_width=STROKE, stroke_fill=(ink, ink, ink))
    return image


def erniekit_record(image: str, text: str, prompt: str = PROMPT) -> dict:
    """One ERNIEKit record: the image before the prompt (a "mask" turn), the transcription as the answer."""
    return {"image_info": [{"image_url": image, "matched_text_index": 0}],
            "text_info": [{"text": prompt, "tag": "mask"}, {"text": text, "tag": "no_mask"}]}  # fmt: skip


def make_text_lines_dataset(
    out_dir: str | Path, n_train: int = 800, n_eval: int = 80, seed: int = 0, n_words: int = len(WORDS)
) -> dict:
    """Write `images/{train,eval}_*.png` and `train.jsonl` / `eval.jsonl` (ERNIEKit records, image paths relative
    to the folder) into `out_dir`, lines of the first `n_words` of WORDS; returns the file paths."""
    out = Path(out_dir)
    (out / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = {}
    for split, count in (("train", n_train), ("eval", n_eval)):
        lines = []
        for k in range(count):
            word = WORDS[int(rng.integers(n_words))]
            name = f"{IMAGE_DIR}/{split}_{k}.png"
            render_line(word, rng, int(rng.integers(0, MAX_START + 1))).save(out / name)
            lines.append(json.dumps(erniekit_record(name, word)))
        paths[split] = out / f"{split}.jsonl"
        paths[split].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths
