"""Image files in the awkward shapes real datasets contain, for tests: phone photos with an EXIF orientation tag,
16-bit greyscale, every Pillow mode, animations, and a PNG header announcing more pixels than Pillow allows
(without the pixels, so it costs nothing to write)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

ORIENTATION_TAG = 0x0112


def exif_photo(path: str | Path, size: tuple[int, int] = (112, 56), orientation: int = 6) -> Path:
    """A JPEG stored `size` (width, height) wide with an EXIF orientation tag: 6 means "rotate 90° clockwise to
    view", so the upright image is height x width. The left half is red, the right half blue as stored."""
    width, height = size
    pixels = np.zeros((height, width, 3), dtype="uint8")
    pixels[:, : width // 2] = (220, 20, 30)
    pixels[:, width // 2 :] = (40, 80, 235)
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    Image.fromarray(pixels).save(path, "JPEG", exif=exif, quality=95)
    return Path(path)


def gradient_16bit(size: tuple[int, int] = (112, 56)) -> np.ndarray:
    """A horizontal 16-bit ramp 0..65535 over `width` columns ([height, width] uint16)."""
    width, height = size
    row = np.linspace(0, 65535, width).round().astype("uint16")
    return np.tile(row, (height, 1))


def png_16bit(path: str | Path, size: tuple[int, int] = (112, 56)) -> Path:
    """A 16-bit greyscale PNG (Pillow opens it as mode I;16) holding `gradient_16bit(size)`."""
    Image.fromarray(gradient_16bit(size)).save(path)
    return Path(path)


def mode_image(mode: str, size: tuple[int, int] = (56, 84), seed: int = 0) -> Image.Image:
    """A random image in Pillow `mode` (P with a transparent palette entry, animations excluded)."""
    rng = np.random.default_rng(seed)
    width, height = size
    rgba = rng.integers(0, 256, (height, width, 4), dtype="uint8")
    values = rng.integers(0, 65536, (height, width))
    if mode == "I;16":
        return Image.fromarray(values.astype("uint16"))
    if mode == "I;16B":  # built from bytes: Pillow's convert() from I;16 would clip at 255
        return Image.frombytes(mode, size, values.astype(">u2").tobytes())
    if mode == "I":
        return Image.fromarray(values.astype("int32"))
    if mode == "F":
        return Image.fromarray(rng.random((height, width), dtype="float32"))
    if mode == "P":
        image = Image.fromarray(rgba[..., :3]).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        image.info["transparency"] = 0
        return image
    return Image.fromarray(rgba, "RGBA").convert(mode)


def animated_gif(path: str | Path, size: tuple[int, int] = (56, 56)) -> Path:
    """A two-frame GIF: a red first frame, a blue second one."""
    frames = [Image.new("RGB", size, (255, 0, 0)), Image.new("RGB", size, (0, 0, 255))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return Path(path)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png_header(width: int = 20000, height: int = 20000) -> bytes:
    """A PNG whose header announces `width` x `height` RGB pixels (far beyond Pillow's decompression-bomb limit by
    default) followed by a token amount of data: readers that trust the header see the size, decoding fails."""
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")


def png_bytes(color: tuple[int, int, int] = (0, 200, 0), size: tuple[int, int] = (56, 56)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()
