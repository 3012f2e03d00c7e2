"""Hostile requests against the real server process: bodies, headers, JSON, images, admin.

Raw sockets send what ordinary clients never would (negative, non-numeric or conflicting
Content-Length, chunked uploads past the limit, stalled headers and bodies, too many
connections). Every answer must be a JSON error with the right status, fast, and the server
must keep serving. Image answers are compared with the SavedModel called directly on the same
picture converted to plain 8-bit RGB by Pillow (an independent decoder).
"""

import io
import json
import socket
import urllib.error
import urllib.request

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from serving.synthetic_gallery import class_image, export_tiny_embedder
from serving_harness import (ServerProcess, b64, http, parse_response, raw_exchange,
                             read_response, read_until_closed)

MAX_BODY = 1_000_000
MAX_PIXELS = 1_000_000
MAX_CONNECTIONS = 4


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    path = export_tiny_embedder(root / "models", "dgml", 1, seed=7)
    loaded = tf.saved_model.load(str(path))
    function = loaded.signatures["serving_default"]

    def reference(encoded: list) -> np.ndarray:  # the SavedModel, called directly
        return function(image_bytes=tf.constant(encoded))["embedding"].numpy()

    return {"root": root, "reference": reference, "keep": loaded}


@pytest.fixture(scope="module")
def server(model):
    args = [f"--model_base_path={model['root'] / 'models' / 'dgml'}", "--model_name=dgml",
            f"--max_body_bytes={MAX_BODY}", f"--max_image_pixels={MAX_PIXELS}",
            f"--max_connections={MAX_CONNECTIONS}", "--header_timeout_seconds=2",
            "--body_timeout_seconds=2", "--max_json_depth=32", "--max_instances=16"]
    with ServerProcess(args, model["root"] / "server.log") as srv:
        yield srv


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def rgb_png(image: Image.Image) -> bytes:
    return encode(image.convert("RGB"))


def predict(server, instances, headers=None):
    return http(server.url + "/v1/models/dgml:predict", "POST", {"instances": instances},
                headers=headers)


def assert_json_error(raw: bytes, status: int, *fragments: str) -> dict:
    got, headers, doc = parse_response(raw)
    assert got == status, raw[:400]
    assert headers["content-type"] == "application/json" and set(doc) == {"error"}
    for fragment in fragments:
        assert fragment in doc["error"], doc
    return headers


# This test runs first (file order): no other connection is open on the fresh server.
def test_connections_beyond_the_cap_get_503_json(server):
    held = []
    try:
        for _ in range(MAX_CONNECTIONS):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_response(sock)[0] == 200  # registered and kept alive
            held.append(sock)
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as extra:
            assert_json_error(read_until_closed(extra), 503, "--max_connections")
    finally:
        for sock in held:
            sock.close()


POST = b"POST /v1/models/dgml:predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"


@pytest.mark.parametrize("headers", [
    b"Content-Length: -1\r\n",
    b"Content-Length: abc\r\n",
    b"Content-Length: 1e3\r\n",
    b"Content-Length: 10\r\nContent-Length: 20\r\n",
])
def test_invalid_content_length_is_refused_at_once(server, headers):
    # No body is sent and the connection stays open on our side: the answer cannot wait for EOF.
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(POST + headers + b"\r\n")
        response = read_until_closed(sock)
    assert_json_error(response, 413, "Content-Length", "--max_body_bytes")


