"""The transport-neutral serving core: admission, validation, batching, metrics, error mapping.

Both transports (REST in ``serving.http_app``, gRPC in ``serving.grpc_api``) call the same
:class:`ServingCore`, so limits, the overload answer, dynamic batching and the metrics are one
implementation. Transports only turn their wire format into arrays and back.

Public API (stable)::

    core = ServingCore(registry, CoreConfig(...), metrics=ServingMetrics())  # metrics optional

    # Predict on decoded arrays (gRPC: tf.make_ndarray of each TensorProto). Thread-safe and
    # non-blocking: returns a concurrent.futures.Future resolving to a Prediction, or failing
    # with serving.errors.ServingError (its .code is the canonical gRPC code name, its .message
    # the text to send; 5xx internals are already replaced by "internal error (request id ..)").
    future = core.submit(model, version, label, signature, inputs, options, request_id=None)
    prediction = core.predict(model, version, label, signature, inputs, options,
                              request_id=None, timeout=None)          # blocking form
    prediction.outputs    # {name: np.ndarray}, rows in request order
    prediction.model, prediction.version, prediction.signature   # what served it

    # REST: a parsed PredictRequest (serving.tensor_json) is decoded against the resolved
    # signature, then goes the same way.
    future = core.submit_request(model, version, label, predict_request, request_id=None)

    core.model_status(model, version=None, label=None) -> dict     # GET /v1/models/... body
    core.model_metadata(model, version=None, label=None) -> dict   # GET .../metadata body
    core.resolve(model, version=None, label=None) -> Servable      # registry snapshot lookup
    core.reload() -> bool        # FAILED_PRECONDITION ServingError when refused
    core.close(timeout_s)        # finish queued work, refuse new calls
    core.inflight, core.queue_depth    # ints, for readiness/metrics

``model`` is a str, ``version`` an int or None, ``label`` a str or None (not both),
``signature`` a str ("" or None means ``serving_default``), ``options`` the request options
that sit beside ``signature_name`` in a REST body (``{"k": 5}`` for the retrieval model; gRPC
callers pass ``{}`` or what they read from request metadata).

Admission: at most ``max_concurrent_requests`` predict calls are admitted (queued or running);
the next one fails at once with UNAVAILABLE (HTTP 503). Validation before any model work: the
signature exists, input names/dtypes/shapes match, at most ``limits.max_instances`` rows, and
every image input is checked from its header (``serving.image_guard``). Model calls run on
``batching.num_batch_threads`` threads, merged by ``serving.batching.DynamicBatcher`` when
``enable_batching`` (the default).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
import uuid
from typing import Any, Mapping, Optional

import numpy as np

from serving.batching import BatchingParameters, DynamicBatcher, batch_key_shapes, freeze
from serving.errors import ServingError, failed_precondition, invalid_argument, public_error
from serving.image_guard import check_images
from serving.limits import Limits
from serving.metrics import ServingMetrics
from serving.model_registry import ModelRegistry, ServingState
from serving.servable import Servable
from serving.tensor_json import DEFAULT_SIGNATURE, PredictRequest, check_arrays, decode_inputs

LOG = logging.getLogger("serving")


@dataclasses.dataclass(frozen=True)
class CoreConfig:
    """How the core admits, checks and batches requests.

    Attributes:
        limits: size limits (``serving.limits.Limits``).
        batching: TF Serving's batching parameters (also sizes the model thread pool).
        enable_batching: merge concurrent requests (on by default, as ``--enable_batching``).
        max_concurrent_requests: predict calls admitted at once (queued + running).
    """

    limits: Limits = Limits()
    batching: BatchingParameters = BatchingParameters()
    enable_batching: bool = True
    max_concurrent_requests: int = 256

    def __post_init__(self):
        if self.max_concurrent_requests < 1:
            raise ValueError(f"max_concurrent_requests must be >= 1, got {self.max_concurrent_requests}.")


@dataclasses.dataclass(frozen=True)
class Prediction:
    """A predict answer: the outputs and the servable that computed them."""

    outputs: dict
    model: str
    version: int
    signature: str


class ServingCore:
    """See the module docstring for the API.

    Args:
        registry: the served models (reloaded atomically).
        config: limits, batching and admission.
        metrics: where to record; a fresh :class:`ServingMetrics` when None.
    """

    def __init__(self, registry: ModelRegistry, config: CoreConfig = CoreConfig(),
                 metrics: Optional[ServingMetrics] = None):
        self.registry = registry
        self.config = config
        self._inflight = 0
        self._idle = threading.Condition()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.batching.num_batch_threads, thread_name_prefix="model")
        self.metrics = metrics or ServingMetrics()
        self.metrics.bind_gauges(lambda: self.queue_depth, lambda: self.inflight)
        self.batcher = DynamicBatcher(config.batching, self._executor,
                                      max_batch_cost=config.limits.max_request_pixels,
                                      on_batch=self.metrics.observe_batch,
                                      enabled=config.enable_batching)

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> ServingState:
        return self.registry.state

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def queue_depth(self) -> int:
        return self.batcher.queue_depth

    def resolve(self, model: str, version: Optional[int] = None, label: Optional[str] = None) -> Servable:
        return self.registry.state.resolve(model, version, label)

    def model_status(self, model: str, version: Optional[int] = None, label: Optional[str] = None) -> dict:
        return self.registry.state.status(model, version, label)

    def model_metadata(self, model: str, version: Optional[int] = None, label: Optional[str] = None) -> dict:
        return self.resolve(model, version, label).metadata()

    def reload(self) -> bool:
        """Rebuilds the served snapshot; True if anything changed.

        Raises:
            ServingError: FAILED_PRECONDITION when the new snapshot is refused (the old one
                keeps serving).
        """
        try:
            return self.registry.reload()
        except ServingError:
            raise
        except (ValueError, FileNotFoundError) as error:
            raise failed_precondition(
                f"Reload refused, still serving the previous versions: {error}") from None

    # ------------------------------------------------------------------ predict

    def predict(self, model: str, version: Optional[int], label: Optional[str], signature: Optional[str],
                inputs: Mapping[str, Any], options: Optional[Mapping[str, Any]] = None,
                request_id: Optional[str] = None, timeout: Optional[float] = None) -> Prediction:
        """Blocking :meth:`submit`; raises ``ServingError``."""
        future = self.submit(model, version, label, signature, inputs, options, request_id)
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise ServingError("DEADLINE_EXCEEDED", f"No answer within {timeout} s.") from None

    def submit(self, model: str, version: Optional[int], label: Optional[str], signature: Optional[str],
               inputs: Mapping[str, Any], options: Optional[Mapping[str, Any]] = None,
               request_id: Optional[str] = None) -> concurrent.futures.Future:
        """Admits, checks and queues one predict call on decoded arrays (see module docstring)."""
        signature = signature or DEFAULT_SIGNATURE

        def decode(servable: Servable, specs) -> dict:
            return check_arrays(inputs, specs)

        return self._submit(model, version, label, signature, decode, dict(options or {}), request_id)

    def submit_request(self, model: str, version: Optional[int], label: Optional[str],
                       request: PredictRequest, request_id: Optional[str] = None) -> concurrent.futures.Future:
        """:meth:`submit` for a parsed REST body (row or columnar, b64 strings)."""

        def decode(servable: Servable, specs) -> dict:
            return decode_inputs(request, specs)

        return self._submit(model, version, label, request.signature_name, decode,
                            dict(request.options), request_id)

    def _submit(self, model, version, label, signature, decode, options, request_id):
        request_id = request_id or uuid.uuid4().hex
        started = time.perf_counter()
        outer: concurrent.futures.Future = concurrent.futures.Future()
        labels = {"model": "unknown", "version": "", "signature": ""}
        with self._idle:
            if self._inflight >= self.config.max_concurrent_requests:
                self.metrics.rejected.labels("max_concurrent_requests").inc()
                outer.set_exception(ServingError(
                    "UNAVAILABLE",
                    f"Server overloaded: {self._inflight} predict requests are already queued or "
                    "running (--max_concurrent_requests); retry with backoff."))
                return outer
            self._inflight += 1

        def finish(result=None, error: Optional[BaseException] = None) -> None:
            code = "OK"
            if error is not None:
                error = public_error(error, request_id, LOG)
                code = error.code
                if code == "UNAVAILABLE":
                    self.metrics.rejected.labels("batch_queue").inc()
            self.metrics.observe_predict(labels["model"], labels["version"], labels["signature"],
                                         code, time.perf_counter() - started)
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()
            if error is not None:
                outer.set_exception(error)
            else:
                outer.set_result(result)

        try:
            servable = self.resolve(model, version, label)
            labels.update(model=servable.name, version=str(servable.version))
            specs = servable.input_specs(signature)
            # Only a signature the servable has becomes a label: a client choosing random
            # names must not grow the metrics without bound.
            labels["signature"] = signature
            arrays = decode(servable, specs)
            rows, cost = self._check(servable, signature, arrays)
            key = (id(servable), signature, freeze(options),
                   batch_key_shapes(arrays) if rows is not None else object())

            def run(merged: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
                return servable.run(signature, merged, options)

            inner = self.batcher.submit(key, run, arrays, rows=rows or 1, cost=cost, labels=labels)
        except BaseException as error:  # validation errors answer at once
            finish(error=error)
            return outer

        def done(f: concurrent.futures.Future) -> None:
            if f.cancelled():
                finish(error=ServingError("CANCELLED", "The request was cancelled."))
            elif f.exception() is not None:
                finish(error=f.exception())
            else:
                finish(Prediction(dict(f.result()), servable.name, servable.version, signature))

        inner.add_done_callback(done)
        return outer

    def _check(self, servable: Servable, signature: str, arrays: Mapping[str, np.ndarray]):
        """(rows or None when the inputs cannot be batched, decoded-pixel cost)."""
        limits = self.config.limits
        leading = set()
        for name, array in arrays.items():
            if array.ndim == 0:
                leading.add(None)
                continue
            if array.shape[0] > limits.max_instances:
                raise invalid_argument(
                    f"Input '{name}' has {array.shape[0]} rows; this server accepts at most "
                    f"{limits.max_instances} per request (--max_instances); split the request.")
            if array.shape[0] == 0:
                raise invalid_argument(f"Input '{name}' is empty: send at least one row.")
            leading.add(array.shape[0])
        cost = 0
        for name in servable.image_inputs(signature):
            if name in arrays:
                cost += check_images(arrays[name].reshape(-1), limits.max_image_pixels,
                                     limits.max_request_pixels, name)
        rows = leading.pop() if len(leading) == 1 else None
        return rows, cost

    def close(self, timeout: float = 30.0) -> bool:
        """Runs what is queued, refuses new calls, waits up to ``timeout`` s; True if idle."""
        self.batcher.close()
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._inflight and time.monotonic() < deadline:
                self._idle.wait(timeout=max(deadline - time.monotonic(), 0.0))
            idle = self._inflight == 0
        self._executor.shutdown(wait=idle, cancel_futures=not idle)
        return idle
