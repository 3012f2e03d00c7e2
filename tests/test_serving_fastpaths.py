"""The REST service's per-request shortcuts answer exactly as the work they skip.

* input specs are computed once per servable and signature, and a reload to a new version
  (another servable) is served with that version's specs, never the previous ones;
* the JSON depth guard's bracket-count shortcut refuses exactly the bodies a brute-force
  depth count refuses, with the same message;
* responses encoded by orjson parse to the very same doubles as the standard library's, and
  NaN / Infinity / non-ASCII text still come out byte for byte as before;
* the protocol answers whole (checked by parsing the bytes with h11 as a client would) for GET,
  HEAD, pipelined keep-alive, 100-continue, large bodies and the raw 413 answer before the
  lingering close;
* metrics looked up once per series still count every observation per series.
"""

import asyncio
import json
import math
import struct

import h11
import numpy as np
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from uvicorn.server import ServerState

from serving.batching import BatchingParameters
from serving.core import CoreConfig, ServingCore
from serving.errors import ServingError
from serving.http_app import protocol_class
from serving.limits import _few_openers, check_json_depth
from serving.metrics import ServingMetrics
from serving.model_registry import ModelRegistry, ServedModel, ServingState
from serving.servable import Servable
from serving.signature_defs import make_signature_def, tensor_info
from serving.tensor_json import dumps


# ---------------------------------------------------------------------- input specs


class WidthServable(Servable):
    """y = x + version, for inputs of shape [-1, width]; also an image input on "images"."""

    def __init__(self, version: int, width: int):
        super().__init__("fake", version)
        self.width = width
        self._signatures = {
            "serving_default": make_signature_def(
                {"x": tensor_info("x", "DT_FLOAT", [-1, width])},
                {"y": tensor_info("y", "DT_FLOAT", [-1, width])}),
            "images": make_signature_def(
                {"image_bytes": tensor_info("image_bytes", "DT_STRING", [-1]),
                 "count": tensor_info("count", "DT_INT64", [])},
                {"y": tensor_info("y", "DT_FLOAT", [-1])}),
        }

    @property
    def signature_defs(self):
        return self._signatures

    def run(self, signature_name, inputs, options):
        return {"y": inputs["x"] + self.version}


def state_of(servable) -> ServingState:
    return ServingState({"fake": ServedModel("fake", {servable.version: servable})})


def test_input_specs_follow_the_signature_and_are_read_only():
    servable = WidthServable(1, 3)
    specs = servable.input_specs("serving_default")
    assert dict(specs) == {"x": specs["x"]}
    assert specs["x"].dtype == np.dtype(np.float32) and specs["x"].shape == (None, 3)
    images = servable.input_specs("images")
    assert images["image_bytes"].dtype == np.dtype(object) and images["image_bytes"].shape == (None,)
    assert images["count"].dtype == np.dtype(np.int64) and images["count"].shape == ()
    assert servable.image_inputs("images") == ("image_bytes",)
    assert servable.image_inputs("serving_default") == () and servable.image_inputs("nope") == ()
    assert servable.input_specs("serving_default") is specs  # computed once
    with pytest.raises(TypeError):
        specs["x"] = None  # shared between requests: nobody may change it
    for missing in ("nope", "__saved_model_init_op"):
        with pytest.raises(ServingError, match=f'signature key "{missing}" not found'):
            servable.input_specs(missing)
    # A signature replaced on the same object is not answered from the cache.
    servable._signatures["serving_default"] = make_signature_def(
        {"x": tensor_info("x", "DT_INT32", [-1, 5])}, {"y": tensor_info("y", "DT_INT32", [-1, 5])})
    assert servable.input_specs("serving_default")["x"].shape == (None, 5)
    assert servable.input_specs("serving_default")["x"].dtype == np.dtype(np.int32)


def test_a_reload_to_a_new_version_serves_the_new_specs():
    versions = iter([WidthServable(2, 3)])
    registry = ModelRegistry(lambda previous: state_of(next(versions)), state_of(WidthServable(1, 2)))
    core = ServingCore(registry, CoreConfig(batching=BatchingParameters(
        max_batch_size=4, batch_timeout_micros=0, num_batch_threads=1)))
    try:
        def predict(width):
            x = np.arange(width, dtype=np.float32)[None]
            return core.predict("fake", None, None, "serving_default", {"x": x}, timeout=300)

        first = predict(2)
        np.testing.assert_array_equal(first.outputs["y"], [[1.0, 2.0]])
        with pytest.raises(ServingError, match=r"expects \[-1, 2\]"):
            predict(3)
        assert core.reload()
        second = predict(3)
        assert second.version == 2
        np.testing.assert_array_equal(second.outputs["y"], [[2.0, 3.0, 4.0]])
        with pytest.raises(ServingError, match=r"expects \[-1, 3\]"):
            predict(2)
    finally:
        core.close()


