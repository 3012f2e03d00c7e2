"""The REST service against real exported SavedModels and a real (ScaNN) index.

Expectations come from outside the server: embeddings from calling the SavedModel directly,
neighbours and scores from a NumPy cosine search, status/metadata shapes and error wording from
TF Serving's REST contract (/work/shared/serving-contract.md).
"""

import shutil
import threading

import numpy as np
import pytest
import tensorflow as tf

from dgml_tf.export.tf_serving_layout import ModelConfig
from serving.state_loader import IndexEmbedderMismatchError, ServingStateLoader
from serving.synthetic_gallery import export_tiny_embedder, index_synthetic_gallery, synthetic_gallery
from serving_harness import ServerProcess, b64, http

LABELS = [0, 0, 1, 1, 2, 2, 3, 3]
K, D, GROUP_DIM = 3, 48, 16
MAX_BODY = 100_000
TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def numpy_search(queries, gallery, k):
    """Reference cosine top-k (ties broken by lower index)."""
    scores = unit(queries) @ unit(gallery).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def serve(tmp_path, *args):
    """A real ``python -m serving.server`` process (see tests/serving_harness.py)."""
    return ServerProcess([f"--max_body_bytes={MAX_BODY}", f"--admin_token={TOKEN}", *args],
                         tmp_path / "server.log")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    base = root / "models"
    images = synthetic_gallery(LABELS)
    out = {"root": root, "base": base / "dgml", "images": images, "emb": {}, "att": {}}
    for version, seed in ((1, 11), (2, 22)):
        path = export_tiny_embedder(base, "dgml", version, seed=seed)
        loaded = tf.saved_model.load(str(path))  # the independent reference path
        result = loaded.signatures["serving_default"](image_bytes=tf.constant(images))
        out["emb"][version] = result["embedding"].numpy()
        out["att"][version] = result["attention"].numpy()
        out[f"pixels_fn{version}"] = (loaded, loaded.signatures["embed_pixels"])
        index_synthetic_gallery(path, images, LABELS, root / f"index_v{version}", backend="scann")
    config = root / "models.config"
    config.write_text(
        "model_config_list { config { name: 'dgml' base_path: '%s' model_platform: 'tensorflow' "
        "model_version_policy { latest { num_versions: 2 } } "
        "version_labels { key: 'stable' value: 1 } version_labels { key: 'canary' value: 2 } } }"
        % (base / "dgml")
    )
    out["config"] = config
    return out


@pytest.fixture(scope="module")
def server(assets):
    with serve(assets["root"], f"--model_config_file={assets['config']}", "--model_name=dgml",
               f"--index_dir={assets['root'] / 'index_v2'}") as srv:
        yield srv


# ---------------------------------------------------------------- status and metadata


def test_status_lists_served_versions_and_resolves_labels(server):
    status, doc = http(server.url + "/v1/models/dgml")
    assert status == 200
    assert [s["version"] for s in doc["model_version_status"]] == ["2", "1"]
    assert all(s["state"] == "AVAILABLE" and s["status"] == {"error_code": "OK", "error_message": ""}
               for s in doc["model_version_status"])
    assert http(server.url + "/v1/models/dgml/versions/1")[1]["model_version_status"][0]["version"] == "1"
    assert http(server.url + "/V1/Models/dgml/labels/stable")[1]["model_version_status"][0]["version"] == "1"
    assert http(server.url + "/v1/models/dgml/labels/canary")[1]["model_version_status"][0]["version"] == "2"
    # The retrieval model takes the version of the embedder its index was built with.
    assert http(server.url + "/v1/models/dgml_retrieval")[1]["model_version_status"][0]["version"] == "2"


