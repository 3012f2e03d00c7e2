"""Dynamic batching, admission control and error disclosure of the serving core.

The core tests use a fake servable that records the batch size of every model call and can be
held inside a call by a threading event, so what is merged, queued or refused follows from the
order of events, never from timing (batch timeouts are set far beyond any test's run time, so
only "batch full" closes a batch). The last test checks the same against the real server
process and the real exported model, with expectations from calling the SavedModel directly.
"""

import concurrent.futures
import logging
import threading

import numpy as np
import pytest
import tensorflow as tf

from serving.batching import BatchingParameters
from serving.core import CoreConfig, ServingCore
from serving.errors import ServingError, invalid_argument
from serving.model_registry import ModelRegistry, ServedModel, ServingState
from serving.servable import Servable
from serving.signature_defs import make_signature_def, tensor_info
from serving.synthetic_gallery import export_tiny_embedder, synthetic_gallery
from serving_harness import REPO, ServerProcess, b64, http

NEVER = 600_000_000  # batch_timeout_micros: ten minutes, i.e. only full batches run


class RecordingServable(Servable):
    """y = 2 x + offset; rows with x[0] < 0 are invalid; optionally held inside the call."""

    def __init__(self):
        super().__init__("fake", 1)
        self.calls = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.fail_with = None
        spec = {"x": tensor_info("x", "DT_FLOAT", [-1, 2])}
        self._signatures = {"serving_default": make_signature_def(
            spec, {"y": tensor_info("y", "DT_FLOAT", [-1, 2])})}

    @property
    def signature_defs(self):
        return self._signatures

    def run(self, signature_name, inputs, options):
        x = inputs["x"]
        self.calls.append(len(x))
        self.entered.set()
        assert self.release.wait(timeout=300)
        if self.fail_with is not None:
            raise self.fail_with
        if (x[:, 0] < 0).any():
            raise invalid_argument("x[0] must be non-negative")
        return {"y": 2 * x + options.get("offset", 0)}


def make_core(servable, **batching):
    params = {"max_batch_size": 4, "batch_timeout_micros": NEVER, "num_batch_threads": 1, **batching}
    enable = params.pop("enable", True)
    admitted = params.pop("max_concurrent_requests", 256)
    state = ServingState({"fake": ServedModel("fake", {1: servable})})
    return ServingCore(ModelRegistry(lambda previous: previous, state),
                       CoreConfig(batching=BatchingParameters(**params), enable_batching=enable,
                                  max_concurrent_requests=admitted))


def submit(core, value, rows=1, **options):
    x = np.full((rows, 2), value, np.float32)
    return core.submit("fake", None, None, "serving_default", {"x": x}, options)


def test_concurrent_requests_merge_into_full_batches():
    servable = RecordingServable()
    core = make_core(servable, max_batch_size=4)
    futures = [submit(core, float(i)) for i in range(8)]
    results = [f.result(timeout=300) for f in futures]
    assert servable.calls == [4, 4]
    for i, result in enumerate(results):  # each answer is its own rows, in order
        np.testing.assert_array_equal(result.outputs["y"], np.full((1, 2), 2.0 * i))
        assert (result.model, result.version, result.signature) == ("fake", 1, "serving_default")
    # Unbatched, the same requests give the same answers, one call each.
    plain = RecordingServable()
    off = make_core(plain, enable=False)
    for i, result in enumerate(results):
        np.testing.assert_array_equal(submit(off, float(i)).result(timeout=300).outputs["y"],
                                      result.outputs["y"])
    assert plain.calls == [1] * 8
    core.close()
    off.close()


def test_tasks_wait_for_the_model_thread_and_run_as_one_batch():
    servable = RecordingServable()
    core = make_core(servable, max_batch_size=3)
    servable.release.clear()
    first = submit(core, 1.0, rows=3)  # a full batch on its own: runs, and is held
    assert servable.entered.wait(timeout=300)
    waiting = [submit(core, float(v)) for v in (2, 3, 4)]
    assert core.queue_depth == 3 and core.inflight == 4
    servable.release.set()
    assert first.result(timeout=300).outputs["y"].shape == (3, 2)
    assert [w.result(timeout=300).outputs["y"][0, 0] for w in waiting] == [4.0, 6.0, 8.0]
    assert servable.calls == [3, 3]
    assert core.queue_depth == 0 and core.inflight == 0
    core.close()


