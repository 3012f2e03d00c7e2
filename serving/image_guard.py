"""Checks encoded images from their headers before anything decodes them.

Why: a 380 KB PNG can declare 20000 x 20000 pixels; decoding it allocates 1.2 GB and takes
seconds. Pillow's ``Image.open`` reads only the header (format, size, mode, frame info), so
every limit here is checked in microseconds and nothing is decompressed. What passes is decoded
later by the model's own graph (``pipelines.decoding.decode_rgb``: JPEG, PNG, GIF, BMP, WebP;
grayscale, palette, RGBA, CMYK/YCCK JPEGs and 16-bit PNGs come out as 8-bit RGB).

Refused with INVALID_ARGUMENT (HTTP 400), each with a message naming the limit or the fix:
not an image / a format outside the allow-list, zero or oversized dimensions, more pixels than
``max_image_pixels``, animated images (more than one frame), and modes the decoder does not
turn into plain RGB.
"""

from __future__ import annotations

import io
import warnings
from typing import Iterable

from serving.errors import invalid_argument

#: What ``pipelines.decoding.decode_rgb`` (TensorFlow's decoders) reads.
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")
#: Pillow modes whose TensorFlow decode equals Pillow's ``convert("RGB")`` (for 16-bit: of the
#: image scaled to 8 bits); tests/test_server_images.py checks each against the served model.
ALLOWED_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr",
                 "I;16", "I;16B", "I;16L", "I")


def image_pixels(data: bytes, max_pixels: int, where: str = "image") -> int:
    """Checks one encoded image from its header; returns its pixel count (width * height).

    Args:
        data: the encoded file.
        max_pixels: the most pixels accepted (``--max_image_pixels``).
        where: names the image in error messages (e.g. ``"input 'image_bytes' [3]"``).

    Raises:
        ServingError: INVALID_ARGUMENT naming the problem.

    Example:
        >>> from serving.synthetic_gallery import synthetic_gallery
        >>> image_pixels(synthetic_gallery([0])[0], 4096 * 4096)
        1024
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # The header is all we read; Pillow's own bomb check would only duplicate ours.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError,
            SyntaxError, EOFError) as error:
        if isinstance(error, Image.DecompressionBombError):
            raise _too_many_pixels(where, _declared_size(data), max_pixels) from None
        raise invalid_argument(
            f"{where}: not a decodable image ({type(error).__name__}); send JPEG, PNG, GIF, BMP "
            "or WebP bytes."
        ) from None
    with image:
        width, height = image.size
        if width < 1 or height < 1:
            raise invalid_argument(f"{where}: the image declares {width} x {height} pixels.")
        if width * height > max_pixels:
            raise _too_many_pixels(where, (width, height), max_pixels)
        if image.mode not in ALLOWED_MODES:
            raise invalid_argument(
                f"{where}: {image.format} images in mode {image.mode} are not supported; convert "
                "to 8-bit RGB (e.g. Pillow's Image.convert('RGB'))."
            )
        try:
            animated = bool(getattr(image, "is_animated", False))
        except (OSError, ValueError, SyntaxError, EOFError):
            raise invalid_argument(f"{where}: the image's frame data is corrupt.") from None
        if animated:
            raise invalid_argument(
                f"{where}: animated {image.format} images are not supported; send one frame as "
                "a still image."
            )
    return width * height


def check_images(images: Iterable[bytes], max_image_pixels: int, max_total_pixels: int,
                 name: str = "image_bytes") -> int:
    """Checks every image of one input; returns the total pixel count.

    Args:
        images: the encoded files (the flattened input).
        max_image_pixels: limit per image.
        max_total_pixels: limit over all of them (one request's decode memory).
        name: the input name, for messages.
    """
    total = 0
    for i, data in enumerate(images):
        total += image_pixels(bytes(data), max_image_pixels, f"Input '{name}' [{i}]")
        if total > max_total_pixels:
            raise invalid_argument(
                f"Input '{name}': the images of this request hold more than {max_total_pixels} "
                f"pixels in total (--max_request_pixels); send fewer or smaller images per request."
            )
    return total


def _declared_size(data: bytes):
    """(width, height) from the header even past Pillow's own bomb limit, or None.

    ``Image.open`` refuses images over twice ``Image.MAX_IMAGE_PIXELS`` before telling their
    size; the format plugins themselves (what ``Image.open`` calls) read only the header.
    """
    from PIL import Image

    Image.init()
    for name in ALLOWED_FORMATS:
        factory, accept = Image.OPEN.get(name, (None, None))
        if factory is None or (accept is not None and not accept(data[:16])):
            continue
        try:
            return factory(io.BytesIO(data), "").size
        except Exception:  # noqa: BLE001 (any parse failure: no size to report)
            continue
    return None


def _too_many_pixels(where: str, size, max_pixels: int):
    declared = f"{size[0]} x {size[1]} = {size[0] * size[1]} pixels" if size else "too many pixels"
    return invalid_argument(
        f"{where}: the image declares {declared}, more than this server decodes "
        f"({max_pixels}, --max_image_pixels); downscale it before sending."
    )