# ---------------------------------------------------------------------- JSON depth


def brute_force_depth(body: bytes) -> int:
    """Nesting depth by walking the bytes: brackets inside strings (escapes included) skipped."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        char = chr(byte)
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def random_document(rng, depth_left: int):
    kind = rng.integers(0, 5 if depth_left > 0 else 3)
    if kind == 0:
        return float(rng.standard_normal())
    if kind == 1:  # strings full of brackets and escapes, which never count
        return "".join(rng.choice(list('[]{}"\\ab'), size=int(rng.integers(0, 6))))
    if kind == 2:
        return None
    if kind == 3:
        return [random_document(rng, depth_left - 1) for _ in range(int(rng.integers(0, 4)))]
    return {f"k{i}[": random_document(rng, depth_left - 1) for i in range(int(rng.integers(0, 4)))}


def test_depth_guard_refuses_exactly_the_too_deep_bodies():
    rng = np.random.default_rng(0)
    bodies = [json.dumps(random_document(rng, 8)).encode() for _ in range(400)]
    bodies += [b"[" * n + b"]" * n for n in (0, 1, 3, 4, 5)]
    bodies += [b'"' + b"[" * 9 + b'"', b'["[[[[[[[[[["]', b"{" * 5, b"[[[" + b'"\\"[[[[["' + b"]]]"]
    refused = 0
    for body in bodies:
        for max_depth in (1, 3, 4, 6):
            depth = brute_force_depth(body)
            if depth <= max_depth:
                check_json_depth(body, max_depth)
                continue
            refused += 1
            with pytest.raises(ServingError) as caught:
                check_json_depth(body, max_depth)
            assert caught.value.code == "INVALID_ARGUMENT"
            assert caught.value.message == (
                f"JSON Parse error: the body nests arrays/objects {depth} levels deep; this server "
                f"accepts at most {max_depth} (--max_json_depth). Tensors need one level per "
                "dimension.")
    assert refused > 100  # both sides of the shortcut are exercised


def test_the_shortcut_counts_every_opening_bracket_strings_included():
    rng = np.random.default_rng(2)
    for _ in range(300):
        body = bytes(rng.choice(list(b'[]{}"\\a1,'), size=int(rng.integers(0, 40))))
        for limit in (0, 1, 2, 5, 64):
            expected = body.count(b"[") + body.count(b"{") <= limit
            assert _few_openers(body, limit) == expected, (body, limit)


# ---------------------------------------------------------------------- response encoding


def stdlib_dumps(doc) -> bytes:
    """The encoder every response went through before (and the fallback)."""
    return json.dumps(doc, allow_nan=True, separators=(",", ":")).encode("utf-8")


def float32_values(rng, n: int) -> np.ndarray:
    """Random float32s from every corner: random bit patterns (denormals and extreme exponents
    included), signed zeros, the extremes, and ordinary embedding-like values."""
    bits = rng.integers(0, 2**32, size=n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    finite = bits[np.isfinite(bits)]
    special = np.array([0.0, -0.0, 1.0, -1.0, 0.1, 1e-45, -1e-45, 1.1754942e-38, 1.1754944e-38,
                        3.4028235e38, -3.4028235e38, 1e-7, 1e7, 123456789.0, 2.0**-149],
                       np.float32)
    normal = rng.standard_normal(n).astype(np.float32) * np.float32(10.0) ** rng.integers(
        -40, 39, n).astype(np.float32)
    return np.concatenate([finite, special, normal[np.isfinite(normal)]])


def assert_same_doubles(a, b):
    if isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_doubles(x, y)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for key in a:
            assert_same_doubles(a[key], b[key])
    elif isinstance(a, float):
        assert isinstance(b, float) and struct.pack("<d", a) == struct.pack("<d", b)
    else:
        assert type(a) is type(b) and a == b


def test_float_responses_parse_to_the_same_doubles():
    rng = np.random.default_rng(1)
    values = float32_values(rng, 20_000)
    assert (values == 0).any() and (np.abs(values[values != 0]) < 1.2e-38).any()
    docs = [{"predictions": values.reshape(-1, 1).tolist()},
            {"predictions": [{"scores": values[:50].tolist(), "ids": ["a", "b"], "label": 3}]},
            {"outputs": values[:896].reshape(1, 896).tolist()},
            {"predictions": rng.standard_normal((4, 896)).tolist()}]  # float64 too
    for doc in docs:
        encoded = dumps(doc)
        assert encoded.isascii()
        assert_same_doubles(json.loads(encoded), doc)
        assert_same_doubles(json.loads(encoded), json.loads(stdlib_dumps(doc)))
    # Every float32 (as the float64 tolist() gives) reads back bit for bit as float32 too.
    back = np.asarray(json.loads(dumps({"v": values.tolist()}))["v"], np.float32)
    assert back.tobytes() == values.tobytes()


@pytest.mark.parametrize("doc", [
    {"predictions": [[0.5, float("nan"), 1.0]]},
    {"predictions": [float("inf"), float("-inf")]},
    {"outputs": {"scores": [[1.0, 2.0]], "ids": [["\u00e9t\u00e9", "\u2028x"]]}},
    {"predictions": [{"b64": "null"}, None, True]},
    {"error": "path /v1/models/\u00fc not found"},
    {1: [1.5]},  # non-string keys
    {"predictions": [2**70, -(2**65)]},
    {"text": "\udc80 lone surrogate"},
])
def test_other_responses_are_written_byte_for_byte_as_before(doc):
    assert dumps(doc) == stdlib_dumps(doc)


def test_non_finite_values_are_written_as_tf_serving_writes_them():
    assert dumps({"predictions": [[float("nan"), float("inf"), -float("inf"), -0.0, 1e-05]]}) == (
        b'{"predictions":[[NaN,Infinity,-Infinity,-0.0,1e-05]]}')
    assert math.isnan(json.loads(dumps({"v": [float("nan")]}))["v"][0])


# ---------------------------------------------------------------------- answers on the wire


class FakeTransport(asyncio.Transport):
    """Records every call the protocol makes; wakes the test on each write / close."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.closing = self.eof = False
        self.changed = asyncio.Event()

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8501)}.get(name, default)

    def write(self, data):
        assert not self.eof, "write after write_eof"
        self.calls.append(("write", bytes(data)))
        self.changed.set()

    def write_eof(self):
        self.eof = True
        self.calls.append(("write_eof", b""))
        self.changed.set()

    def can_write_eof(self):
        return True

    def close(self):
        self.closing = True
        self.calls.append(("close", b""))
        self.changed.set()

    def is_closing(self):
        return self.closing

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def get_write_buffer_size(self):
        return 0

    @property
    def written(self) -> bytes:
        return b"".join(data for call, data in self.calls if call == "write")