def test_an_expired_batch_keeps_filling_while_every_model_thread_is_busy():
    servable = RecordingServable()
    core = make_core(servable, max_batch_size=8, batch_timeout_micros=0)
    servable.release.clear()
    first = submit(core, 1.0)  # timeout 0 and a free thread: runs at once, and is held
    assert servable.entered.wait(timeout=300)
    waiting = [submit(core, float(v)) for v in (2, 3, 4)]  # no free thread: one open batch
    assert core.queue_depth == 3
    servable.release.set()
    assert first.result(timeout=300).outputs["y"][0, 0] == 2.0
    assert [w.result(timeout=300).outputs["y"][0, 0] for w in waiting] == [4.0, 6.0, 8.0]
    assert servable.calls == [1, 3]
    core.close()


def test_different_options_never_share_a_model_call():
    servable = RecordingServable()
    core = make_core(servable, max_batch_size=2)
    futures = [submit(core, 1.0, offset=o) for o in (0, 5, 0, 5)]
    assert [f.result(timeout=300).outputs["y"][0, 0] for f in futures] == [2.0, 7.0, 2.0, 7.0]
    assert servable.calls == [2, 2]
    core.close()


def test_one_invalid_item_does_not_fail_its_batch():
    servable = RecordingServable()
    core = make_core(servable, max_batch_size=3)
    good1, bad, good2 = submit(core, 1.0), submit(core, -1.0), submit(core, 2.0)
    assert good1.result(timeout=300).outputs["y"][0, 0] == 2.0
    assert good2.result(timeout=300).outputs["y"][0, 0] == 4.0
    with pytest.raises(ServingError, match="non-negative") as info:
        bad.result(timeout=300)
    assert info.value.code == "INVALID_ARGUMENT" and info.value.http_status == 400
    assert servable.calls == [3, 1, 1, 1]  # the merged call, then one per task
    core.close()


def test_full_batch_queue_answers_unavailable_at_once():
    servable = RecordingServable()
    core = make_core(servable, max_batch_size=1, max_enqueued_batches=1)
    servable.release.clear()
    running = submit(core, 1.0)
    assert servable.entered.wait(timeout=300)
    queued = submit(core, 2.0)  # the one batch allowed to wait
    refused = submit(core, 3.0)
    with pytest.raises(ServingError, match="batch scheduling queue .* is full") as info:
        refused.result(timeout=300)
    assert info.value.code == "UNAVAILABLE" and info.value.http_status == 503
    servable.release.set()
    assert running.result(timeout=300).outputs["y"][0, 0] == 2.0
    assert queued.result(timeout=300).outputs["y"][0, 0] == 4.0
    core.close()


def test_admission_limit_answers_unavailable_and_recovers():
    servable = RecordingServable()
    core = make_core(servable, max_batch_size=1, max_concurrent_requests=2)
    servable.release.clear()
    first = submit(core, 1.0)
    assert servable.entered.wait(timeout=300)
    second = submit(core, 2.0)
    with pytest.raises(ServingError, match="overloaded") as info:
        submit(core, 3.0).result(timeout=300)
    assert info.value.http_status == 503
    servable.release.set()
    first.result(timeout=300), second.result(timeout=300)
    assert submit(core, 4.0).result(timeout=300).outputs["y"][0, 0] == 8.0  # admitted again
    metrics = core.metrics.render().decode()
    assert 'dgml_serving_rejected_total{reason="max_concurrent_requests"} 1.0' in metrics
    core.close()


def test_internal_errors_are_not_disclosed(caplog):
    servable = RecordingServable()
    core = make_core(servable, max_batch_size=1)
    servable.fail_with = RuntimeError("cannot open /secret/weights.h5")
    with caplog.at_level(logging.ERROR, logger="serving"):
        future = core.submit("fake", None, None, "", {"x": np.ones((1, 2), np.float32)}, {},
                             request_id="req-42")
        with pytest.raises(ServingError) as info:
            future.result(timeout=300)
    assert info.value.http_status == 500
    assert info.value.message == "internal error (request id req-42)"
    assert "/secret/weights.h5" in caplog.text and "req-42" in caplog.text
    core.close()


