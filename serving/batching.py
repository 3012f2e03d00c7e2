"""Server-side dynamic batching: concurrent requests merged into one model call.

What TF Serving's ``--enable_batching`` / ``batching_parameters`` do, for any transport: tasks
with the same *batch key* (same servable, signature, request options and per-row input shapes)
are appended to an open batch; the batch runs when it holds ``max_batch_size`` rows or when
``batch_timeout_micros`` have passed since its first task arrived, on a bounded pool of
``num_batch_threads`` model threads. At most ``max_enqueued_batches`` batches wait at once;
beyond that a task is refused with UNAVAILABLE (503) at once, as TF Serving's "The batch
scheduling queue to which this task was submitted is full".

One refinement over TF Serving's scheduler: a batch whose timeout has passed while every model
thread is busy stays open (up to ``max_batch_size``) until a thread frees, instead of closing
small and queueing behind the running calls; under load, batches then grow with the backlog
(the tasks would have waited for a thread anyway), which is where batching saves the most.

A merged call that fails with a client error (INVALID_ARGUMENT, FAILED_PRECONDITION,
OUT_OF_RANGE: one undecodable image, say) is re-run one task at a time, so only the task at
fault gets the error. Outputs are split back by row offsets; a model whose outputs do not keep
the batch dimension is run per task too.

Example:
    >>> batcher = DynamicBatcher(BatchingParameters(max_batch_size=8), executor)  # doctest: +SKIP
    >>> future = batcher.submit(key, run, {"x": rows}, rows=len(rows))
    >>> future.result()["y"]
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Hashable, Mapping, Optional

import numpy as np

from serving.errors import ServingError

LOG = logging.getLogger("serving")
RunFn = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]
# Errors caused by one task's data: worth re-running the others alone.
_PER_TASK_CODES = ("INVALID_ARGUMENT", "FAILED_PRECONDITION", "OUT_OF_RANGE")


@dataclasses.dataclass(frozen=True)
class BatchingParameters:
    """TF Serving's ``BatchingParameters`` (the fields this server uses).

    Attributes:
        max_batch_size: most rows in one merged model call.
        batch_timeout_micros: longest a batch waits for more tasks after its first one.
        max_enqueued_batches: most batches open or waiting for a model thread; beyond, 503.
        num_batch_threads: model threads (calls run concurrently; TF/ScaNN release the GIL).
    """

    max_batch_size: int = 32
    batch_timeout_micros: int = 2000
    max_enqueued_batches: int = 100
    num_batch_threads: int = 2

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            minimum = 0 if field.name == "batch_timeout_micros" else 1
            if not isinstance(value, int) or value < minimum:
                raise ValueError(f"{field.name} must be an integer >= {minimum}, got {value!r}.")

    @classmethod
    def from_text_proto(cls, path: str | Path, **defaults: int) -> "BatchingParameters":
        """Reads TF Serving's ``--batching_parameters_file`` (text proto); unset fields keep
        ``defaults`` (or the class defaults).

        Example:
            >>> BatchingParameters.from_text_proto("serving/configs/batching_parameters.txt")
            BatchingParameters(max_batch_size=32, batch_timeout_micros=2000, max_enqueued_batches=100, num_batch_threads=2)
        """
        from google.protobuf import text_format

        from dgml_tf.export.serving_protos import batching_parameters_class

        try:
            message = text_format.Parse(Path(path).read_text(), batching_parameters_class()())
        except text_format.ParseError as error:
            raise ValueError(f"--batching_parameters_file {path}: {error}") from None
        values = dict(defaults)
        for field in dataclasses.fields(cls):
            if message.HasField(field.name):
                values[field.name] = int(getattr(message, field.name).value)
        return cls(**values)


@dataclasses.dataclass
class _Task:
    inputs: Mapping[str, np.ndarray]
    rows: int
    cost: int
    future: concurrent.futures.Future


@dataclasses.dataclass
class _Batch:
    key: Hashable
    run: RunFn
    deadline: float
    labels: Mapping[str, str]
    tasks: list = dataclasses.field(default_factory=list)
    rows: int = 0
    cost: int = 0


class DynamicBatcher:
    """Merges tasks into batches and runs them on ``executor``; see the module docstring.

    Args:
        parameters: batch size, timeout and queue bound.
        executor: the model thread pool (``parameters.num_batch_threads`` workers).
        max_batch_cost: most summed ``cost`` per batch (e.g. decoded image pixels); a task
            alone may exceed it (it was admitted by its own limits) but is then not merged.
        on_batch: ``on_batch(labels, rows, tasks)`` after each model call (metrics).
        enabled: False runs every task as its own call (batching off), through the same queue
            bound and threads.
    """

    def __init__(self, parameters: BatchingParameters, executor: concurrent.futures.Executor,
                 max_batch_cost: Optional[int] = None,
                 on_batch: Optional[Callable[[Mapping[str, str], int, int], None]] = None,
                 enabled: bool = True):
        self.parameters = parameters
        self.enabled = enabled
        self._executor = executor
        self._max_cost = max_batch_cost
        self._on_batch = on_batch
        self._timeout = parameters.batch_timeout_micros / 1e6
        self._open: dict[Hashable, _Batch] = {}
        self._waiting_batches = 0  # closed, not yet started
        self._waiting_tasks = 0    # in open or waiting batches
        self._busy = 0             # batches dispatched and not finished
        self._lock = threading.Condition()
        self._closed = False
        self._scheduler = threading.Thread(target=self._schedule, name="batch-scheduler",
                                           daemon=True)
        self._scheduler.start()

    @property
    def queue_depth(self) -> int:
        """Tasks waiting for a model thread (in open or closed batches)."""
        return self._waiting_tasks

    def submit(self, key: Hashable, run: RunFn, inputs: Mapping[str, np.ndarray], rows: int,
               cost: int = 0, labels: Optional[Mapping[str, str]] = None) -> concurrent.futures.Future:
        """Queues one task; its future gets ``run``'s outputs for its own rows.

        Args:
            key: tasks merge only with tasks of equal key (``run`` must be interchangeable
                among them: same servable, signature and options).
            run: the model call, on inputs concatenated along axis 0.
            inputs: ``{name: array}``, each with ``rows`` rows.
            rows: the task's batch size.
            cost: its share of ``max_batch_cost``.
            labels: metric labels of the batch (model, version, signature).

        Raises:
            ServingError: UNAVAILABLE when ``max_enqueued_batches`` batches already wait.
        """
        future: concurrent.futures.Future = concurrent.futures.Future()
        task = _Task(inputs, int(rows), int(cost), future)
        with self._lock:
            if self._closed:
                raise ServingError("UNAVAILABLE", "The server is shutting down.")
            batch = self._open.get(key) if self.enabled else None
            if batch is not None and not self._fits(batch, task):
                self._dispatch_locked(self._open.pop(key))
                batch = None
            if batch is None:
                if self._waiting_batches + len(self._open) >= self.parameters.max_enqueued_batches:
                    raise ServingError(
                        "UNAVAILABLE",
                        "The batch scheduling queue to which this task was submitted is full "
                        f"({self.parameters.max_enqueued_batches} batches wait, "
                        "max_enqueued_batches); retry with backoff.")
                batch = _Batch(key, run, time.monotonic() + self._timeout, dict(labels or {}))
                if self.enabled:
                    self._open[key] = batch
            batch.tasks.append(task)
            batch.rows += task.rows
            batch.cost += task.cost
            self._waiting_tasks += 1
            if (not self.enabled or batch.rows >= self.parameters.max_batch_size
                    or (self._timeout == 0 and self._thread_free())):
                self._open.pop(key, None)
                self._dispatch_locked(batch)
            elif len(batch.tasks) == 1:
                self._lock.notify()  # a new deadline for the scheduler
        return future

    def close(self) -> None:
        """Runs the open batches now and refuses new tasks."""
        with self._lock:
            self._closed = True
            for batch in list(self._open.values()):
                self._dispatch_locked(batch)
            self._open.clear()
            self._lock.notify()

    def _fits(self, batch: _Batch, task: _Task) -> bool:
        if batch.rows + task.rows > self.parameters.max_batch_size:
            return False
        return self._max_cost is None or batch.cost + task.cost <= self._max_cost

    def _thread_free(self) -> bool:
        return self._busy < self.parameters.num_batch_threads

    def _dispatch_locked(self, batch: _Batch) -> None:
        self._waiting_batches += 1
        self._busy += 1
        try:
            self._executor.submit(self._execute, batch)
        except RuntimeError:  # executor shut down
            self._waiting_batches -= 1
            self._busy -= 1
            self._waiting_tasks -= len(batch.tasks)
            for task in batch.tasks:
                task.future.set_exception(ServingError("UNAVAILABLE", "The server is shutting down."))

    def _schedule(self) -> None:
        with self._lock:
            while not self._closed:
                now = time.monotonic()
                # Oldest first, and only onto a free model thread (see the module docstring).
                for batch in sorted(self._open.values(), key=lambda b: b.deadline):
                    if batch.deadline > now or not self._thread_free():
                        break
                    self._dispatch_locked(self._open.pop(batch.key))
                pending = [b.deadline for b in self._open.values()]
                if pending and self._thread_free():
                    self._lock.wait(timeout=max(min(pending) - now, 0.0))
                else:  # woken by a new batch or a finished one
                    self._lock.wait(timeout=3600)

    def _execute(self, batch: _Batch) -> None:
        try:
            self._execute_batch(batch)
        finally:
            with self._lock:
                self._busy -= 1
                self._lock.notify_all()

    def _execute_batch(self, batch: _Batch) -> None:
        with self._lock:
            self._waiting_batches -= 1
            self._waiting_tasks -= len(batch.tasks)
        tasks = [t for t in batch.tasks if t.future.set_running_or_notify_cancel()]
        if not tasks:
            return
        if self._on_batch is not None:
            self._on_batch(batch.labels, sum(t.rows for t in tasks), len(tasks))
        if len(tasks) == 1:
            self._run_alone(batch.run, tasks[0])
            return
        names = list(tasks[0].inputs)
        try:
            merged = {name: np.concatenate([t.inputs[name] for t in tasks], axis=0) for name in names}
            outputs = batch.run(merged)
        except ServingError as error:
            if error.code not in _PER_TASK_CODES:
                for task in tasks:
                    task.future.set_exception(error)
                return
            LOG.info("a merged batch of %d tasks failed (%s); running them one by one",
                     len(tasks), error.code)
            for task in tasks:
                self._run_alone(batch.run, task)
            return
        except BaseException as error:  # a real fault: every task reports it
            for task in tasks:
                task.future.set_exception(error)
            return
        total = sum(t.rows for t in tasks)
        if any(np.ndim(v) == 0 or np.shape(v)[0] != total for v in outputs.values()):
            for task in tasks:  # outputs without the batch dimension cannot be split
                self._run_alone(batch.run, task)
            return
        start = 0
        for task in tasks:
            stop = start + task.rows
            task.future.set_result({name: value[start:stop] for name, value in outputs.items()})
            start = stop

    @staticmethod
    def _run_alone(run: RunFn, task: _Task) -> None:
        try:
            task.future.set_result(dict(run(task.inputs)))
        except BaseException as error:
            task.future.set_exception(error)


def batch_key_shapes(inputs: Mapping[str, np.ndarray]) -> tuple:
    """The part of a batch key that makes inputs concatenable: names, dtypes, per-row shapes."""
    return tuple(sorted((name, np.asarray(v).dtype.str, np.shape(v)[1:]) for name, v in inputs.items()))


def freeze(value: Any) -> Hashable:
    """A hashable, order-independent form of JSON-like request options (for batch keys)."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    # type in the key: True and 1 are different options
    return (type(value).__name__, value)