def test_metadata_has_tf_serving_shape(server):
    status, doc = http(server.url + "/v1/models/dgml/versions/1/metadata")
    assert status == 200
    assert doc["model_spec"] == {"name": "dgml", "signature_name": "", "version": "1"}
    signatures = doc["metadata"]["signature_def"]["signature_def"]
    default = signatures["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    image_bytes = default["inputs"]["image_bytes"]
    assert image_bytes["dtype"] == "DT_STRING"
    assert image_bytes["tensor_shape"] == {"dim": [{"size": "-1", "name": ""}], "unknown_rank": False}
    assert isinstance(image_bytes["name"], str) and image_bytes["name"]

    def dims(info):
        return [int(d["size"]) for d in info["tensor_shape"]["dim"]]

    assert dims(default["outputs"]["embedding"]) == [-1, D]
    assert dims(default["outputs"]["group_embeddings"]) == [-1, K, GROUP_DIM]
    assert dims(default["outputs"]["attention"])[:2] == [-1, K]
    assert dims(signatures["embed_pixels"]["inputs"]["images"]) == [-1, 32, 32, 3]
    # Latest version when none is named.
    assert http(server.url + "/v1/models/dgml/metadata")[1]["model_spec"]["version"] == "2"

    retrieval = http(server.url + "/v1/models/dgml_retrieval/metadata")[1]
    sigs = retrieval["metadata"]["signature_def"]["signature_def"]
    assert set(sigs) == {"serving_default", "search_embedding"}
    assert set(sigs["serving_default"]["outputs"]) == {"ids", "labels", "paths", "scores", "group_scores", "attention"}
    assert dims(sigs["search_embedding"]["inputs"]["embedding"]) == [-1, D]
    assert sigs["serving_default"]["outputs"]["labels"]["dtype"] == "DT_INT64"


# ---------------------------------------------------------------- predict


def test_predict_row_format_matches_the_savedmodel(server, assets):
    images = assets["images"]
    status, doc = http(server.url + "/v1/models/dgml/versions/1:predict", "POST",
                       {"instances": [b64(i) for i in images[:3]]})
    assert status == 200
    rows = doc["predictions"]
    assert len(rows) == 3 and set(rows[0]) == {"embedding", "group_embeddings", "attention"}
    np.testing.assert_allclose([r["embedding"] for r in rows], assets["emb"][1][:3], atol=1e-5)
    groups = np.asarray([r["group_embeddings"] for r in rows])
    np.testing.assert_allclose(np.linalg.norm(groups, axis=-1), 1.0, atol=1e-5)  # unit groups
    attention = np.asarray([r["attention"] for r in rows])
    np.testing.assert_allclose(attention.sum(axis=(2, 3)), 1.0, atol=1e-5)  # softmax over positions
    # Named-object instances are the same request.
    named = http(server.url + "/v1/models/dgml/versions/1:predict", "POST",
                 {"instances": [{"image_bytes": b64(i)} for i in images[:3]]})[1]
    np.testing.assert_allclose([r["embedding"] for r in named["predictions"]],
                               assets["emb"][1][:3], atol=1e-5)


def test_predict_columnar_format(server, assets):
    images = assets["images"]
    for inputs in ({"image_bytes": [b64(i) for i in images]}, [b64(i) for i in images]):
        status, doc = http(server.url + "/v1/models/dgml/labels/canary:predict", "POST", {"inputs": inputs})
        assert status == 200
        outputs = doc["outputs"]
        assert set(outputs) == {"embedding", "group_embeddings", "attention"}
        np.testing.assert_allclose(outputs["embedding"], assets["emb"][2], atol=1e-5)


def test_predict_float_signature(server, assets):
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    status, doc = http(server.url + "/v1/models/dgml/versions/1:predict", "POST",
                       {"signature_name": "embed_pixels", "instances": pixels.tolist()})
    assert status == 200
    _, function = assets["pixels_fn1"]
    expected = function(images=tf.constant(pixels))["embedding"].numpy()
    np.testing.assert_allclose([r["embedding"] for r in doc["predictions"]], expected, atol=1e-4)


# ---------------------------------------------------------------- errors

PNG = b64(synthetic_gallery([0])[0])
ERROR_CASES = [
    ("POST", "/v1/models/nope:predict", {"instances": [PNG]}, 404,
     "Servable not found for request: Latest(nope)"),
    ("POST", "/v1/models/dgml/versions/7:predict", {"instances": [PNG]}, 404,
     "Servable not found for request: Specific(dgml, 7)"),
    ("GET", "/v1/models/nope", None, 404, "nope"),
    ("GET", "/v1/models/dgml/versions/7", None, 404, "version 7"),
    ("GET", "/v1/models/dgml/labels/nolabel", None, 400, "Unrecognized servable version label: nolabel"),
    ("POST", "/v1/models/dgml/versions/1/labels/stable:predict", {"instances": [PNG]}, 400, "Only one of version and label"),
    ("POST", "/v1/models/dgml:predict", b"{not json", 400, "JSON Parse error"),
    ("POST", "/v1/models/dgml:predict", b"[1, 2]", 400, "object"),
    ("POST", "/v1/models/dgml:predict", {"instances": []}, 400, "instances"),
    ("POST", "/v1/models/dgml:predict", {"signature_name": "serving_default"}, 400, "Missing 'inputs' or 'instances'"),
    ("POST", "/v1/models/dgml:predict", {"instances": [PNG], "inputs": [PNG]}, 400, "Not both"),
    ("POST", "/v1/models/dgml:predict", {"instances": [{"b64": "***not base64***"}]}, 400, "base64"),
    ("POST", "/v1/models/dgml:predict", {"instances": [b64(b"these bytes are no image")]}, 400, "image"),
    ("POST", "/v1/models/dgml:predict", {"instances": [1.5]}, 400, "not of expected type: string"),
    ("POST", "/v1/models/dgml:predict", {"signature_name": "embed_pixels", "instances": [[["a"]]]}, 400,
     "not of expected type: float32"),
    ("POST", "/v1/models/dgml:predict", {"signature_name": "embed_pixels", "inputs": [[1.0, 2.0]]}, 400, "rank"),
    ("POST", "/v1/models/dgml:predict", {"signature_name": "nope", "instances": [PNG]}, 400,
     'Serving signature key "nope" not found'),
    ("POST", "/v1/models/dgml:predict", {"instances": [{"wrong_name": PNG}]}, 400, "wrong_name"),
    ("POST", "/v1/models/dgml:classify", {"examples": [{}]}, 400,
     "Expected classification signature method_name to be tensorflow/serving/classify. "
     "Was: tensorflow/serving/predict"),
    ("POST", "/v1/models/dgml:regress", {"examples": [{}]}, 400, "Expected regression signature"),
    ("POST", "/v1/models/dgml/versions/x:predict", {"instances": [PNG]}, 400, "integer"),
    # TF Serving answers any malformed path under /v1/ with InvalidArgument (400).
    ("GET", "/v1/nothing/here", None, 400, "Malformed request: GET /v1/nothing/here"),
    ("GET", "/v1/models/dgml:predict", None, 400, "Malformed request"),
    ("DELETE", "/v1/models/dgml", None, 400, "Malformed request"),
    ("POST", "/v1/models/dgml/metadata", {}, 400, "Malformed request"),
    ("POST", "/v1/models/dgml:explain", {}, 400, "Malformed request"),
    ("GET", "/not/the/api", None, 404, "Not found"),
    ("POST", "/v1/models/dgml_retrieval:predict", {"instances": [PNG], "k": 0}, 400, "'k'"),
    ("POST", "/v1/models/dgml_retrieval:predict", {"instances": [PNG], "group": K}, 400, "'group'"),
    ("POST", "/v1/models/dgml_retrieval:predict", {"instances": [PNG], "topk": 3}, 400, "topk"),
    ("POST", "/v1/models/dgml_retrieval:predict",
     {"signature_name": "search_embedding", "inputs": [[0.1] * D], "return_attention": True}, 400, "attention"),
    ("POST", "/v1/models/dgml_retrieval:predict",
     {"signature_name": "search_embedding", "inputs": [[0.1] * (D - 1)]}, 400, "shape"),
]


def test_bad_requests_get_tf_serving_errors_and_server_keeps_serving(server, assets):
    # One test over every case: each test costs a Keras session reset in conftest.
    wrong = []
    for method, path, body, status, message in ERROR_CASES:
        got_status, doc = http(server.url + path, method, body)
        if got_status != status or set(doc) != {"error"} or message not in doc["error"]:
            wrong.append((method, path, status, message, got_status, doc))
    assert wrong == []
    status, doc = http(server.url + "/v1/models/dgml/versions/1:predict", "POST",
                       {"instances": [b64(assets["images"][4])]})
    assert status == 200
    np.testing.assert_allclose(doc["predictions"][0]["embedding"], assets["emb"][1][4], atol=1e-5)


def test_oversized_body_gets_413_and_server_keeps_serving(server, assets):
    status, doc = http(server.url + "/v1/models/dgml:predict", "POST",
                       {"instances": [{"b64": "A" * (MAX_BODY + 8)}]})
    assert status == 413 and "exceeds" in doc["error"]
    status, doc = http(server.url + "/v1/models/dgml/versions/2:predict", "POST",
                       {"instances": [b64(assets["images"][0])]})
    assert status == 200
    np.testing.assert_allclose(doc["predictions"][0]["embedding"], assets["emb"][2][0], atol=1e-5)


# ---------------------------------------------------------------- retrieval


def test_retrieval_returns_each_gallery_image_first(server, assets):
    images, emb = assets["images"], assets["emb"][2]
    status, doc = http(server.url + "/v1/models/dgml_retrieval:predict", "POST",
                       {"instances": [b64(i) for i in images], "k": 3})
    assert status == 200
    expected_idx, expected_scores = numpy_search(emb, emb, 3)
    for i, row in enumerate(doc["predictions"]):
        assert row["ids"][0] == f"item/{i}" and row["labels"][0] == LABELS[i]
        assert row["paths"][0] == f"gallery/{i}.png"
        assert row["scores"][0] == pytest.approx(1.0, abs=1e-4)
        np.testing.assert_allclose(row["scores"], expected_scores[i], atol=1e-4)
        assert set(row) == {"ids", "labels", "paths", "scores", "group_scores"}
    # k above the gallery size returns the whole gallery, ranked.
    doc = http(server.url + "/v1/models/dgml_retrieval:predict", "POST",
               {"instances": [b64(images[0])], "k": 100})[1]
    assert sorted(doc["predictions"][0]["ids"]) == sorted(f"item/{i}" for i in range(len(images)))


def test_retrieval_per_group_attention_and_embedding_queries(server, assets):
    images, emb = assets["images"], assets["emb"][2]
    for group in range(K):
        doc = http(server.url + "/v1/models/dgml_retrieval:predict", "POST",
                   {"inputs": {"image_bytes": [b64(i) for i in images]}, "k": 2, "group": group})[1]
        sl = slice(group * GROUP_DIM, (group + 1) * GROUP_DIM)
        expected_idx, expected_scores = numpy_search(emb[:, sl], emb[:, sl], 2)
        np.testing.assert_allclose(doc["outputs"]["scores"], expected_scores, atol=1e-4)
        assert [row[0] for row in doc["outputs"]["ids"]] == [f"item/{i}" for i in range(len(images))]

    doc = http(server.url + "/v1/models/dgml_retrieval:predict", "POST",
               {"instances": [b64(images[5])], "k": 1, "return_attention": True})[1]
    np.testing.assert_allclose(doc["predictions"][0]["attention"], assets["att"][2][5], atol=1e-5)

    doc = http(server.url + "/v1/models/dgml_retrieval:predict", "POST",
               {"signature_name": "search_embedding", "instances": emb[[6, 2]].tolist(), "k": 1})[1]
    assert [r["ids"] for r in doc["predictions"]] == [["item/6"], ["item/2"]]


def test_concurrent_load_has_no_errors(server, assets):
    images, emb = assets["images"], assets["emb"][2]
    failures = []

    def worker(seed):
        try:
            requests(seed)
        except Exception as error:  # a dead thread must fail the test, not vanish
            failures.append((seed, repr(error)))

    def requests(seed):
        for n in range(20):
            i = (seed + n) % len(images)
            if n % 2:
                status, doc = http(server.url + "/v1/models/dgml_retrieval:predict", "POST",
                                   {"instances": [b64(images[i])], "k": 1})
                ok = status == 200 and doc["predictions"][0]["ids"] == [f"item/{i}"]
            else:
                status, doc = http(server.url + "/v1/models/dgml:predict", "POST",
                                   {"instances": [b64(images[i])]})
                ok = status == 200 and np.allclose(doc["predictions"][0]["embedding"], emb[i], atol=1e-5)
            if not ok:
                failures.append((seed, n, status))

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert failures == []
    assert http(server.url + "/healthz")[0] == 200


# ---------------------------------------------------------------- pairing, reload, remote


def test_index_from_another_model_version_is_refused_at_start(assets):
    loader = ServingStateLoader([ModelConfig("dgml", str(assets["base"]))],  # latest: version 2
                                index_dir=str(assets["root"] / "index_v1"), retrieval_for="dgml")
    with pytest.raises(IndexEmbedderMismatchError, match="matches none of the served versions"):
        loader.build(None)


def test_reload_swaps_versions_atomically_under_load(assets, tmp_path):
    """What the contract guarantees, and nothing timing-dependent: every answer comes from one
    consistent (embedder, index) pair, and every request *started after the reload call
    returned* is served by the new version."""
    base, index_dir = tmp_path / "dgml", tmp_path / "index"
    base.mkdir()
    shutil.copytree(assets["base"] / "1", base / "1")
    shutil.copytree(assets["root"] / "index_v1", index_dir)
    images = assets["images"]
    image = b64(images[3])
    emb = {v: assets["emb"][v][3] for v in (1, 2)}
    scores = {v: numpy_search(assets["emb"][v][3:4], assets["emb"][v], 2)[1][0] for v in (1, 2)}
    answers, failures = [], []  # answers: (started after the reload returned, embed v, pair v)
    progress = threading.Condition()
    reload_returned, stopping = threading.Event(), threading.Event()

    def worker():
        try:
            while not stopping.is_set():
                query()
        except Exception as error:  # a dead thread must fail the test, not vanish
            with progress:
                failures.append(repr(error))
                progress.notify_all()

    def query():
        after = reload_returned.is_set()  # read before the request is sent
        s1, d1 = http(srv.url + "/v1/models/dgml:predict", "POST", {"instances": [image]})
        s2, d2 = http(srv.url + "/v1/models/dgml_retrieval:predict", "POST", {"instances": [image], "k": 2})
        with progress:
            if s1 != 200 or s2 != 200:
                failures.append((s1, d1, s2, d2))
            else:
                got = np.asarray(d1["predictions"][0]["embedding"])
                version = next((v for v in (1, 2) if np.allclose(got, emb[v], atol=1e-5)), None)
                # The retrieval answer must come from one consistent (embedder, index) pair.
                row = d2["predictions"][0]
                pair = next((v for v in (1, 2) if np.allclose(row["scores"], scores[v], atol=1e-4)), None)
                if version is None or pair is None or row["ids"][0] != "item/3":
                    failures.append(("inconsistent", version, pair, row))
                answers.append((after, version, pair))
            progress.notify_all()

    def wait_until(predicate):
        with progress:
            assert progress.wait_for(lambda: failures or predicate(), timeout=300), "no progress"
        assert failures == []

    srv = serve(tmp_path, f"--model_base_path={base}", "--model_name=dgml", f"--index_dir={index_dir}")
    workers = [threading.Thread(target=worker) for _ in range(4)]
    try:
        for w in workers:
            w.start()
        wait_until(lambda: len(answers) >= 4)  # version 1 is being served under load
        # A new version appears (staged then renamed, as export_for_serving does) with its index.
        shutil.copytree(assets["base"] / "2", base / ".tmp-2")
        (base / ".tmp-2").rename(base / "2")
        index_synthetic_gallery(base / "2", images, LABELS, index_dir, backend="scann")
        status, doc = http(srv.url + "/v1/admin/reload", "POST", {}, headers=ADMIN)
        assert status == 200 and doc["reloaded"] is True
        reload_returned.set()
        wait_until(lambda: sum(after for after, _, _ in answers) >= 8)
        stopping.set()
        for w in workers:
            w.join(timeout=300)
        assert failures == []
        assert any(v == 1 for after, v, _ in answers if not after)
        late = [(v, pair) for after, v, pair in answers if after]
        assert late and all(v == 2 and pair == 2 for v, pair in late), late
        assert [s["version"] for s in http(srv.url + "/v1/models/dgml")[1]["model_version_status"]] == ["2"]
        assert http(srv.url + "/v1/models/dgml/versions/1:predict", "POST", {"instances": [image]})[0] == 404
        # Nothing changed on disk: reload is a no-op.
        assert http(srv.url + "/v1/admin/reload", "POST", {}, headers=ADMIN)[1]["reloaded"] is False
        # The admin endpoint needs the token: none or a wrong one is 401, and nothing reloads.
        assert http(srv.url + "/v1/admin/reload", "POST", {})[0] == 401
        assert http(srv.url + "/v1/admin/reload", "POST", {},
                    headers={"Authorization": f"Bearer {TOKEN}x"})[0] == 401
        # An index of a version that is not served: reload refused, old pair keeps serving.
        shutil.rmtree(index_dir)
        shutil.copytree(assets["root"] / "index_v1", index_dir)
        status, doc = http(srv.url + "/v1/admin/reload", "POST", {}, headers=ADMIN)
        assert status == 400 and "Reload refused" in doc["error"]
        status, doc = http(srv.url + "/v1/models/dgml_retrieval:predict", "POST", {"instances": [image], "k": 2})
        assert status == 200
        np.testing.assert_allclose(doc["predictions"][0]["scores"], scores[2], atol=1e-4)
    finally:
        stopping.set()
        for w in workers:
            w.join(timeout=300)
        assert srv.stop() == 0


def test_remote_embedder_mode_matches_local(server, assets, tmp_path):
    # The first server plays TF Serving for a second one that only does the index part.
    remote = serve(tmp_path, f"--embedder_url={server.url}/v1/models/dgml", "--model_name=dgml",
                   f"--model_base_path={assets['base']}", f"--index_dir={assets['root'] / 'index_v2'}")
    with remote:
        assert http(remote.url + "/v1/models/dgml")[0] == 404  # no local embedder
        body = {"instances": [b64(i) for i in assets["images"]], "k": 3, "return_attention": True}
        status, via_remote = http(remote.url + "/v1/models/dgml_retrieval:predict", "POST", body)
        assert status == 200
        local = http(server.url + "/v1/models/dgml_retrieval:predict", "POST", body)[1]
        for a, b in zip(via_remote["predictions"], local["predictions"]):
            assert a["ids"] == b["ids"]
            np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-5)
            np.testing.assert_allclose(a["attention"], b["attention"], atol=1e-5)
        # Errors of the remote embedder come back as 4xx, not 500.
        status, doc = http(remote.url + "/v1/models/dgml_retrieval:predict", "POST",
                           {"instances": [b64(b"not an image")]})
        assert status == 400 and "image" in doc["error"]
    # With the index of another version, the remote pairing is refused too.
    with pytest.raises(IndexEmbedderMismatchError, match="remote embedder"):
        ServingStateLoader([], index_dir=str(assets["root"] / "index_v1"), retrieval_for="dgml",
                           embedder_url=server.url + "/v1/models/dgml",
                           embedder_base_path=str(assets["base"])).build(None)


def test_tensorflow_thread_flags_set_the_pools_before_any_model_loads():
    import os
    import subprocess
    import sys

    # A fresh interpreter: TensorFlow's pools can only be sized before its runtime starts.
    probe = ("import sys; from serving import server; server.configure_tensorflow_threads(0, 0); "
             "untouched = 'tensorflow' not in sys.modules; "
             "server.configure_tensorflow_threads(1, 3); import tensorflow as tf; "
             "print(untouched, tf.config.threading.get_intra_op_parallelism_threads(), "
             "tf.config.threading.get_inter_op_parallelism_threads())")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "1", "3"]


@pytest.mark.parametrize("flag", ["--tensorflow_inter_op_parallelism=-2",
                                  "--tensorflow_intra_op_parallelism=1000000"])
def test_thread_flag_out_of_range_is_refused_at_start(flag, capsys):
    from serving import server as server_cli

    code = server_cli.main(["--model_base_path=/nonexistent", "--model_name=dgml", flag])
    assert code == 2
    err = capsys.readouterr().err
    name = flag.split("=")[0]
    assert "cannot start" in err and f"{name} must be between 0 (TensorFlow's default) and 1024" in err