def test_validation_happens_before_any_model_call():
    servable = RecordingServable()
    core = make_core(servable)
    cases = [({"x": np.ones((1, 3), np.float32)}, "shape"),
             ({"z": np.ones((1, 2), np.float32)}, "missing input"),
             ({"x": np.array([[b"a", b"b"]], object)}, "dtype"),
             ({"x": np.ones((257, 2), np.float32)}, "max_instances")]
    for inputs, message in cases:
        with pytest.raises(ServingError, match=message) as info:
            core.predict("fake", None, None, None, inputs, {})
        assert info.value.http_status == 400
    with pytest.raises(ServingError, match="not found") as info:
        core.predict("fake", None, None, "nope", {"x": np.ones((1, 2), np.float32)}, {})
    assert servable.calls == []
    core.close()


def test_batching_parameters_text_proto(tmp_path):
    shipped = BatchingParameters.from_text_proto(REPO / "serving" / "configs" / "batching_parameters.txt")
    assert shipped == BatchingParameters(max_batch_size=32, batch_timeout_micros=2000,
                                         max_enqueued_batches=100, num_batch_threads=2)
    path = tmp_path / "batching.txt"
    path.write_text("max_batch_size { value: 8 } batch_timeout_micros { value: 500 }")
    assert BatchingParameters.from_text_proto(path, num_batch_threads=3) == BatchingParameters(
        max_batch_size=8, batch_timeout_micros=500, max_enqueued_batches=100, num_batch_threads=3)
    path.write_text("max_batch_size { value: 0 }")
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchingParameters.from_text_proto(path)
    path.write_text("no_such_field { value: 1 }")
    with pytest.raises(ValueError, match="batching_parameters_file"):
        BatchingParameters.from_text_proto(path)


# ---------------------------------------------------------------- the real process


def test_server_merges_concurrent_requests_and_isolates_a_bad_image(tmp_path):
    images = synthetic_gallery([0, 1, 2, 3])
    path = export_tiny_embedder(tmp_path / "models", "dgml", 1, seed=3)
    loaded = tf.saved_model.load(str(path))
    expected = loaded.signatures["serving_default"](image_bytes=tf.constant(images))["embedding"].numpy()
    truncated = images[2][: len(images[2]) // 2]  # its header is intact: only decoding fails
    args = [f"--model_base_path={tmp_path / 'models' / 'dgml'}", "--model_name=dgml",
            "--max_batch_size=4", f"--batch_timeout_micros={NEVER}", "--num_batch_threads=1"]
    with ServerProcess(args, tmp_path / "server.log") as server:
        def round_trip(payloads):
            with concurrent.futures.ThreadPoolExecutor(len(payloads)) as pool:
                return list(pool.map(lambda p: http(server.url + "/v1/models/dgml:predict", "POST",
                                                    {"instances": [b64(p)]}), payloads))

        answers = round_trip([images[0], images[1], truncated, images[3]])
        assert [status for status, _ in answers] == [200, 200, 400, 200]
        assert "png" in answers[2][1]["error"].lower()  # TensorFlow's decoder names the problem
        for i in (0, 1, 3):
            np.testing.assert_allclose(answers[i][1]["predictions"][0]["embedding"], expected[i], atol=1e-5)
        answers = round_trip(images)
        for i, (status, doc) in enumerate(answers):
            assert status == 200
            np.testing.assert_allclose(doc["predictions"][0]["embedding"], expected[i], atol=1e-5)
        metrics = http_text(server.url + "/monitoring/prometheus/metrics")
        labels = 'model="dgml",signature="serving_default",version="1"'
        # Two merged model calls of four requests each (the per-item retries are not batches).
        assert f"dgml_serving_batch_tasks_count{{{labels}}} 2.0" in metrics
        assert f"dgml_serving_batch_tasks_sum{{{labels}}} 8.0" in metrics
        assert f'dgml_serving_requests_total{{code="OK",{labels}}} 7.0' in metrics
        assert f'dgml_serving_requests_total{{code="INVALID_ARGUMENT",{labels}}} 1.0' in metrics


def http_text(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=60) as response:
        assert response.status == 200
        return response.read().decode()
