"""Decoding image bytes (or in-memory arrays) to 3-channel RGB uint8 tensors.

Grayscale, CMYK/YCCK JPEGs, RGBA and palette PNGs all come out as RGB, matching Pillow's
``Image.convert("RGB")`` (alpha is dropped, not composited). JPEGs use the accurate integer
IDCT so decoded pixels equal Pillow's/libjpeg's defaults instead of the fast approximation.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

# One MCU (at most 16 px with 2x chroma subsampling).
_JPEG_MARGIN = 16

IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WebP")
# A GIF's frames and extensions walked by the header check (two blocks per animation frame).
MAX_GIF_BLOCKS = 4096
_UNKNOWN, _JPEG, _PNG, _GIF, _BMP, _WEBP, _ANIMATED_WEBP = range(7)
# Header bytes read past the end of short files come from this zero padding (substr refuses
# positions beyond the string).
_HEADER_PAD = b"\0" * 32


def _bytes_at(padded: tf.Tensor, pos, count: int) -> tf.Tensor:
    """int64 [count] of the bytes of ``padded`` from ``pos``."""
    chunk = tf.strings.substr(padded, tf.cast(pos, tf.int32), count)
    return tf.reshape(tf.cast(tf.io.decode_raw(chunk, tf.uint8), tf.int64), [count])


def _little_endian(values: tf.Tensor) -> tf.Tensor:
    weights = tf.constant([1 << (8 * i) for i in range(values.shape[0])], tf.int64)
    return tf.reduce_sum(values * weights)


def _big_endian(values: tf.Tensor) -> tf.Tensor:
    return _little_endian(values[::-1])


def _format_of(padded: tf.Tensor) -> tf.Tensor:
    """The format code the way ``tf.io.decode_image`` sniffs it (its magic numbers)."""
    head = _bytes_at(padded, 0, 32)

    def starts(magic: bytes, at: int = 0):
        return tf.reduce_all(tf.equal(head[at:at + len(magic)], tf.constant(list(magic), tf.int64)))

    webp = tf.logical_and(starts(b"RIFF"), starts(b"WEBP", 8))
    animated = tf.logical_and(starts(b"VP8X", 12), tf.not_equal(tf.bitwise.bitwise_and(head[20], 2), 0))
    code = tf.constant(_UNKNOWN, tf.int32)
    for condition, value in [
        (webp, tf.where(animated, _ANIMATED_WEBP, _WEBP)),
        (starts(b"BM"), _BMP),
        (starts(b"GIF8"), _GIF),
        (starts(b"\x89PNG\r\n\x1a\n"), _PNG),
        (starts(b"\xff\xd8\xff"), _JPEG),
    ]:
        code = tf.where(condition, tf.cast(value, tf.int32), code)
    return code


def _gif_size(padded: tf.Tensor, length: tf.Tensor) -> tf.Tensor:
    """``[height, width, decoded pixels, too many blocks]`` of a GIF, from its block structure.

    TF's GIF decoder allocates every frame at the largest frame's width x height, so the pixels
    to decode are frames x max width x max height, whatever the logical screen says. Data
    sub-block chains (size byte, data, ..., 0) are skipped by pointer jumping over all positions
    at once (log2(bytes) gathers), so the walk costs one step per block, not per sub-block; a
    GIF of more than ``MAX_GIF_BLOCKS`` blocks (frames and extensions) is refused.
    """
    raw = tf.io.decode_raw(padded, tf.uint8)
    total = tf.shape(raw, out_type=tf.int64)[0]
    # Pointer jumping in int32 (4 bytes per position of the file, not 8).
    bytes32, end32 = tf.cast(raw, tf.int32), tf.cast(length, tf.int32)
    positions = tf.range(tf.shape(bytes32)[0])
    # nxt[j]: where the sub-block chain at j goes; terminators (size 0) and the end are fixed.
    nxt = tf.where(tf.logical_or(positions >= end32, tf.equal(bytes32, 0)), positions,
                   tf.minimum(positions + 1 + bytes32, end32))
    # Enough doublings for a chain of `total` steps (ceil(log2(total + 1)) + 1).
    rounds = tf.cast(tf.math.ceil(tf.math.log(tf.cast(total, tf.float64) + 1.0)
                                  / tf.math.log(tf.constant(2.0, tf.float64))), tf.int32) + 1
    _, chain_end = tf.while_loop(lambda i, n: i < rounds, lambda i, n: (i + 1, tf.gather(n, n)),
                                 (tf.constant(0), nxt))

    def color_table(packed):
        return tf.where(tf.bitwise.bitwise_and(packed, 0x80) > 0,
                        3 * tf.bitwise.left_shift(tf.constant(2, tf.int64), tf.bitwise.bitwise_and(packed, 7)),
                        tf.constant(0, tf.int64))

    def after_chain(start):  # the byte after the chain's terminator
        return tf.cast(tf.gather(chain_end, tf.minimum(start, total - 1)), tf.int64) + 1

    zero = tf.constant(0, tf.int64)

    def body(pos, frames, max_w, max_h, done):
        b = tf.cast(tf.gather(bytes32, tf.minimum(pos + tf.range(10, dtype=tf.int64), total - 1)), tf.int64)
        # 0x21 extension: label, then sub-blocks; 0x2C image: 9 descriptor bytes, a local
        # colour table, the LZW code size byte, then sub-blocks; 0x3B trailer (or junk): stop.
        is_image = tf.equal(b[0], 0x2C)
        is_extension = tf.equal(b[0], 0x21)
        next_pos = tf.where(is_image, after_chain(pos + 11 + color_table(b[9])), after_chain(pos + 2))
        width, height = _little_endian(b[5:7]), _little_endian(b[7:9])
        return (
            next_pos,
            frames + tf.cast(is_image, tf.int64),
            tf.where(is_image, tf.maximum(max_w, width), max_w),
            tf.where(is_image, tf.maximum(max_h, height), max_h),
            tf.logical_not(tf.logical_or(is_image, is_extension)),
        )

    pos, frames, max_w, max_h, done = tf.while_loop(
        lambda pos, frames, max_w, max_h, done: tf.logical_and(tf.logical_not(done), pos < length),
        body,
        (13 + color_table(tf.cast(bytes32[10], tf.int64)), zero, zero, zero, tf.constant(False)),
        parallel_iterations=1,
        maximum_iterations=MAX_GIF_BLOCKS,
    )
    unfinished = tf.logical_and(tf.logical_not(done), pos < length)
    return tf.stack([max_h, max_w, tf.maximum(frames, 1) * max_w * max_h, tf.cast(unfinished, tf.int64)])


def _image_size(padded: tf.Tensor, data: tf.Tensor, code: tf.Tensor, length: tf.Tensor) -> tf.Tensor:
    """``[height, width, pixels the decoder allocates, too many GIF blocks]`` (int64), read
    from the header (GIF: the block structure) only."""

    def still(height, width):
        return tf.stack([height, width, height * width, tf.constant(0, tf.int64)])

    def jpeg():
        shape = tf.cast(tf.io.extract_jpeg_shape(data), tf.int64)  # parses the header only
        return still(shape[0], shape[1])

    def png():  # IHDR, the first chunk: width, height big-endian at 16 and 20
        return still(_big_endian(_bytes_at(padded, 20, 4)), _big_endian(_bytes_at(padded, 16, 4)))

    def bmp():  # BITMAPINFOHEADER: signed little-endian width at 18, height at 22 (< 0: top-down)
        def signed(value):
            return tf.where(value >= 1 << 31, value - (1 << 32), value)

        return still(tf.abs(signed(_little_endian(_bytes_at(padded, 22, 4)))),
                     tf.abs(signed(_little_endian(_bytes_at(padded, 18, 4)))))

    def webp():
        chunk = _bytes_at(padded, 12, 4)
        head = _bytes_at(padded, 20, 10)
        lossy = tf.reduce_all(tf.equal(chunk, tf.constant(list(b"VP8 "), tf.int64)))
        lossless = tf.reduce_all(tf.equal(chunk, tf.constant(list(b"VP8L"), tf.int64)))
        # VP8: 14-bit sizes at 26 and 28; VP8L: (width-1, height-1) as 14-bit fields from byte 21;
        # VP8X: 24-bit (width-1, height-1) at 24 and 27.
        vp8_w = tf.bitwise.bitwise_and(_little_endian(head[6:8]), 0x3FFF)
        vp8_h = tf.bitwise.bitwise_and(_little_endian(head[8:10]), 0x3FFF)
        bits = _little_endian(head[1:5])
        vp8l_w = tf.bitwise.bitwise_and(bits, 0x3FFF) + 1
        vp8l_h = tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 14), 0x3FFF) + 1
        vp8x_w = _little_endian(head[4:7]) + 1
        vp8x_h = _little_endian(head[7:10]) + 1
        width = tf.where(lossy, vp8_w, tf.where(lossless, vp8l_w, vp8x_w))
        height = tf.where(lossy, vp8_h, tf.where(lossless, vp8l_h, vp8x_h))
        return still(height, width)

    def unknown():
        return tf.constant([0, 0, 0, 0], tf.int64)

    return tf.switch_case(code, [unknown, jpeg, png, lambda: _gif_size(padded, length), bmp, webp, webp])


def check_image_header(data: tf.Tensor, max_pixels: int) -> list:
    """Assert ops refusing an encoded image before it is decoded; run them first.

    The header alone gives the format and size (``extract_jpeg_shape`` for JPEG; the PNG IHDR,
    BMP info header, WebP VP8/VP8L/VP8X headers and, for GIF, every frame descriptor, read with
    ``tf.strings.substr`` + ``tf.io.decode_raw``), so nothing large is allocated for a refused
    image. Each assertion fails with ``InvalidArgumentError`` naming the problem: a format other
    than JPEG, PNG, GIF, BMP or WebP; an animated WebP; a zero width or height; or more pixels to
    decode (all frames, for a GIF) than ``max_pixels``; a GIF of more than ``MAX_GIF_BLOCKS``
    blocks.

    Args:
        data: a scalar string tensor holding the encoded file.
        max_pixels: the most pixels the decoder may allocate.

    Returns:
        A list of ops; use them as ``tf.control_dependencies`` of the decode.

    Example:
        >>> with tf.control_dependencies(check_image_header(data, 4096 * 4096)):  # doctest: +SKIP
        ...     image = tf.io.decode_image(data)
    """
    max_pixels = int(max_pixels)
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}.")
    data = tf.convert_to_tensor(data, tf.string)
    length = tf.cast(tf.strings.length(data), tf.int64)
    padded = tf.strings.join([data, tf.constant(_HEADER_PAD)])
    code = _format_of(padded)
    known = tf.debugging.Assert(
        tf.not_equal(code, _UNKNOWN),
        [f"Unknown image format: the bytes are not {', '.join(IMAGE_FORMATS[:-1])} or "
         f"{IMAGE_FORMATS[-1]} (or are not an image at all)."],
    )
    still = tf.debugging.Assert(
        tf.not_equal(code, _ANIMATED_WEBP),
        ["Animated WebP images are not supported; send a still image (e.g. its first frame as PNG)."],
    )
    with tf.control_dependencies([known, still]):
        size = _image_size(padded, data, code, length)
    height, width, pixels = size[0], size[1], size[2]
    walkable = tf.debugging.Assert(
        tf.equal(size[3], 0),
        [f"The GIF has more than {MAX_GIF_BLOCKS} blocks (frames and extensions); send a still "
         "image (PNG or JPEG)."],
    )
    nonempty = tf.debugging.Assert(
        tf.logical_and(height >= 1, width >= 1),
        [tf.strings.format("The image has no pixels: its header says {} x {} (width x height).",
                           (width, height))],
    )
    small = tf.debugging.Assert(
        tf.logical_and(height * width <= max_pixels, pixels <= max_pixels),
        [tf.strings.format(
            "The image is {} x {} pixels (width x height; {} pixels to decode, all frames "
            f"counted), above the limit of {max_pixels} pixels (max_image_pixels); send a "
            "smaller image.", (width, height, pixels))],
    )
    return [known, still, walkable, nonempty, small]


def decode_rgb(data: tf.Tensor, max_pixels: "int | None" = None) -> tf.Tensor:
    """Decodes JPEG/PNG/GIF/BMP/WebP bytes to uint8 RGB of shape (H, W, 3).

    Args:
        data: a scalar string tensor holding the encoded file.
        max_pixels: None decodes anything; an int first checks the header
            (:func:`check_image_header`) and refuses bigger images, unknown formats and
            animated WebP before decoding (what served images need).

    Returns:
        uint8 tensor (H, W, 3). Raises ``tf.errors.InvalidArgumentError`` (at run time) for
        corrupt, truncated or non-image data (the pipelines filter those out beforehand) and for
        images the header check refuses.

    Example:
        >>> image = decode_rgb(tf.io.read_file("photo.jpg"))  # doctest: +SKIP
    """
    if max_pixels is not None:
        with tf.control_dependencies(check_image_header(data, max_pixels)):
            data = tf.identity(data)
    image = tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False),
    )
    return tf.ensure_shape(image, [None, None, 3])


def decode_rgb_window(data: tf.Tensor, window_of: Callable[[tf.Tensor], tf.Tensor]) -> tf.Tensor:
    """Decodes only a window of the image: ``window_of(shape)`` -> ``[top, left, height, width]``.

    JPEGs are read with ``decode_and_crop_jpeg`` (the header gives the shape, only the window is
    decoded), which is what makes random-resized-crop training cheap on large photos; other
    formats are decoded whole and sliced. Pixels equal ``decode_rgb`` followed by the slice.

    Args:
        data: scalar string tensor of the encoded file.
        window_of: maps the image shape (int32 [3]) to the int32 window.

    Returns:
        uint8 RGB (height, width, 3).
    """

    def jpeg():
        shape = tf.io.extract_jpeg_shape(data)
        top, left, height, width = tf.unstack(window_of(shape))
        # libjpeg's chroma upsampling replicates the edge pixels of a cropped decode, so decode a
        # margin around the window (clipped to the image) and cut it off: pixels then equal a
        # full decode.
        top0 = tf.maximum(top - _JPEG_MARGIN, 0)
        left0 = tf.maximum(left - _JPEG_MARGIN, 0)
        bottom1 = tf.minimum(top + height + _JPEG_MARGIN, shape[0])
        right1 = tf.minimum(left + width + _JPEG_MARGIN, shape[1])
        padded = tf.io.decode_and_crop_jpeg(
            data, tf.stack([top0, left0, bottom1 - top0, right1 - left0]), channels=3,
            dct_method="INTEGER_ACCURATE",
        )
        return padded[top - top0:top - top0 + height, left - left0:left - left0 + width, :]

    def other():
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        window = window_of(tf.shape(image))
        return image[window[0]:window[0] + window[2], window[1]:window[1] + window[3], :]

    return tf.ensure_shape(tf.cond(tf.io.is_jpeg(data), jpeg, other), [None, None, 3])


def read_rgb(path: tf.Tensor) -> tf.Tensor:
    """Reads and decodes the image file at ``path`` (scalar string) to uint8 RGB (H, W, 3)."""
    return decode_rgb(tf.io.read_file(path))


def array_to_rgb(image: tf.Tensor) -> tf.Tensor:
    """Makes an in-memory image (H, W, C) with C in {1, 3, 4} RGB: gray is repeated, alpha dropped."""
    channels = image.shape[-1]
    if channels == 1:
        return tf.repeat(image, 3, axis=-1)
    if channels == 3:
        return image
    if channels == 4:
        return image[..., :3]
    raise ValueError(
        f"in-memory images must have 1, 3 or 4 channels (gray, RGB, RGBA), got shape {image.shape}."
    )
