"""The image reader: header sizes after EXIF orientation, 8-bit RGB from every mode, the pixel limit, inline bytes
and URLs fetched into a cache (from a local HTTP server: a good image, a 404 and a timeout)."""

from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from paddlemix.datasets.conversation import ImageBytes, SampleError
from paddlemix.processors.images import DEFAULT_MAX_IMAGE_PIXELS, ImageReader
from paddlemix.testing.wild_images import (
    animated_gif,
    exif_photo,
    gradient_16bit,
    huge_png_header,
    mode_image,
    png_16bit,
    png_bytes,
)


def test_default_pixel_limit_is_pillows() -> None:
    assert DEFAULT_MAX_IMAGE_PIXELS == Image.MAX_IMAGE_PIXELS


def test_exif_orientation_is_applied_to_header_size_and_pixels(tmp_path: Path) -> None:
    photo = exif_photo(tmp_path / "photo.jpg", size=(112, 56), orientation=6)
    reader = ImageReader()
    assert reader.size(str(photo)) == (56, 112)
    image = np.asarray(reader.load(str(photo)))
    assert image.shape == (112, 56, 3)
    # Stored left half red: rotated 90 degrees clockwise it becomes the top half.
    assert image[10, 28, 0] > 150 and image[10, 28, 2] < 100
    assert image[100, 28, 2] > 150 and image[100, 28, 0] < 100


def test_16_bit_greyscale_keeps_its_levels(tmp_path: Path) -> None:
    path = png_16bit(tmp_path / "grey16.png", size=(112, 56))
    with Image.open(path) as raw:
        assert raw.mode == "I;16"
    rgb = np.asarray(ImageReader().load(str(path)))
    expected = np.floor(gradient_16bit((112, 56)) / 257 + 0.5).astype("uint8")
    np.testing.assert_array_equal(rgb[..., 0], expected)
    np.testing.assert_array_equal(rgb[..., 1], rgb[..., 2])
    assert len(np.unique(rgb)) == 112


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I;16B", "I", "F"])
def test_every_mode_becomes_8_bit_rgb(tmp_path: Path, mode: str) -> None:
    image = mode_image(mode)
    path = tmp_path / ("x.tiff" if mode in ("CMYK", "I;16B", "I", "F") else "x.png")
    image.save(path)
    out = ImageReader().load(str(path))
    assert (out.mode, out.size) == ("RGB", image.size)
    levels = len(np.unique(np.asarray(out)))
    # Random content keeps its spread (a 16-colour palette, two levels for bilevel), nothing is clipped to white.
    assert levels == {"1": 2}.get(mode, levels) and levels >= {"1": 2, "P": 8}.get(mode, 100)


def test_animation_uses_its_first_frame(tmp_path: Path) -> None:
    rgb = np.asarray(ImageReader().load(str(animated_gif(tmp_path / "a.gif"))))
    assert tuple(rgb[0, 0]) == (255, 0, 0)


def test_oversized_image_is_a_skip_from_the_header(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    path.write_bytes(huge_png_header(20000, 20000))
    for read in (ImageReader().size, ImageReader().load):
        with pytest.raises(SampleError, match=r"image too large \(20000x20000\)"):
            read(str(path))
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_IMAGE_PIXELS  # Pillow's own setting is left as it was
    small = tmp_path / "small.png"
    Image.new("RGB", (60, 40)).save(small)
    with pytest.raises(SampleError, match=r"image too large \(60x40\)"):
        ImageReader(max_pixels=2000).size(str(small))
    assert ImageReader(max_pixels=2400).size(str(small)) == (60, 40)


def test_inline_bytes_are_read_like_files(tmp_path: Path) -> None:
    ref = ImageBytes(png_bytes((0, 200, 0), (56, 70)), "record bytes")
    reader = ImageReader()
    assert reader.size(ref) == (56, 70)
    assert tuple(np.asarray(reader.load(ref))[0, 0]) == (0, 200, 0)
    with pytest.raises(SampleError, match=r"cannot be decoded: record bytes \(5 bytes\)"):
        reader.size(ImageBytes(b"abcde", "record bytes"))


class _Handler(http.server.BaseHTTPRequestHandler):
    body = png_bytes((10, 20, 30), (56, 56))
    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (the http.server API)
        _Handler.requests.append(self.path)
        if self.path == "/slow.png":
            time.sleep(3)
        if self.path in ("/ok.png", "/slow.png"):
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.body)))
            self.end_headers()
            self.wfile.write(self.body)
        else:
            self.send_error(404)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_urls_are_fetched_once_into_a_cache(server: str, tmp_path: Path) -> None:
    _Handler.requests.clear()
    reader = ImageReader(cache_dir=tmp_path / "cache", timeout=1.0)
    url = f"{server}/ok.png"
    assert reader.size(url) == (56, 56)
    assert tuple(np.asarray(reader.load(url))[0, 0]) == (10, 20, 30)
    assert _Handler.requests == ["/ok.png"]
    assert reader.cached_path(url).read_bytes() == _Handler.body
    assert reader.cached_path(url).parent.parent == tmp_path / "cache"


def test_failed_fetches_are_skips(server: str, tmp_path: Path) -> None:
    reader = ImageReader(cache_dir=tmp_path / "cache", timeout=0.5)
    with pytest.raises(SampleError, match="image URL could not be fetched: .*/missing.png .*404"):
        reader.size(f"{server}/missing.png")
    start = time.monotonic()
    with pytest.raises(SampleError, match="image URL could not be fetched: .*/slow.png .*(Timeout|timed out)"):
        reader.load(f"{server}/slow.png")
    assert time.monotonic() - start < 3
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # nothing cached from failed fetches


def test_image_resolution_bounds_the_longer_side_in_size_and_pixels(tmp_path: Path) -> None:
    # PaddleMIX's Qwen2-VL rule: scale by 512 / longer side, truncate, nearest-neighbour.
    Image.new("RGB", (800, 400), (200, 10, 10)).save(tmp_path / "wide.png")
    Image.new("RGB", (300, 200), (200, 10, 10)).save(tmp_path / "small.png")
    reader = ImageReader(image_resolution=512)
    assert reader.size(str(tmp_path / "wide.png")) == (512, 256) == reader.load(str(tmp_path / "wide.png")).size
    assert reader.size(str(tmp_path / "small.png")) == (300, 200) == reader.load(str(tmp_path / "small.png")).size
    assert ImageReader().size(str(tmp_path / "wide.png")) == (800, 400)