BIG = bytes(range(256)) * 4096  # 1 MiB


async def echo_app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = BIG if scope["path"] == "/big" else f'{{"path":"{scope["path"]}"}}'.encode()
    if scope["method"] == "POST":  # answers the body it read
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def parse_responses(raw: bytes, methods):
    """(status, headers, body) of each response in ``raw``, read by an h11 client."""
    client = h11.Connection(h11.CLIENT)
    answers = []
    for method in methods:
        client.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
        client.send(h11.EndOfMessage())
        if raw:  # (h11 reads b"" as the peer closing)
            client.receive_data(raw)
        raw = b""
        response, body = None, b""
        while True:
            event = client.next_event()
            assert event is not h11.NEED_DATA, "incomplete response"
            if isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        answers.append((response.status_code, dict(response.headers), body))
        if client.our_state is h11.MUST_CLOSE or client.their_state is h11.MUST_CLOSE:
            break
        client.start_next_cycle()
    return answers


async def exchange(request: bytes, done, then: bytes = b"", **settings):
    """Feeds ``request`` to a real GuardedH11Protocol over a FakeTransport until ``done``
    (after ``then`` was fed once ``b"100 Continue"`` was written, when given)."""
    config = uvicorn.Config(echo_app, http=protocol_class(**settings), loop="asyncio",
                            lifespan="off", log_config=None, access_log=False,
                            server_header=False, date_header=False)
    config.load()
    protocol = config.http_protocol_class(config=config, server_state=ServerState(), app_state={},
                                          _loop=asyncio.get_running_loop())
    transport = FakeTransport()
    protocol.connection_made(transport)
    protocol.data_received(request)

    async def finished():
        while not done(transport):
            transport.changed.clear()
            await transport.changed.wait()

    try:
        if then:
            async def continued():
                while b" 100 Continue\r\n" not in transport.written:
                    transport.changed.clear()
                    await transport.changed.wait()

            await asyncio.wait_for(continued(), 60)
            protocol.data_received(then)
        await asyncio.wait_for(finished(), 60)
        transport.open_at_end = not transport.closing
    finally:
        protocol.connection_lost(None)
    return transport


