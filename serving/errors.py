"""Errors of the REST service, each carrying a TF Serving (gRPC-style) status code.

Why a code and not an HTTP status: TF Serving decides the HTTP status from the canonical error
code of the failed call (``INVALID_ARGUMENT`` -> 400, ``NOT_FOUND`` -> 404, ...). Raising the
code keeps every layer (request parsing, model calls, TensorFlow's own ``OpError``) on one
mapping, written once here.
"""

from __future__ import annotations

# TF Serving's mapping of canonical codes to HTTP statuses (tensorflow_serving/util/net_http).
HTTP_STATUS_BY_CODE = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}


class ServingError(Exception):
    """A request failure with a canonical code; its message is what the client reads.

    Args:
        code: one of the keys of ``HTTP_STATUS_BY_CODE``.
        message: the text sent back as ``{"error": message}``.
        http_status: overrides the code's status (only used for transport-level answers that
            TF Serving has no code for, such as 413 for an oversized body).

    Example:
        >>> ServingError("NOT_FOUND", "Servable not found for request: Latest(m)").http_status
        404
    """

    def __init__(self, code: str, message: str, http_status: int | None = None):
        if code not in HTTP_STATUS_BY_CODE:
            raise ValueError(f"Unknown error code {code!r}; use one of {sorted(HTTP_STATUS_BY_CODE)}.")
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status or HTTP_STATUS_BY_CODE[code]


#: Codes whose messages may carry server internals (tracebacks, paths, TF node names).
INTERNAL_CODES = ("INTERNAL", "UNKNOWN", "DATA_LOSS")


def public_error(error: BaseException, request_id: str, log=None) -> ServingError:
    """What a client may read about ``error``: ServingErrors as they are, except that internal
    faults (any other exception, or an INTERNAL/UNKNOWN/DATA_LOSS code) become
    ``"internal error (request id ...)"``; the detail and traceback go to ``log`` only.

    Example:
        >>> public_error(KeyError("/secret/path"), "abc").message
        'internal error (request id abc)'
    """
    if isinstance(error, ServingError) and error.code not in INTERNAL_CODES:
        return error
    if log is not None:
        log.error("internal error (request id %s): %s: %s", request_id, type(error).__name__,
                  error, exc_info=(type(error), error, error.__traceback__))
    code = error.code if isinstance(error, ServingError) else "INTERNAL"
    return ServingError(code, f"internal error (request id {request_id})")


def invalid_argument(message: str) -> ServingError:
    return ServingError("INVALID_ARGUMENT", message)


def not_found(message: str) -> ServingError:
    return ServingError("NOT_FOUND", message)


def failed_precondition(message: str) -> ServingError:
    return ServingError("FAILED_PRECONDITION", message)


def from_tf_error(error: Exception) -> ServingError:
    """Maps a ``tf.errors.OpError`` (raised inside a SavedModel call) to a ServingError.

    A non-image string fed to ``decode_image`` raises ``InvalidArgumentError`` inside the
    graph; TF Serving answers that with 400, and so do we. Anything that is not an OpError is
    a real internal fault (500).
    """
    import tensorflow as tf

    if isinstance(error, tf.errors.OpError):
        name = _CODE_NAMES.get(error.error_code, "UNKNOWN")
        return ServingError(name, _op_error_text(error.message))
    return ServingError("INTERNAL", f"{type(error).__name__}: {error}")


# tf.errors codes are the canonical gRPC codes, numbered alike.
_CODE_NAMES = {
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}


_NOISE_PREFIXES = ("Graph execution error", "Detected at node", "<stack traces", "[[", "File ")


def _op_error_text(message: str) -> str:
    """The human part of a graph error: drops TF's "Graph execution error" / node-trace lines."""
    lines = [line.strip() for line in message.splitlines()]
    useful = [line for line in lines if line and not line.startswith(_NOISE_PREFIXES)]
    return " ".join(useful) or message.strip()
