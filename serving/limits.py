"""The service's input limits, and the JSON guards that apply them before parsing.

Why a guard before ``json.loads``: Python's JSON decoder recurses once per nesting level, so a
body of ``[[[[...]]]]`` nested 200,000 deep raises ``RecursionError`` from deep inside the parser
(a 500, and a stack walk per request). :func:`check_json_depth` measures the nesting of a body in
C-speed passes (strings removed by one regex, brackets counted with NumPy) and refuses it with
INVALID_ARGUMENT before the parser sees it (skipped when the body holds too few brackets to
nest that deep at all, as ordinary predict bodies do). The body size itself is bounded by the
HTTP layer (``max_body_bytes``) before any of this runs.

Defaults (all flags of ``python -m serving.server``):

==========================  =================  ==============================================
limit                       default            answer when exceeded
==========================  =================  ==============================================
``max_body_bytes``          16 MiB             413 RESOURCE_EXHAUSTED
``max_json_depth``          64                 400 INVALID_ARGUMENT
``max_instances``           256 per request    400 INVALID_ARGUMENT
``max_image_pixels``        4096 * 4096        400 INVALID_ARGUMENT (checked from the header)
``max_request_pixels``      4 * max_image_pix  400 INVALID_ARGUMENT (sum over one request)
==========================  =================  ==============================================
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import numpy as np

# The served-image pixel limit is the export's (its serving_default checks the same number).
from pipelines.image_limits import DEFAULT_MAX_IMAGE_PIXELS
from serving.errors import invalid_argument

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_JSON_DEPTH = 64
DEFAULT_MAX_INSTANCES = 256

# A JSON string: a quote, then runs of ordinary characters or escapes, then a quote ("unrolled"
# so the regex engine never backtracks or recurses).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_STEP = np.zeros(256, np.int8)  # +1 for an opening bracket, -1 for a closing one
_STEP[list(b"[{")] = 1
_STEP[list(b"]}")] = -1
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))


@dataclasses.dataclass(frozen=True)
class Limits:
    """Size limits applied to every request before the expensive work.

    Attributes:
        max_body_bytes: request bodies larger than this get 413 (enforced while reading).
        max_json_depth: deepest allowed nesting of JSON arrays/objects.
        max_instances: most rows (the batch dimension) of any input in one request.
        max_image_pixels: most pixels (width * height) of one encoded image.
        max_request_pixels: most pixels summed over the images of one request (and of one
            dynamically merged batch): bounds the decoded memory of one model call.
    """

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH
    max_instances: int = DEFAULT_MAX_INSTANCES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_request_pixels: int = 4 * DEFAULT_MAX_IMAGE_PIXELS

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"--{field.name} must be a positive integer, got {value!r}.")


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays/objects in ``body`` (brackets inside strings ignored).

    Example:
        >>> json_depth(b'{"a": [[1], "]]]"]}')
        3
    """
    structural = _JSON_STRING.sub(b"", body)
    brackets = structural.translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    steps = np.take(_STEP, np.frombuffer(brackets, np.uint8)).astype(np.int32)
    return int(max(np.cumsum(steps).max(), 0))


def check_json_depth(body: bytes, max_depth: int) -> None:
    """Raises INVALID_ARGUMENT when ``body`` nests deeper than ``max_depth``."""
    if _few_openers(body, max_depth):
        return
    depth = json_depth(body)
    if depth > max_depth:
        raise invalid_argument(
            f"JSON Parse error: the body nests arrays/objects {depth} levels deep; this server "
            f"accepts at most {max_depth} (--max_json_depth). Tensors need one level per dimension."
        )


def _few_openers(body: bytes, limit: int) -> bool:
    """True when ``body`` holds at most ``limit`` '[' and '{' bytes (strings included).

    An exact shortcut for the depth check: every level opens with one of them, so such a body
    cannot nest deeper than ``limit``. Counted with ``find`` (memchr), stopping at ``limit + 1``:
    a few calls for an ordinary predict body, at most ``limit + 2`` for any other.
    """
    count = 0
    for opener in (b"[", b"{"):
        at = body.find(opener)
        while at >= 0:
            count += 1
            if count > limit:
                return False
            at = body.find(opener, at + 1)
    return True


def parse_json_body(body: bytes, max_depth: int = DEFAULT_MAX_JSON_DEPTH) -> Any:
    """``json.loads`` behind the depth guard, with every failure an INVALID_ARGUMENT.

    Args:
        body: the raw request body (already bounded in size).
        max_depth: see :func:`check_json_depth`.

    Example:
        >>> parse_json_body(b'{"instances": [1]}')
        {'instances': [1]}
    """
    check_json_depth(body, max_depth)
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        # ValueError also covers integers longer than Python's int_max_str_digits.
        raise invalid_argument(f"JSON Parse error: {error}") from None