def test_declared_oversized_body_is_refused_before_it_is_sent(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(POST + b"Content-Length: %d\r\n\r\n" % (MAX_BODY + 1))
        headers = assert_json_error(read_until_closed(sock), 413, str(MAX_BODY + 1), "--max_body_bytes")
    assert headers["connection"] == "close"


def test_chunked_bodies_are_counted_while_read(server, model):
    chunk = b"a" * 65536
    over = POST + b"Transfer-Encoding: chunked\r\n\r\n" + (b"10000\r\n" + chunk + b"\r\n") * 20
    assert_json_error(raw_exchange(server.port, over), 413, "exceeds", "--max_body_bytes")
    # Under the limit, chunked is an ordinary body.
    image = rgb_png(Image.fromarray(class_image(1, 0)))
    body = json.dumps({"instances": [b64(image)]}).encode()
    ok = POST + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ok += b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    status, _, doc = parse_response(raw_exchange(server.port, ok))
    assert status == 200
    np.testing.assert_allclose(doc["predictions"][0]["embedding"], model["reference"]([image])[0], atol=1e-5)


def test_unsupported_transfer_encoding_and_missing_body(server):
    assert_json_error(raw_exchange(server.port, POST + b"Transfer-Encoding: gzip\r\n\r\n"), 501,
                      "chunked")
    huge_headers = b"GET /v1/models/dgml HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n"
    assert_json_error(raw_exchange(server.port, huge_headers), 431, "headers too large")
    assert_json_error(raw_exchange(server.port, b"GARBAGE\r\n\r\n"), 400, "Malformed HTTP request")
    # No Content-Length and no chunking: the body is empty (HTTP/1.1 framing).
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(POST + b"\r\n")
        status, _, doc = read_response(sock)
    assert status == 400 and "JSON Parse error" in doc["error"]


def test_a_client_uploading_a_huge_body_reads_the_413(server):
    body = b'{"instances": [{"b64": "' + b"A" * (64 * 1024 * 1024) + b'"}]}'
    request = urllib.request.Request(server.url + "/v1/models/dgml:predict", data=body, method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=120)
    assert info.value.code == 413
    assert "exceeds" in json.loads(info.value.read())["error"]


def test_stalled_headers_and_bodies_time_out_with_json(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(b"GET /v1/models/dgml HTTP/1.1\r\nHost: t\r\nX-Slow")
        assert_json_error(read_until_closed(sock), 408, "--header_timeout_seconds")
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(POST + b"Content-Length: 100\r\n\r\n{\"instances\"")
        assert_json_error(read_until_closed(sock), 408, "--body_timeout_seconds")


def test_deep_json_is_400_not_500(server):
    for body in (b"[" * 10_000 + b"]" * 10_000,
                 b'{"instances": ' + b"[" * 40 + b"1" + b"]" * 40 + b"}",
                 b'{"a":' * 5000 + b"1" + b"}" * 5000):
        status, doc = http(server.url + "/v1/models/dgml:predict", "POST", body)
        assert status == 400 and "--max_json_depth" in doc["error"], doc
    # Brackets inside strings do not count.
    status, doc = http(server.url + "/v1/models/dgml:predict", "POST",
                       {"instances": ["[" * 100], "signature_name": "{" * 100})
    assert status == 400 and "max_json_depth" not in doc["error"]
    status, doc = http(server.url + "/v1/models/dgml:predict", "POST", b'{"instances": [' + b"9" * 5000 + b"]}")
    assert status == 400 and "JSON Parse error" in doc["error"]


def test_too_many_instances_is_400(server):
    image = b64(rgb_png(Image.fromarray(class_image(0, 0))))
    status, doc = predict(server, [image] * 17)
    assert status == 400 and "--max_instances" in doc["error"]


def test_oversized_images_are_refused_from_their_header(server, model):
    huge = encode(Image.new("L", (20000, 20000)))  # ~380 KB of PNG, 400 M pixels
    assert len(huge) < MAX_BODY
    status, doc = predict(server, [b64(huge)])
    assert status == 400 and "20000 x 20000" in doc["error"] and "--max_image_pixels" in doc["error"]
    status, doc = predict(server, [b64(encode(Image.new("RGB", (1001, 1000))))])
    assert status == 400 and "--max_image_pixels" in doc["error"]
    at_limit = encode(Image.new("RGB", (1000, 1000), (40, 80, 120)))
    status, doc = predict(server, [b64(at_limit)])
    assert status == 200
    np.testing.assert_allclose(doc["predictions"][0]["embedding"], model["reference"]([at_limit])[0], atol=1e-5)


def _variants():
    base = Image.fromarray(class_image(2, 1))  # 32 x 32 RGB
    gray16 = Image.fromarray((np.asarray(base.convert("L"), np.uint16) * 257 + 100).astype(np.uint16))
    eight_bit = Image.fromarray((np.asarray(gray16, np.uint16) >> 8).astype(np.uint8))
    return {
        # name: (encoded image sent, the 8-bit RGB picture it must be embedded as)
        "grayscale": (encode(base.convert("L")), base.convert("L")),
        "palette": (encode(base.convert("P")), base.convert("P")),
        "rgba": (encode(base.convert("RGBA")), base.convert("RGBA")),
        "one pixel": (encode(base.convert("L").resize((1, 1))), base.convert("L").resize((1, 1))),
        "16-bit": (encode(gray16), eight_bit),
        "cmyk jpeg": (encode(base.convert("CMYK"), "JPEG", quality=95), None),
        "bmp": (encode(base, "BMP"), base),
    }


@pytest.mark.parametrize("name", sorted(_variants()))
def test_image_variants_are_embedded_as_plain_rgb(server, model, name):
    sent, picture = _variants()[name]
    if picture is None:  # Pillow decodes the JPEG itself (libjpeg's CMYK conversion)
        picture = Image.open(io.BytesIO(sent))
    expected = model["reference"]([rgb_png(picture)])[0]
    status, doc = predict(server, [b64(sent)])
    assert status == 200, doc
    got = np.asarray(doc["predictions"][0]["embedding"])
    np.testing.assert_allclose(got, expected, atol=2e-3)


def test_broken_and_unsupported_images_are_400(server):
    base = Image.fromarray(class_image(3, 0))
    png, jpeg = encode(base), encode(base, "JPEG")
    frames = [base, base.rotate(90)]
    animated = io.BytesIO()
    frames[0].save(animated, "GIF", save_all=True, append_images=frames[1:])
    cases = {
        "truncated png": (png[: len(png) // 2], ""),
        "truncated jpeg": (jpeg[: len(jpeg) // 2], ""),
        "animated gif": (animated.getvalue(), "animated"),
        "tiff": (encode(base, "TIFF"), "JPEG, PNG"),
        "not an image": (b"hello, world", "not a decodable image"),
        "empty": (b"", "not a decodable image"),
    }
    for name, (data, fragment) in cases.items():
        status, doc = predict(server, [b64(data)])
        assert status == 400 and set(doc) == {"error"} and fragment in doc["error"], (name, doc)
    status, doc = predict(server, [{"b64": "not base64!"}])
    assert status == 400 and "base64" in doc["error"]
    status, doc = predict(server, [b64(png)])
    assert status == 200  # and the server keeps serving


def test_admin_endpoint_is_off_without_a_token(server):
    status, doc = http(server.url + "/v1/admin/reload", "POST", {},
                       headers={"Authorization": "Bearer anything"})
    assert status == 403 and "--admin_token" in doc["error"]


def test_request_ids_access_log_and_metrics(server):
    image = b64(rgb_png(Image.fromarray(class_image(0, 3))))
    request = urllib.request.Request(server.url + "/v1/models/dgml:predict", method="POST",
                                     data=json.dumps({"instances": [image]}).encode(),
                                     headers={"X-Request-Id": "trace-abc.123"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["X-Request-Id"] == "trace-abc.123"
    request = urllib.request.Request(server.url + "/v1/models/nope", headers={"X-Request-Id": "x" * 300})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=60)
    generated = info.value.headers["X-Request-Id"]
    assert info.value.code == 404 and len(generated) == 32 and generated != "x" * 300
    line = server.wait_for("request_id=trace-abc.123")
    assert "POST /v1/models/dgml:predict HTTP/1.1 200" in line and "model=dgml/1" in line
    server.wait_for(f"request_id={generated}")
    assert image["b64"][:40] not in server.log  # bodies are never logged
    with urllib.request.urlopen(server.url + "/monitoring/prometheus/metrics", timeout=60) as response:
        text = response.read().decode()
    assert 'dgml_serving_http_requests_total{method="POST",route="predict",status="413"}' in text
    assert 'dgml_serving_requests_total{code="OK",model="dgml",signature="serving_default",version="1"}' in text
    assert "dgml_serving_queue_depth 0.0" in text
    assert "dgml_serving_request_latency_seconds_bucket" in text


def test_unknown_signature_names_do_not_grow_the_metrics(server):
    image = b64(rgb_png(Image.fromarray(class_image(0, 3))))
    for i in range(20):
        status, doc = http(server.url + "/v1/models/dgml:predict", "POST",
                           {"signature_name": f"made-up-{i}", "instances": [image]})
        assert status == 400 and f"made-up-{i}" in doc["error"]
    with urllib.request.urlopen(server.url + "/monitoring/prometheus/metrics", timeout=60) as response:
        text = response.read().decode()
    # The errors are counted, but under no label a client invented.
    assert "made-up-" not in text
    assert 'code="FAILED_PRECONDITION"' in text
