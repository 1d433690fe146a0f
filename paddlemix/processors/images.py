"""Open the images of a sample as transformers' `load_image` sees them: from a path, inline bytes or an http(s) URL,
EXIF orientation applied, first frame of an animation, every mode brought to 8-bit RGB.

Sizes for planning come from file headers (after EXIF orientation and the `image_resolution` bound), so lengths
are known without decoding pixels; the decoded image of the same file always has that size. Every problem with one image raises `SampleError` with a
reason (the record is skipped, never the run).

Small and thin images (a 332x27 text-line crop, a 27x29 icon) are kept: the model's image processor resizes them as
transformers' `smart_resize` does (Qwen-VL: each side rounded to the patch factor, scaled up to `min_pixels` and
down to `max_pixels`) or as `CLIPImageProcessor` does (LLaVA: shortest edge to `size`, then the centre crop).
Only what those processors cannot take is refused: an aspect ratio over 200 (`smart_resize` raises on it) and
images over the pixel limit (decompression bombs).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from paddlemix.datasets.conversation import ImageBytes, ImageRef, RelativeImagePath, SampleError

MAX_ASPECT_RATIO = 200
# Pillow's decompression-bomb threshold (Image.MAX_IMAGE_PIXELS, 89,478,485 px); the `max_image_pixels` default.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
FETCH_TIMEOUT_SECONDS = 10.0
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "paddlemix" / "images"
# EXIF orientations 5-8 rotate by 90 or 270 degrees: the upright image has width and height swapped.
SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")

# Pillow's bomb check is a process-wide setting read inside Image.open. The reader applies its own limit (with the
# real width and height in the reason), so it opens files with Pillow's check off, under a lock that restores it.
_BOMB_CHECK_LOCK = threading.Lock()


def is_url(ref: ImageRef) -> bool:
    return isinstance(ref, str) and ref.startswith(("http://", "https://"))


def check_size(ref: ImageRef, width: int, height: int, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> None:
    """Reject sizes the image processors cannot take: more pixels than `max_pixels` (a decompression bomb) or an
    aspect ratio over 200 (transformers' `smart_resize` raises on it). Small sides are fine: they are resized up."""
    if max_pixels is not None and width * height > max_pixels:
        raise SampleError(f"image too large ({width}x{height}): {ref} has more than max_image_pixels {max_pixels}")
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise SampleError(f"image aspect ratio over {MAX_ASPECT_RATIO}: {ref} is {width}x{height}")


def bounded_size(width: int, height: int, image_resolution: int | None) -> tuple[int, int]:
    """The size after PaddleMIX's Qwen2-VL `image_resolution` rule: when the longer side exceeds it, both sides are
    scaled by `image_resolution / longer side` and truncated to integers (800x400 at 512 -> 512x256; a 690x15420
    screenshot at 512 -> 22x512), never below 1 px (the processor then resizes small sides up)."""
    if image_resolution is None or max(width, height) <= image_resolution:
        return width, height
    factor = image_resolution / max(width, height)
    return max(1, int(width * factor)), max(1, int(height * factor))


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright) as `ImageOps.exif_transpose` will apply it, read from the header.

    A PNG whose eXIf chunk comes after the pixel data would need decoding to find it; such files count as upright.
    """
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    return int(image.getexif().get(ExifTags.Base.Orientation, 1) or 1)


def upright_size(image: Image.Image) -> tuple[int, int]:
    """Width and height after EXIF orientation, from the header only."""
    width, height = image.size
    return (height, width) if exif_orientation(image) in SWAPPING_ORIENTATIONS else (width, height)


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of `image`.

    8-bit modes (1, L, LA, P with or without transparency, RGBA, CMYK, YCbCr, ...) use Pillow's `convert("RGB")`,
    exactly as transformers' `load_image` does (alpha is dropped, not composited). Pillow's own conversion clips
    high-bit-depth modes at 255, which turns a 16-bit photo nearly white, so they are scaled first (rounded):
    I;16* by 1/257 (65535 -> 255); I by 1/257 when its values exceed 255 (16-bit data, as older Pillow decodes
    16-bit PNGs), else as is; F by 255 when its values lie in [0, 1], else as is (Pillow's rule).
    """
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES or mode == "I":
        image = image.convert("I")
        if mode != "I" or image.getextrema()[1] > 255:
            image = image.point(lambda v: v * (1 / 257) + 0.5)
        image = image.convert("L")
    elif mode == "F":
        low, high = image.getextrema()
        if low >= 0 and high <= 1:
            image = image.point(lambda v: v * 255 + 0.5)
        image = image.convert("L")
    if image.mode != "RGB":
        with warnings.catch_warnings():  # Pillow's advice to go through RGBA for palette transparency
            warnings.simplefilter("ignore", UserWarning)
            image = image.convert("RGB")
    return image


