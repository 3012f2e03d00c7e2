"""TF Serving's gRPC API of ``python -m serving.server`` (a real process), driven by
``tensorflow-serving-api``'s own stubs and protos.

Expectations come from outside the gRPC code: embeddings from calling the exported SavedModel
directly, neighbours from a NumPy cosine search, per-group similarities from NumPy on the
SavedModel's group embeddings, tensors decoded with TensorFlow's ``tf.make_ndarray``, and the
status/metadata answers from the same server's REST API (whose contract has its own tests).
"""

import os
import re
import socket
import struct
import subprocess
import sys
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from serving.client import GrpcRetrievalClient, RetrievalClient, main as client_main
from serving.synthetic_gallery import export_tiny_embedder, index_synthetic_gallery, synthetic_gallery
from serving_harness import ServerProcess, b64, http

LABELS = [0, 0, 1, 1, 2, 2, 3, 3]
K, GROUP_DIM = 3, 16
MAX_BODY = 300_000
REPO = Path(__file__).absolute().parents[1]
StatusCode = grpc.StatusCode


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpc")
    base = root / "models"
    images = synthetic_gallery(LABELS)
    out = {"root": root, "images": images, "emb": {}, "groups": {}, "att": {}}
    for version, seed in ((1, 7), (2, 8)):
        path = export_tiny_embedder(base, "dgml", version, seed=seed)
        loaded = tf.saved_model.load(str(path))  # the independent reference
        result = loaded.signatures["serving_default"](image_bytes=tf.constant(images))
        out["emb"][version] = result["embedding"].numpy()
        out["groups"][version] = result["group_embeddings"].numpy()
        out["att"][version] = result["attention"].numpy()
    index_synthetic_gallery(base / "dgml" / "2", images, LABELS, root / "index", backend="scann")
    config = root / "models.config"
    config.write_text(
        "model_config_list { config { name: 'dgml' base_path: '%s' model_platform: 'tensorflow' "
        "model_version_policy { latest { num_versions: 2 } } "
        "version_labels { key: 'stable' value: 1 } version_labels { key: 'canary' value: 2 } } }"
        % (base / "dgml"))
    out["config"] = config
    return out


@pytest.fixture(scope="module")
def server(assets):
    log_path = assets["root"] / "server.log"
    # Readiness from what the server reports: its ready line (REST) and its gRPC line (port 0).
    process = ServerProcess(
        [f"--model_config_file={assets['config']}", "--model_name=dgml",
         f"--index_dir={assets['root'] / 'index'}", "--grpc_port=0", "--host=127.0.0.1",
         f"--max_body_bytes={MAX_BODY}"], log_path)
    target = re.search(r"gRPC on (\S+)", process.wait_for(r"gRPC on \S+")).group(1)
    channel = grpc.insecure_channel(target)
    grpc.channel_ready_future(channel).result(timeout=60)
    yield {"url": process.url, "target": target, "channel": channel,
           "predict": prediction_service_pb2_grpc.PredictionServiceStub(channel),
           "models": model_service_pb2_grpc.ModelServiceStub(channel), "log": log_path}
    channel.close()
    try:
        code = process.stop(timeout=60)
    finally:
        process.kill()
    # SIGTERM stops the gRPC server with REST: a clean exit, not a hang.
    assert code == 0, f"server exit: {code}; {process.log[-2000:]}"


def predict_request(model, inputs, version=None, label=None, signature=None, output_filter=()):
    request = predict_pb2.PredictRequest(output_filter=list(output_filter))
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    if signature is not None:
        request.model_spec.signature_name = signature
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(value if isinstance(value, type(request.inputs[name]))
                                      else tf.make_tensor_proto(value))
    return request


