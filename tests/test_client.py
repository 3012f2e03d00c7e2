"""``python -m serving.server`` as a real process, driven by ``serving.client``.

Covers the command lines (server and client), the client library, reload on SIGHUP and graceful
shutdown on SIGTERM. Expectations: the embedder SavedModel called directly, and the gallery's
known ids/labels.
"""

import json
import shutil
import signal
import socket

import numpy as np
import pytest
import tensorflow as tf

from dgml_tf.index import build_index
from serving import server as server_cli
from serving.client import RetrievalClient, ServingClientError, main as client_main
from serving.synthetic_gallery import export_tiny_embedder, index_synthetic_gallery, synthetic_gallery
from serving_harness import ServerProcess, b64, free_port, read_response, read_until_closed

LABELS = [0, 0, 1, 1, 2, 2]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("client")
    path = export_tiny_embedder(root / "models", "dgml", 1, seed=5)
    images = synthetic_gallery(LABELS)
    index_synthetic_gallery(path, images, LABELS, root / "index", backend="scann")
    loaded = tf.saved_model.load(str(path))
    embeddings = loaded.signatures["serving_default"](image_bytes=tf.constant(images))["embedding"].numpy()
    return {"root": root, "base": root / "models" / "dgml", "images": images, "emb": embeddings}


@pytest.fixture(scope="module")
def server_process(assets):
    # Idle keep-alive connections stay open for 10 minutes unless the shutdown closes them.
    server = ServerProcess([f"--model_base_path={assets['base']}", "--model_name=dgml",
                            f"--index_dir={assets['root'] / 'index'}", "--host=127.0.0.1",
                            "--keep_alive_timeout_seconds=600", "--graceful_shutdown_timeout=120"],
                           assets["root"] / "server.log")
    yield {"process": server.process, "url": server.url, "server": server}
    server.kill()


def test_client_library(server_process, assets):
    url, images = server_process["url"], assets["images"]
    retrieval = RetrievalClient(url, "dgml_retrieval")
    assert retrieval.status()["model_version_status"][0]["state"] == "AVAILABLE"
    signatures = retrieval.metadata()["metadata"]["signature_def"]["signature_def"]
    assert "search_embedding" in signatures

    results = retrieval.neighbours(images, k=2)
    for i, neighbours in enumerate(results):
        assert [n.rank for n in neighbours] == [1, 2]
        assert neighbours[0].id == f"item/{i}" and neighbours[0].label == LABELS[i]
        assert neighbours[0].path == f"gallery/{i}.png"
        assert neighbours[0].score == pytest.approx(1.0, abs=1e-4)
        assert neighbours[0].score >= neighbours[1].score
    found, attention = retrieval.neighbours(images[:2], k=1, group=2, return_attention=True)
    assert [f[0].id for f in found] == ["item/0", "item/1"]
    attention = np.asarray(attention)
    assert attention.shape[:2] == (2, 3)
    np.testing.assert_allclose(attention.sum(axis=(2, 3)), 1.0, atol=1e-5)

    embedded = RetrievalClient(url, "dgml", version=1).embed(images[:3])
    np.testing.assert_allclose([e["embedding"] for e in embedded], assets["emb"][:3], atol=1e-5)


def test_client_command_line_prints_a_table(server_process, assets, tmp_path, capsys):
    files = []
    for i in (0, 3):
        path = tmp_path / f"query{i}.png"
        path.write_bytes(assets["images"][i])
        files.append(str(path))
    code = client_main(["--url", server_process["url"], "--model", "dgml_retrieval", "--k", "2", *files])
    out = capsys.readouterr().out
    assert code == 0
    blocks = out.split("query: ")[1:]
    assert [b.splitlines()[0] for b in blocks] == files
    # First neighbour row of each block: rank 1, the query itself.
    first_rows = [b.splitlines()[2].split() for b in blocks]
    assert [(r[0], r[2], r[3]) for r in first_rows] == [("1", "0", "item/0"), ("1", "1", "item/3")]


def test_client_errors_are_clear(server_process, assets, capsys):
    with pytest.raises(ServingClientError, match="HTTP 404: Servable not found for request: Latest") as info:
        RetrievalClient(server_process["url"], "missing_model").neighbours(assets["images"][:1])
    assert info.value.status == 404
    with pytest.raises(ServingClientError, match="HTTP 400") as info:
        RetrievalClient(server_process["url"], "dgml_retrieval").neighbours([b"not an image"])
    assert info.value.status == 400
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServingClientError, match="cannot reach") as info:
        RetrievalClient(closed, "dgml_retrieval").status()
    assert info.value.status is None
    assert client_main(["--url", closed, "/nonexistent.png"]) == 2
    assert "cannot read" in capsys.readouterr().err
    with pytest.raises(ValueError, match="either version or label"):
        RetrievalClient(closed, "dgml", version=1, label="stable")


def test_server_refuses_an_index_of_another_model(assets, tmp_path, capsys):
    other = tmp_path / "other_index"
    build_index(other, assets["emb"], "0/0/0/0", num_groups=3, backend="exact")
    code = server_cli.main([f"--model_base_path={assets['base']}", "--model_name=dgml",
                            f"--index_dir={other}", f"--port={free_port()}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot start" in err and "0/0/0/0" in err and "matches none of the served versions" in err


def test_sighup_reloads_and_sigterm_stops_gracefully(server_process, assets):
    server, url = server_process["server"], server_process["url"]
    client = RetrievalClient(url, "dgml")
    # Version 2 appears (staged, then renamed into place): a copy, so the index still matches.
    staging = assets["base"] / ".tmp-2"
    shutil.copytree(assets["base"] / "1", staging)
    staging.rename(assets["base"] / "2")
    mark = server.mark()
    server.signal(signal.SIGHUP)
    server.wait_for(r"reloaded: dgml versions \[2\]", start=mark)
    assert [s["version"] for s in client.status()["model_version_status"]] == ["2"]
    retrieval = RetrievalClient(url, "dgml_retrieval")
    assert retrieval.status()["model_version_status"][0]["version"] == "2"
    assert retrieval.neighbours(assets["images"][4:5], k=1)[0][0].id == "item/4"

    port = server.port
    idle = []
    for _ in range(3):  # keep-alive connections left idle after one answered request
        sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(sock)[0] == 200
        idle.append(sock)
    body = json.dumps({"instances": [b64(assets["images"][1])], "k": 1}).encode()
    slow = socket.create_connection(("127.0.0.1", port), timeout=120)
    slow.sendall(b"POST /v1/models/dgml_retrieval:predict HTTP/1.1\r\nHost: t\r\n"
                 b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body))
    # The server asks for the body once the request is inside the app: it is in flight.
    assert slow.recv(1024).startswith(b"HTTP/1.1 100")
    mark = server.mark()
    server.signal(signal.SIGTERM)
    server.wait_for("Shutting down", start=mark)
    for sock in idle:  # idle connections are closed by the shutdown, not by a timeout
        assert read_until_closed(sock) == b""
        sock.close()
    slow.sendall(body)
    status, _, doc = read_response(slow)
    slow.close()
    assert status == 200 and doc["predictions"][0]["ids"] == ["item/1"]
    assert server.process.wait(timeout=120) == 0
    log = server.log
    assert "POST /v1/models/dgml_retrieval:predict HTTP/1.1 200" in log  # request logging
    assert "reloaded" in log and "stopped" in log