class ImageReader:
    """Reads `ImageRef`s (paths, inline bytes, http(s) URLs) for sizes and pixels with one pixel limit.

    URLs are fetched once with `requests` (timeout `timeout` seconds) into `cache_dir`, named by the SHA-256 of the
    URL; a failed fetch is a skip reason, and a later read tries again. `image_resolution` (None = as stored) bounds
    the longer side as PaddleMIX's Qwen2-VL tool does (`bounded_size`, nearest-neighbour resampling), in `size` and
    `load` alike.
    """

    def __init__(
        self,
        max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        cache_dir: str | Path | None = None,
        timeout: float = FETCH_TIMEOUT_SECONDS,
        image_resolution: int | None = None,
    ):
        self.max_pixels = max_pixels
        self.image_resolution = image_resolution
        self.cache_dir = Path(cache_dir) if cache_dir else DEFAULT_CACHE_DIR
        self.timeout = timeout

    def cached_path(self, url: str) -> Path:
        name = hashlib.sha256(url.encode("utf-8")).hexdigest()
        return self.cache_dir / name[:2] / name

    def fetch(self, url: str, what: str = "image") -> Path:
        """The local copy of `url` (an image, or `what` names it), downloaded on first use; raises SampleError when
        the fetch fails."""
        path = self.cached_path(url)
        if path.is_file():
            return path
        import requests

        try:
            response = requests.get(url, timeout=self.timeout)
            response.raise_for_status()
        except requests.RequestException as err:
            raise SampleError(f"{what} URL could not be fetched: {url} ({type(err).__name__}: {err})") from None
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_bytes(response.content)
        tmp.replace(path)
        return path

    @contextlib.contextmanager
    def open(self, ref: ImageRef) -> Iterator[Image.Image]:
        """The image of `ref`, opened lazily (header read, pixels not decoded) and checked against the limits."""
        if isinstance(ref, ImageBytes):
            source: str | Path | io.BytesIO = io.BytesIO(ref.data)
        elif is_url(ref):
            source = self.fetch(ref)
        else:
            source = ref
        try:
            with _BOMB_CHECK_LOCK:
                saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
                try:
                    image = Image.open(source)
                finally:
                    Image.MAX_IMAGE_PIXELS = saved
        except FileNotFoundError:
            hint = f" ({ref.not_found_hint()})" if isinstance(ref, RelativeImagePath) else ""
            raise SampleError(f"image not found: {ref}{hint}") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise SampleError(f"image cannot be decoded: {ref} ({err})") from None
        with image:
            check_size(ref, *upright_size(image), self.max_pixels)
            yield image

    def size(self, ref: ImageRef) -> tuple[int, int]:
        """Width and height of the upright image, from the header; raises SampleError like `load`."""
        with self.open(ref) as image:
            return self._bounded(ref, *upright_size(image))

    def _bounded(self, ref: ImageRef, width: int, height: int) -> tuple[int, int]:
        size = bounded_size(width, height, self.image_resolution)
        if size != (width, height):
            check_size(ref, *size, None)
        return size

    def load(self, ref: ImageRef) -> Image.Image:
        """The upright first frame as 8-bit RGB; raises SampleError for missing, broken or unusable images."""
        with self.open(ref) as image:
            try:
                rgb = to_rgb(ImageOps.exif_transpose(image))
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
                raise SampleError(f"image cannot be decoded: {ref} ({err})") from None
            size = self._bounded(ref, *rgb.size)
            return rgb if size == rgb.size else rgb.resize(size, resample=Image.NEAREST)
