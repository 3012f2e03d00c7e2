"""The HTTP layer: TF Serving's REST routes on the stdlib's ``ThreadingHTTPServer``.

Why the stdlib server: requests spend their time inside TensorFlow and ScaNN, which release the
GIL, so a thread per request gives real concurrency on CPU without adding a web framework to the
package's dependencies. Each request reads the registry's snapshot once (atomic reloads) and
every failure is answered as TF Serving answers it: ``{"error": "..."}`` with the status its
canonical code maps to.
"""

from __future__ import annotations

import json
import logging
import re
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

from serving.errors import ServingError, invalid_argument, not_found
from serving.model_registry import ModelRegistry, describe
from serving.tensor_json import DEFAULT_SIGNATURE, dumps, parse_predict_request

LOG = logging.getLogger("serving")
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
# Bodies this much over the limit are not drained before the 413 (the connection is dropped).
_DRAIN_LIMIT = 64 * 1024 * 1024

_MODEL_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+))?"
    r"(?:/labels/(?P<label>[^/:]+))?"
    r"(?P<metadata>/metadata)?"
    r"(?::(?P<method>[A-Za-z]+))?/?$",
    re.IGNORECASE,
)


class RestServer(ThreadingHTTPServer):
    """A threading HTTP server bound to a :class:`ModelRegistry`.

    Args:
        address: ``(host, port)``; port 0 picks a free port (see ``server_address``).
        registry: what to serve.
        max_body_bytes: larger request bodies get 413.

    Threads are not daemonic and ``server_close`` joins them, so a graceful shutdown lets
    in-flight requests finish.
    """

    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, address: tuple, registry: ModelRegistry,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        if max_body_bytes <= 0:
            raise ValueError(f"max_body_bytes must be positive, got {max_body_bytes}.")
        self.registry = registry
        self.max_body_bytes = max_body_bytes
        super().__init__(address, RestRequestHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class RestRequestHandler(BaseHTTPRequestHandler):
    """Routes one request; see the module docstring."""

    server: RestServer
    server_version = "dgml-serving/0.1"

    def do_GET(self) -> None:  # noqa: N802 (stdlib naming)
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    def _handle(self, verb: str) -> None:
        self._started = time.perf_counter()
        path = self.path.split("?", 1)[0]
        try:
            status, doc = self._route(verb, path)
        except ServingError as error:
            status, doc = error.http_status, {"error": error.message}
        except Exception as error:  # a real fault: log the trace, answer 500
            LOG.exception("internal error on %s %s", verb, path)
            status, doc = 500, {"error": f"Internal: {type(error).__name__}: {error}"}
        self._send(status, doc)

    def _route(self, verb: str, path: str) -> tuple[int, dict]:
        state = self.server.registry.state
        if path.lower() == "/healthz" and verb == "GET":
            return 200, {"status": "ready", "models": {
                name: sorted(map(str, model.servables)) for name, model in state.models.items()}}
        if path.lower() == "/v1/admin/reload" and verb == "POST":
            if self.headers.get("Content-Length") is not None:  # the body, if any, is ignored
                self._read_body()
            return 200, {"reloaded": _reload(self.server.registry),
                         "models": describe(self.server.registry.state)}
        match = _MODEL_PATH.match(path)
        if match is None or verb not in ("GET", "POST"):
            raise not_found(f"Malformed request: {verb} {path}")
        name, label, method = match["name"], match["label"], (match["method"] or "").lower()
        version = _version(match["version"])
        if verb == "GET":
            if method:
                raise not_found(f"Malformed request: {verb} {path}")
            if match["metadata"]:
                return 200, state.resolve(name, version, label).metadata()
            return 200, state.status(name, version, label)
        if match["metadata"] or method not in ("predict", "classify", "regress"):
            raise not_found(f"Malformed request: {verb} {path}")
        body = self._read_body()
        servable = state.resolve(name, version, label)
        if method == "predict":
            return 200, servable.predict(parse_predict_request(body))
        raise _classify_or_regress_error(servable, method, body)

    def _read_body(self) -> bytes:
        length_text = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked" or length_text is None:
            self.close_connection = True
            raise ServingError("INVALID_ARGUMENT", "Send the request body with a Content-Length header "
                               "(chunked transfer encoding is not supported).", http_status=411)
        try:
            length = int(length_text)
        except ValueError:
            raise invalid_argument(f"Invalid Content-Length {length_text!r}.") from None
        if length > self.server.max_body_bytes:
            self._drain(length)
            raise ServingError(
                "RESOURCE_EXHAUSTED",
                f"Request body of {length} bytes exceeds the server's limit of "
                f"{self.server.max_body_bytes} bytes (--max_body_bytes); send fewer or smaller "
                "images per request.",
                http_status=413,
            )
        return self.rfile.read(length)

    def _drain(self, length: int) -> None:
        # Reading the unwanted body lets the client finish sending and read our 413 instead of
        # a connection reset.
        self.close_connection = True
        if length > _DRAIN_LIMIT:
            return
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 16))
            if not chunk:
                break
            remaining -= len(chunk)

    def _send(self, status: int, doc: dict) -> None:
        payload = dumps(doc)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            LOG.info("client went away before the answer to %s", self.requestline)

    def log_request(self, code="-", size="-") -> None:
        elapsed_ms = (time.perf_counter() - getattr(self, "_started", time.perf_counter())) * 1e3
        LOG.info("%s %s %s %.1fms", self.client_address[0], self.requestline, code, elapsed_ms)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (stdlib signature)
        LOG.info("%s %s", self.client_address[0], format % args)


def _version(text: Optional[str]) -> Optional[int]:
    if text is None:
        return None
    if not text.isdigit():
        raise invalid_argument(f"Version {text!r} is not a non-negative integer.")
    return int(text)


def _reload(registry: ModelRegistry) -> bool:
    try:
        return registry.reload()
    except ServingError:
        raise
    except (ValueError, FileNotFoundError) as error:
        # Refused: the old snapshot keeps serving.
        raise ServingError("FAILED_PRECONDITION", f"Reload refused, still serving the previous "
                           f"versions: {error}") from None


def _classify_or_regress_error(servable, method: str, body: bytes) -> ServingError:
    """What TF Serving answers for Classify/Regress on a predict-only model."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        return invalid_argument(f"JSON Parse error: {error}")
    if not isinstance(doc, dict):
        return invalid_argument("JSON Value is not an object: the request body must be a JSON object.")
    signature_name = doc.get("signature_name", DEFAULT_SIGNATURE) or DEFAULT_SIGNATURE
    signature = servable.signature_defs.get(signature_name)
    if signature is None:
        return invalid_argument(f"No signature was found with the name: {signature_name}")
    wanted = CLASSIFY_METHOD if method == "classify" else REGRESS_METHOD
    if signature.method_name != wanted:
        kind = "classification" if method == "classify" else "regression"
        return invalid_argument(
            f"Expected {kind} signature method_name to be {wanted}. Was: {signature.method_name}"
        )
    return ServingError("UNIMPLEMENTED", f"{method.capitalize()} is not implemented by this server; "
                        "use :predict.")