def outputs_of(answer) -> dict:
    return {name: tf.make_ndarray(proto) for name, proto in answer.outputs.items()}


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` (tiny file, no real pixel data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def rpc_error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=60)
    return caught.value


# ---------------------------------------------------------------- same answers as REST


def test_embedder_same_embedding_over_grpc_and_rest(server, assets):
    images = assets["images"][:3]
    answer = server["predict"].Predict(predict_request("dgml", {"image_bytes": images}), timeout=60)
    assert answer.model_spec.name == "dgml" and answer.model_spec.version.value == 2
    assert answer.model_spec.signature_name == "serving_default"
    got = outputs_of(answer)
    np.testing.assert_allclose(got["embedding"], assets["emb"][2][:3], atol=1e-5)
    np.testing.assert_allclose(got["attention"], assets["att"][2][:3], atol=1e-5)
    status, doc = http(server["url"] + "/v1/models/dgml:predict", "POST",
                       {"instances": [b64(i) for i in images]})
    assert status == 200
    np.testing.assert_allclose(got["embedding"], [row["embedding"] for row in doc["predictions"]],
                               atol=1e-5)


def test_versions_and_labels_as_over_rest(server, assets):
    image = assets["images"][:1]
    for spec, version in (({"version": 1}, 1), ({"label": "stable"}, 1), ({"label": "canary"}, 2)):
        answer = server["predict"].Predict(predict_request("dgml", {"image_bytes": image}, **spec),
                                           timeout=60)
        assert answer.model_spec.version.value == version
        np.testing.assert_allclose(outputs_of(answer)["embedding"], assets["emb"][version][:1], atol=1e-5)


def test_retrieval_same_neighbours_over_grpc_and_rest(server, assets):
    images, emb, groups = assets["images"], assets["emb"][2], assets["groups"][2]
    for group in (None, 1):
        inputs = {"image_bytes": images, "k": np.int32(3)}
        body = {"instances": [b64(i) for i in images], "k": 3}
        if group is not None:
            inputs["group"], body["group"] = np.int64(group), group
        got = outputs_of(server["predict"].Predict(predict_request("dgml_retrieval", inputs), timeout=60))
        status, doc = http(server["url"] + "/v1/models/dgml_retrieval:predict", "POST", body)
        assert status == 200
        rest = doc["predictions"]
        assert got["ids"].shape == (len(images), 3)
        assert [[i.decode() for i in row] for row in got["ids"]] == [row["ids"] for row in rest]
        assert got["labels"].tolist() == [row["labels"] for row in rest]
        np.testing.assert_allclose(got["scores"], [row["scores"] for row in rest], atol=1e-6)
        np.testing.assert_allclose(got["group_scores"], [row["group_scores"] for row in rest], atol=1e-6)
        # Independent: NumPy cosine search on the SavedModel's own embeddings.
        vectors = emb if group is None else emb[:, group * GROUP_DIM:(group + 1) * GROUP_DIM]
        expected = unit(vectors) @ unit(vectors).T
        np.testing.assert_allclose(got["scores"], -np.sort(-expected, axis=1)[:, :3], atol=1e-4)
        assert [row[0].decode() for row in got["ids"]] == [f"item/{i}" for i in range(len(images))]
        # group_scores[q, r, g] = cosine of group g of the query and of neighbour r.
        neighbours = np.array([[int(i.decode().split("/")[1]) for i in row] for row in got["ids"]])
        expected_groups = np.einsum("qgd,qrgd->qrg", unit(groups), unit(groups)[neighbours])
        np.testing.assert_allclose(got["group_scores"], expected_groups, atol=1e-4)
        if group is not None:
            np.testing.assert_allclose(got["group_scores"][:, :, group], got["scores"], atol=1e-4)


def test_retrieval_attention_and_output_filter(server, assets):
    images = assets["images"][:2]
    inputs = {"image_bytes": images, "k": np.int64(2), "return_attention": True}
    answer = server["predict"].Predict(predict_request("dgml_retrieval", inputs,
                                                       output_filter=["ids", "attention"]), timeout=60)
    assert set(answer.outputs) == {"ids", "attention"}
    np.testing.assert_allclose(outputs_of(answer)["attention"], assets["att"][2][:2], atol=1e-5)
    # The embedding signature, as over REST.
    got = outputs_of(server["predict"].Predict(predict_request(
        "dgml_retrieval", {"embedding": assets["emb"][2][:2], "k": np.int32(1)},
        signature="search_embedding"), timeout=60))
    assert [row[0].decode() for row in got["ids"]] == ["item/0", "item/1"]


def test_status_and_metadata_match_rest(server):
    for model, spec in (("dgml", {}), ("dgml", {"version": 1}), ("dgml", {"label": "canary"}),
                        ("dgml_retrieval", {})):
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        path = f"/v1/models/{model}"
        if "version" in spec:
            request.model_spec.version.value = spec["version"]
            path += f"/versions/{spec['version']}"
        if "label" in spec:
            request.model_spec.version_label = spec["label"]
            path += f"/labels/{spec['label']}"
        answer = server["models"].GetModelStatus(request, timeout=60)
        as_json = json_format.MessageToDict(answer, preserving_proto_field_name=True,
                                            always_print_fields_with_no_presence=True)
        status, rest = http(server["url"] + path)
        assert status == 200
        assert [s["version"] for s in as_json["model_version_status"]] == \
            [s["version"] for s in rest["model_version_status"]]
        assert all(s["state"] == "AVAILABLE" and s["status"]["error_code"] == "OK"
                   for s in as_json["model_version_status"])

        meta_request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        meta_request.model_spec.CopyFrom(request.model_spec)
        meta = server["predict"].GetModelMetadata(meta_request, timeout=60)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        assert meta.metadata["signature_def"].Unpack(signature_map)
        status, rest_meta = http(server["url"] + path + "/metadata")
        assert status == 200
        assert str(meta.model_spec.version.value) == rest_meta["model_spec"]["version"]
        assert json_format.MessageToDict(
            signature_map, preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True) == rest_meta["metadata"]["signature_def"]


def predict_count(url: str, **labels) -> float:
    """``dgml_serving_requests_total`` for ``labels`` from the Prometheus endpoint."""
    with urllib.request.urlopen(url + "/monitoring/prometheus/metrics", timeout=60) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("dgml_serving_requests_total{"):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_grpc_calls_share_the_cores_metrics(server, assets):
    labels = {"model": "dgml_retrieval", "version": "2", "signature": "search_embedding", "code": "OK"}
    before = predict_count(server["url"], **labels)
    for row in range(3):
        server["predict"].Predict(predict_request(
            "dgml_retrieval", {"embedding": assets["emb"][2][row:row + 1], "k": np.int32(2)},
            signature="search_embedding"), timeout=60)
    assert predict_count(server["url"], **labels) == before + 3


# ---------------------------------------------------------------- errors


def test_unknown_models_and_versions_are_not_found(server, assets):
    image = assets["images"][:1]
    for request in (predict_request("nope", {"image_bytes": image}),
                    predict_request("dgml", {"image_bytes": image}, version=9)):
        error = rpc_error(server["predict"].Predict, request)
        assert error.code() == StatusCode.NOT_FOUND, error.details()
        assert "Servable not found" in error.details()
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "nope"
    assert rpc_error(server["models"].GetModelStatus, request).code() == StatusCode.NOT_FOUND
    meta = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    meta.model_spec.name = "nope"
    assert rpc_error(server["predict"].GetModelMetadata, meta).code() == StatusCode.NOT_FOUND
    # Unknown label: INVALID_ARGUMENT, as over REST; unknown signature: FAILED_PRECONDITION.
    error = rpc_error(server["predict"].Predict, predict_request("dgml", {"image_bytes": image},
                                                                  label="nolabel"))
    assert error.code() == StatusCode.INVALID_ARGUMENT
    error = rpc_error(server["predict"].Predict, predict_request("dgml", {"image_bytes": image},
                                                                  signature="nosig"))
    assert error.code() == StatusCode.FAILED_PRECONDITION and "nosig" in error.details()


def test_bad_inputs_are_invalid_argument(server, assets):
    image = assets["images"][:1]
    huge = tf.make_tensor_proto(np.zeros((1, 1), np.float32))
    huge.tensor_shape.dim[0].size = 1 << 40  # declared, not sent: must not be allocated
    huge.ClearField("tensor_content")
    short = tf.make_tensor_proto(np.zeros((2, 48), np.float32))
    short.tensor_content = short.tensor_content[:-4]
    cases = {
        "float image": ("dgml", {"image_bytes": np.zeros(1, np.float32)}, None, "image_bytes"),
        "missing input": ("dgml", {}, None, "image_bytes"),
        "unknown input": ("dgml", {"image_bytes": image, "extra": np.int32(1)}, None, "extra"),
        "not an image": ("dgml", {"image_bytes": [b"not an image"]}, None, ""),
        # Checked from the header as over REST, before anything decodes 400 M pixels.
        "20000 x 20000 image": ("dgml_retrieval", {"image_bytes": [png_header(20000, 20000)]},
                                None, "400000000 pixels"),
        "rank 2 strings": ("dgml", {"image_bytes": [image]}, None, "shape"),
        "float k": ("dgml_retrieval", {"image_bytes": image, "k": np.float32(2)}, None, "k"),
        "vector k": ("dgml_retrieval", {"image_bytes": image, "k": np.int32([1, 2])}, None, "k"),
        "zero k": ("dgml_retrieval", {"image_bytes": image, "k": np.int32(0)}, None, "k"),
        "group out of range": ("dgml_retrieval", {"image_bytes": image, "group": np.int32(K)}, None, "group"),
        "int attention flag": ("dgml_retrieval", {"image_bytes": image, "return_attention": np.int32(1)},
                               None, "return_attention"),
        "unknown option": ("dgml_retrieval", {"image_bytes": image, "top": np.int32(1)}, None, "top"),
        "huge declared shape": ("dgml_retrieval", {"embedding": huge}, "search_embedding", "embedding"),
        "short tensor_content": ("dgml_retrieval", {"embedding": short}, "search_embedding", "tensor_content"),
        "bad embedding width": ("dgml_retrieval", {"embedding": np.zeros((1, 5), np.float32)},
                                "search_embedding", "shape"),
        "double embedding": ("dgml_retrieval", {"embedding": np.zeros((1, 48), np.float64)},
                             "search_embedding", "embedding"),
    }
    for case, (model, inputs, signature, word) in cases.items():
        error = rpc_error(server["predict"].Predict, predict_request(model, inputs, signature=signature))
        expected = (StatusCode.INVALID_ARGUMENT, StatusCode.RESOURCE_EXHAUSTED) \
            if case == "huge declared shape" else (StatusCode.INVALID_ARGUMENT,)
        assert error.code() in expected, (case, error.code(), error.details())
        assert word in error.details(), (case, error.details())
    # The server is still healthy after all of that.
    answer = server["predict"].Predict(predict_request("dgml", {"image_bytes": image}), timeout=60)
    np.testing.assert_allclose(outputs_of(answer)["embedding"], assets["emb"][2][:1], atol=1e-5)


def test_message_size_limit_and_unimplemented_methods(server, assets):
    big = [b"\x89PNG" + b"\0" * (MAX_BODY + 1000)]
    error = rpc_error(server["predict"].Predict, predict_request("dgml", {"image_bytes": big}))
    assert error.code() == StatusCode.RESOURCE_EXHAUSTED
    for method, request in (("Classify", classification_pb2.ClassificationRequest()),
                            ("Regress", regression_pb2.RegressionRequest()),
                            ("MultiInference", inference_pb2.MultiInferenceRequest())):
        if hasattr(request, "model_spec"):
            request.model_spec.name = "dgml"
        error = rpc_error(getattr(server["predict"], method), request)
        assert error.code() == StatusCode.UNIMPLEMENTED, (method, error.details())
    meta = get_model_metadata_pb2.GetModelMetadataRequest()
    meta.model_spec.name = "dgml"
    assert rpc_error(server["predict"].GetModelMetadata, meta).code() == StatusCode.INVALID_ARGUMENT
    meta.metadata_field.append("nope")
    assert rpc_error(server["predict"].GetModelMetadata, meta).code() == StatusCode.INVALID_ARGUMENT


# ---------------------------------------------------------------- the client's gRPC mode


def test_client_grpc_mode_matches_rest(server, assets, tmp_path, capsys):
    images = assets["images"][:2]
    over_grpc = GrpcRetrievalClient(server["target"], "dgml_retrieval")
    try:
        grpc_found = over_grpc.neighbours(images, k=3, group=2)
        status = over_grpc.status()
        assert [s.version for s in status.model_version_status] == [2]
        embedded = GrpcRetrievalClient(server["target"], "dgml", label="stable").embed(images[:1])
        np.testing.assert_allclose(embedded[0]["embedding"], assets["emb"][1][0], atol=1e-5)
    finally:
        over_grpc.close()
    rest_found = RetrievalClient(server["url"], "dgml_retrieval").neighbours(images, k=3, group=2)
    assert [[n.id for n in q] for q in grpc_found] == [[n.id for n in q] for q in rest_found]
    np.testing.assert_allclose([[n.score for n in q] for q in grpc_found],
                               [[n.score for n in q] for q in rest_found], atol=1e-6)
    query = tmp_path / "q.png"
    query.write_bytes(images[0])
    assert client_main(["--grpc", server["target"], "--k", "2", str(query)]) == 0
    out = capsys.readouterr().out
    assert "item/0" in out and "rank" in out
    assert client_main(["--grpc", server["target"], "--model", "nope", str(query)]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


def test_a_taken_grpc_port_stops_the_start(assets):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
        result = subprocess.run(
            [sys.executable, "-m", "serving.server", f"--model_config_file={assets['config']}",
             "--model_name=dgml", "--port=0", f"--grpc_port={port}", "--host=127.0.0.1"],
            capture_output=True, text=True, env=env, cwd=str(REPO), timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"cannot bind the gRPC port 127.0.0.1:{port}" in result.stderr
