"""See what trains: the first encoded samples of a source as readable text (labelled spans marked, image tokens
collapsed) or as JSON lines, and the records whose text types special-token strings. Used by check_data's `--show`,
`--dump` and its special-token count.

Shown text (Qwen2.5-VL template, one image of 4 visual tokens; `[[...]]` is what the loss trains):

    <|im_start|>user
    <|vision_start|><|image_pad|>x4<|vision_end|>What color?<|im_end|>
    <|im_start|>assistant
    [[red<|im_end|>]]

A record that types `<|im_end|>` as text shows it as `\\<|im_end|>`: text ids, not the control token.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from paddlemix.datasets.conversation import IMAGE_PLACEHOLDER, plain_text
from paddlemix.datasets.packing import sample_positions
from paddlemix.datasets.sources import SourceDataset
from paddlemix.processors.chat_template import ChatTemplate
from paddlemix.processors.sample_processor import IGNORE_INDEX, SampleProcessor
from paddlemix.processors.text_encoding import contains_special_text

LABEL_START, LABEL_END = "[[", "]]"
DEFAULT_DUMP_SAMPLES = 5  # samples per source that --dump writes when --show does not ask for more
Positions = Callable[[np.ndarray, np.ndarray | None], np.ndarray]


def aligned_labels(shifted: Sequence[int]) -> list[int]:
    """Labels aligned with input_ids (Hugging Face's convention: `labels[t]` is `input_ids[t]` or -100) from the
    encoder's shifted ones (`shifted[t]` is the target of position t)."""
    return [IGNORE_INDEX, *(int(x) for x in shifted[:-1])]


def encoded_preview(
    data: SourceDataset, name: str, encoder: SampleProcessor, template: ChatTemplate, count: int,
    positions: Positions | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """The first `count` records of `data` that encode, as JSON-ready dicts: source, file, record index,
    `input_ids`, `labels` (aligned with input_ids), `image_grid_thw`, with videos `video_grid_thw` and per video
    `video_frames` (sampled frames) and `video_tokens`, and, given `positions`, `position_ids`."""
    out: list[dict[str, Any]] = []
    for i in range(len(data)):
        if len(out) >= count:
            break
        try:
            encoded = encoder(data[i], template)
        except Exception:  # a skipped record is not shown; check_data reports it with its reason
            continue
        file, index = data.locate(i)
        grid = encoded.get("image_grid_thw")
        entry = {"source": name, "file": str(file.path), "index": index,
                 "input_ids": encoded["input_ids"].tolist(), "labels": aligned_labels(encoded["labels"].tolist()),
                 "image_grid_thw": np.asarray(grid).tolist() if grid is not None else []}  # fmt: skip
        if "video_grid_thw" in encoded:
            grids = np.asarray(encoded["video_grid_thw"]).tolist()
            layout = encoder.layout  # frames: temporal patches x frames per patch (sampled counts are even)
            entry["video_grid_thw"] = grids
            entry["video_frames"] = [t * layout.temporal_patch_size for t, _, _ in grids]
            entry["video_tokens"] = [t * h * w // layout.merge_size**2 for t, h, w in grids]
        if positions is not None:
            entry["position_ids"] = np.asarray(sample_positions(positions, encoded)).tolist()
        out.append(entry)
    return out


def _runs(ids: Sequence[int], labels: Sequence[int]) -> list[tuple[bool, list[int]]]:
    """Consecutive ids grouped by whether they are labelled."""
    runs: list[tuple[bool, list[int]]] = []
    for token, label in zip(ids, labels):
        trained = label != IGNORE_INDEX
        if runs and runs[-1][0] == trained:
            runs[-1][1].append(token)
        else:
            runs.append((trained, [token]))
    return runs


def _text(tokenizer: Any, ids: list[int], specials: Sequence[str]) -> str:
    """Decoded ids; a special-token string spelled by text ids (typed in a record) gets a leading backslash, so it
    reads apart from the control token the template wrote."""
    control = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    out, run = [], []
    for k, token in enumerate(ids):
        run.append(token)
        if k + 1 == len(ids) or (ids[k + 1] in control) != (token in control):
            text = tokenizer.decode(run, skip_special_tokens=False)
            out.append(text if token in control else _escape(text, specials))
            run = []
    return "".join(out)


def _escape(text: str, specials: Sequence[str]) -> str:
    for s in specials:
        text = text.replace(s, "\\" + s)
    return text


def _decode(tokenizer: Any, ids: list[int], collapse: dict[int, str], specials: Sequence[str] = ()) -> str:
    """Decoded text where each run of a collapsed id (an image token) reads `<token>xN`."""
    pieces, plain, k = [], [], 0
    while k < len(ids):
        if ids[k] in collapse:
            n = 1
            while k + n < len(ids) and ids[k + n] == ids[k]:
                n += 1
            if plain:
                pieces.append(_text(tokenizer, plain, specials))
                plain = []
            pieces.append(f"{collapse[ids[k]]}x{n}")
            k += n
        else:
            plain.append(ids[k])
            k += 1
    if plain:
        pieces.append(_text(tokenizer, plain, specials))
    return "".join(pieces)


def format_preview(
    entry: dict[str, Any], tokenizer: Any, collapse: dict[int, str], specials: Sequence[str] = ()
) -> str:
    """One encoded sample as text: labelled spans between LABEL_START and LABEL_END, image tokens collapsed,
    special-token strings that are text (`specials` spelled by text ids) behind a backslash."""
    labelled = sum(label != IGNORE_INDEX for label in entry["labels"])
    head = (f"--- {entry['source']} record #{entry['index']}: {len(entry['input_ids'])} tokens, {labelled} labelled, "
            f"{media_summary(entry)}")  # fmt: skip
    body = "".join(
        LABEL_START + _decode(tokenizer, ids, collapse, specials) + LABEL_END
        if trained
        else _decode(tokenizer, ids, collapse, specials)
        for trained, ids in _runs(entry["input_ids"], entry["labels"])
    )
    return head + "\n" + body


def media_summary(entry: dict[str, Any]) -> str:
    """ "images [[1, 2, 24]]", "videos 1 (4 frames, 288 video tokens, grid [[2, 24, 24]])", both, or "images none"
    for a sample with neither."""
    parts = [f"images {entry['image_grid_thw']}"] if entry["image_grid_thw"] else []
    if entry.get("video_grid_thw"):
        frames, tokens = sum(entry["video_frames"]), sum(entry["video_tokens"])
        parts.append(f"videos {len(entry['video_grid_thw'])} ({frames} frames, {tokens} video tokens, grid "
                     f"{entry['video_grid_thw']})")  # fmt: skip
    return ", ".join(parts) or "images none"


def collapsed_tokens(tokenizer: Any, names: Sequence[str]) -> dict[int, str]:
    """{id: name} of the image/video tokens the tokenizer has among `names`."""
    vocab = tokenizer.get_vocab()
    return {int(vocab[n]): n for n in names if n in vocab}


def special_text_records(data: SourceDataset, specials: Sequence[str], examples: int = 3) -> dict[str, Any]:
    """Records whose own text types special-token strings (`<|im_end|>`, `<|im_start|>`, ...): how many, which
    strings how often, and the first few as "file #index: string". Records that cannot be read are left out."""
    found: Counter[str] = Counter()
    records, shown = 0, []
    for i in range(len(data)):
        try:
            text = "".join(plain_text(m.content.replace(IMAGE_PLACEHOLDER, "")) for m in data[i].messages)
        except Exception:  # unreadable records are counted by the skip report, not here
            continue
        if not contains_special_text(text, specials):
            continue
        records += 1
        hits = [s for s in specials if s in text]
        found.update(hits)
        if len(shown) < examples:
            file, index = data.locate(i)
            shown.append(f"{file.path} #{index}: {hits[0]}")
    return {"records": records, "strings": dict(found.most_common()), "examples": shown}