def complete(n):
    def done(transport):
        try:
            return len(parse_responses(transport.written, ["GET"] * n)) == n
        except AssertionError:
            return False
    return done


def test_a_small_response_is_answered_whole():
    transport = asyncio.run(exchange(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n", complete(1)))
    [(status, headers, body)] = parse_responses(transport.written, ["GET"])
    assert (status, body) == (200, b'{"path":"/a"}')
    assert headers[b"content-length"] == b"13"


def test_head_answers_headers_without_a_body():
    def done(transport):
        return transport.written.endswith(b"\r\n\r\n")

    transport = asyncio.run(exchange(b"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n", done))
    [(status, headers, body)] = parse_responses(transport.written, ["HEAD"])
    assert (status, body, headers[b"content-length"]) == (200, b"", b"13")


def test_pipelined_keep_alive_requests_are_answered_in_order():
    requests = b"".join(f"GET /{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for i in range(3))
    transport = asyncio.run(exchange(requests, complete(3)))
    answers = parse_responses(transport.written, ["GET"] * 3)
    assert [body for _, _, body in answers] == [f'{{"path":"/{i}"}}'.encode() for i in range(3)]
    assert transport.open_at_end  # kept alive


def test_100_continue_is_sent_before_the_body_is_read():
    request = (b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
               b"Content-Length: 5\r\n\r\n")
    transport = asyncio.run(exchange(request, complete(1), then=b"hello"))
    assert transport.written.startswith(b"HTTP/1.1 100 Continue\r\n")
    [(status, _, body)] = parse_responses(transport.written, ["POST"])
    assert (status, body) == (200, b"hello")


def test_a_large_body_is_written_whole():
    transport = asyncio.run(exchange(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n", complete(1)))
    [(status, _, body)] = parse_responses(transport.written, ["GET"])
    assert status == 200 and body == BIG


def test_the_raw_413_leaves_whole_before_the_lingering_close():
    def done(transport):
        return transport.eof or transport.closing

    request = b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"
    transport = asyncio.run(exchange(request, done, max_body_bytes=1000))
    calls = [call for call, _ in transport.calls]
    # The whole answer is written before the FIN of the lingering close, nothing after it.
    assert calls[0] == "write" and "write_eof" in calls
    assert "write" not in calls[calls.index("write_eof"):]
    [(status, headers, body)] = parse_responses(transport.written, ["POST"])
    assert status == 413 and headers[b"connection"] == b"close"
    assert "at most 1000 bytes" in json.loads(body)["error"]


# ---------------------------------------------------------------------- per-request bookkeeping


def test_metrics_count_every_observation_per_series():
    metrics = ServingMetrics()
    plan = [("POST", "predict", 200)] * 5 + [("GET", "status", 404)] * 2 + [("POST", "predict", 400)]
    for method, route, status in plan:
        metrics.observe_http(method, route, status, 0.003)
    for code in ("OK", "OK", "INVALID_ARGUMENT"):
        metrics.observe_predict("dgml", "1", "serving_default", code, 0.02)
    metrics.observe_batch({"model": "dgml", "version": "1", "signature": "serving_default"}, 3, 2)
    metrics.observe_batch({"model": "dgml", "version": "1", "signature": "serving_default"}, 5, 1)
    samples = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value

    def value(name, **labels):
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("dgml_serving_http_requests_total", method="POST", route="predict", status="200") == 5
    assert value("dgml_serving_http_requests_total", method="GET", route="status", status="404") == 2
    assert value("dgml_serving_http_requests_total", method="POST", route="predict", status="400") == 1
    assert value("dgml_serving_http_request_duration_seconds_count", method="POST",
                 route="predict") == 6
    model = {"model": "dgml", "version": "1", "signature": "serving_default"}
    assert value("dgml_serving_requests_total", code="OK", **model) == 2
    assert value("dgml_serving_requests_total", code="INVALID_ARGUMENT", **model) == 1
    assert value("dgml_serving_request_errors_total", model="dgml", version="1",
                 code="INVALID_ARGUMENT") == 1
    assert value("dgml_serving_request_latency_seconds_count", **model) == 3
    assert value("dgml_serving_batch_size_sum", **model) == 8
    assert value("dgml_serving_batch_tasks_sum", **model) == 3
