"""A data set mixing the record and file shapes real data sets come in, with a known set of records that must be
skipped: tests train on it end to end and check that `check_data` reaches the same verdict per record."""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from paddlemix.testing.wild_images import animated_gif, exif_photo, huge_png_header, png_16bit

BOM = b"\xef\xbb\xbf"


@contextlib.contextmanager
def image_server(files: dict[str, bytes]) -> Iterator[str]:
    """Serve `files` (URL path -> body) on 127.0.0.1 from a thread; other paths answer 404. Yields the base URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the http.server API)
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _chat(images: list[Any] | None, user: Any, answer: Any = "red", **extra: Any) -> dict[str, Any]:
    record = {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}], **extra}
    if images is not None:
        record["images"] = images
    return record


def _llava(image: str, turns: list[tuple[str, str]]) -> dict[str, Any]:
    return {"image": image, "conversations": [{"from": f, "value": v} for f, v in turns]}


def make_wild_dataset(folder: Path, good_images: list[Path], base_url: str) -> tuple[list[dict], set[tuple[str, int]]]:
    """Write the files under `folder` and return (dataset.train entries, expected skips as (file name, index)).

    `good_images` are at least six usable PNGs; `base_url` serves one of them at /ok.png (see `image_server`).
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "img").mkdir(exist_ok=True)
    local = [shutil.copy(p, folder / "img" / f"{i}.png") for i, p in enumerate(good_images[:6])]
    raw = [Path(p).read_bytes() for p in local]
    b64 = [base64.b64encode(b).decode() for b in raw]
    (folder / "huge.png").write_bytes(huge_png_header())
    exif_photo(folder / "photo.jpg")
    png_16bit(folder / "grey16.png")
    animated_gif(folder / "anim.gif")
    q = "<image>What color is it?"
    chatml = [
        _chat(["img/0.png"], q),  # 0 plain path
        _chat(None, [{"type": "image", "image": "img/1.png"}, {"type": "text", "text": "What color?"}]),  # 1
        _chat([{"bytes": b64[2], "path": "two.png"}], q),  # 2 HF datasets / ms-swift dict with base64 bytes
        _chat([f"data:image/png;base64,{b64[3]}"], q),  # 3 data URI
        _chat([f"{base_url}/ok.png"], q),  # 4 URL
        _chat([f"{base_url}/missing.png"], q),  # 5 URL answering 404: skipped
        _chat(["photo.jpg"], q),  # 6 phone photo with EXIF orientation
        _chat(["grey16.png"], q),  # 7 16-bit greyscale
        _chat(["huge.png"], q),  # 8 header beyond Pillow's pixel limit: skipped
        _llava("img/0.png", [("human", "What is it?"), ("gpt", "This: <image>")]),  # 9 image in an answer: skipped
        _llava("img/0.png", [("gpt", "Hi"), ("human", "<image>Color?"), ("gpt", "red")]),  # 10 answer first: skipped
        {"images": ["img/4.png"], "messages": [  # 11 first answer not trained (ms-swift "loss": false)
            {"role": "user", "content": q}, {"role": "assistant", "content": "blue", "loss": False},
            {"role": "user", "content": "Sure?"}, {"role": "assistant", "content": "red", "loss": True}]},
        {"images": ["img/5.png"], "messages": [  # 12 nothing to train: skipped
            {"role": "user", "content": q}, {"role": "assistant", "content": "red", "loss": False}]},
        _chat(["anim.gif"], q),  # 13 animation
        _chat(None, [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64[1]}"}},
                     {"type": "text", "text": "What color?"}]),  # 14 OpenAI image_url part
    ]  # fmt: skip
    (folder / "chatml.jsonl").write_bytes(BOM + "\n".join(json.dumps(r) for r in chatml).encode() + b"\n")
    (folder / "single.json").write_text(json.dumps(_chat(["img/2.png"], q), indent=2))
    llava = [_llava(f"img/{i}.png", [("human", "<image>\nWhat color?"), ("gpt", "red")]) for i in range(3)]
    (folder / "llava_bom.json").write_bytes(BOM + json.dumps(llava, indent=1).encode())
    vqa = {"image": "img/3.png", "question": "Is it red?", "answer": ["no"] + ["yes"] * 9}
    (folder / "vqa.jsonl").write_text(json.dumps(vqa) + "\n")
    _write_parquet(folder / "data.parquet", raw)
    sources = [
        {"name": "chatml_dataset", "data_files": [str(folder / "chatml.jsonl"), str(folder / "single.json")]},
        {"name": "chatml_dataset", "data_files": str(folder / "llava_bom.json")},
        {"name": "coco_vqa", "data_files": str(folder / "vqa.jsonl")},
        {"name": "chatml_dataset", "data_files": str(folder / "data.parquet")},
    ]
    skipped = {("chatml.jsonl", i) for i in (5, 8, 9, 10, 12)} | {("data.parquet", 2)}
    return sources, skipped


def _write_parquet(path: Path, raw: list[bytes]) -> None:
    """Rows as Hugging Face datasets writes them: an `images` list of {bytes, path} structs and typed messages."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def row(image: dict[str, Any]) -> dict[str, Any]:
        return {"images": [image], "messages": [
            {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "Color?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]}  # fmt: skip

    rows = [row({"bytes": raw[0], "path": "a.png"}), row({"bytes": None, "path": "img/5.png"}),
            row({"bytes": b"\x89PNG broken", "path": "b.png"})]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=2)
