"""Prometheus metrics of the service, served at TF Serving's ``/monitoring/prometheus/metrics``.

One :class:`ServingMetrics` per server, on its own ``CollectorRegistry`` (so two servers in one
process, as in tests, never share counters). Label values come only from the server's side:
model names and versions that resolved to a served model (anything else is ``"unknown"``), the
canonical status code, the HTTP status, and route templates, never raw URL text, so a client
cannot blow up the number of series.

Series:
    dgml_serving_requests_total{model, version, signature, code}    predict calls by outcome
    dgml_serving_request_errors_total{model, version, code}         the non-OK ones
    dgml_serving_request_latency_seconds{model, version, signature}  histogram, admission to answer
    dgml_serving_batch_size{model, version, signature}               rows per model call
    dgml_serving_batch_tasks{model, version, signature}              requests merged per call
    dgml_serving_queue_depth                                         tasks waiting for a model thread
    dgml_serving_inflight_requests                                   admitted predict calls
    dgml_serving_rejected_total{reason}                              503s from admission control
    dgml_serving_http_requests_total{method, route, status}          every HTTP answer
    dgml_serving_http_request_duration_seconds{method, route}        histogram
"""

from __future__ import annotations

import logging
from typing import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTENT_TYPE = CONTENT_TYPE_LATEST
# One line per request, REST and gRPC alike (a logger of its own, so it can be routed apart).
ACCESS_LOG = logging.getLogger("serving.access")
_METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH")


class ServingMetrics:
    """The server's counters, histograms and gauges.

    Args:
        queue_depth: called at scrape time for the queue-depth gauge.
        inflight: called at scrape time for the in-flight gauge.

    Example:
        >>> metrics = ServingMetrics()
        >>> metrics.observe_predict("dgml", "1", "serving_default", "OK", 0.012)
        >>> b"dgml_serving_requests_total" in metrics.render()
        True
    """

    def __init__(self, queue_depth: Callable[[], int] = lambda: 0,
                 inflight: Callable[[], int] = lambda: 0):
        self.registry = CollectorRegistry()
        model = ["model", "version", "signature"]
        self.requests = Counter("dgml_serving_requests", "Predict calls by outcome (canonical code).",
                                model + ["code"], registry=self.registry)
        self.errors = Counter("dgml_serving_request_errors", "Predict calls that failed.",
                              ["model", "version", "code"], registry=self.registry)
        self.latency = Histogram("dgml_serving_request_latency_seconds",
                                 "Predict latency from admission to answer.", model,
                                 buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("dgml_serving_batch_size", "Rows per model call.", model,
                                    buckets=_BATCH_BUCKETS, registry=self.registry)
        self.batch_tasks = Histogram("dgml_serving_batch_tasks", "Requests merged per model call.",
                                     model, buckets=_BATCH_BUCKETS, registry=self.registry)
        self.rejected = Counter("dgml_serving_rejected", "Requests refused by admission control.",
                                ["reason"], registry=self.registry)
        self.http_requests = Counter("dgml_serving_http_requests", "HTTP answers.",
                                     ["method", "route", "status"], registry=self.registry)
        self.http_duration = Histogram("dgml_serving_http_request_duration_seconds",
                                       "HTTP request duration.", ["method", "route"],
                                       buckets=_LATENCY_BUCKETS, registry=self.registry)
        self._queue_depth = Gauge("dgml_serving_queue_depth", "Tasks waiting for a model thread.",
                                  registry=self.registry)
        self._inflight = Gauge("dgml_serving_inflight_requests",
                               "Admitted predict calls (queued or running).", registry=self.registry)
        self.bind_gauges(queue_depth, inflight)
        # Label tuple -> child series. ``labels()`` validates and locks on every call (~4 us,
        # on the event loop for every answer); a child, once made, is the same object for good
        # (series are never removed), so each is looked up once.
        self._children: dict = {}

    def _child(self, metric, *values: str):
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def bind_gauges(self, queue_depth: Callable[[], int], inflight: Callable[[], int]) -> None:
        """Sets what the queue-depth and in-flight gauges read at scrape time."""
        self._queue_depth.set_function(queue_depth)
        self._inflight.set_function(inflight)

    def observe_predict(self, model: str, version: str, signature: str, code: str,
                        seconds: float) -> None:
        """Records one predict call's outcome and latency."""
        self._child(self.requests, model, version, signature, code).inc()
        if code != "OK":
            self._child(self.errors, model, version, code).inc()
        self._child(self.latency, model, version, signature).observe(seconds)

    def observe_batch(self, labels: Mapping[str, str], rows: int, tasks: int) -> None:
        """Records one model call of ``rows`` rows merged from ``tasks`` requests."""
        key = (labels.get("model", "unknown"), labels.get("version", ""), labels.get("signature", ""))
        self._child(self.batch_size, *key).observe(rows)
        self._child(self.batch_tasks, *key).observe(tasks)

    def observe_http(self, method: str, route: str, status: int, seconds: float) -> None:
        """Records one HTTP answer (``route`` is a template, never the raw path)."""
        if method not in _METHODS:
            method = "OTHER"
        self._child(self.http_requests, method, route, str(status)).inc()
        self._child(self.http_duration, method, route).observe(seconds)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
