"""``python -m serving.server``: the REST retrieval service on TF Serving's contract.

Example:
    python -m serving.server --model_base_path=/models/dgml --model_name=dgml \\
        --index_dir=/indexes/dgml --port=8501 --host=127.0.0.1

serves ``dgml`` (the embedder SavedModel versions) and ``dgml_retrieval`` (top-k neighbours from
the ScaNN index) on uvicorn (h11) with the app of ``serving.http_app``. Reload with ``kill -HUP
<pid>``, ``--file_system_poll_wait_seconds`` or, with ``--admin_token``, ``POST
/v1/admin/reload``. SIGTERM / Ctrl-C: stop accepting, close idle keep-alive connections, let
in-flight requests finish (at most ``--graceful_shutdown_timeout`` s), exit 0.

The line ``serving ... on http://HOST:PORT (ready)`` is logged once the port accepts requests
(``--port=0`` picks a free port; the line names it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Callable, Optional, Sequence

import uvicorn
from absl import flags as absl_flags

from dgml_tf.flag_parsing import define_alias, parse_flags
from serving.batching import BatchingParameters
from serving.core import CoreConfig, ServingCore
from serving.grpc_api import DEFAULT_GRPC_PORT, start_grpc_server
from serving.http_app import EXPLORER_DIR, HttpConfig, RestApp, protocol_class
from serving.limits import (DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_INSTANCES,
                            DEFAULT_MAX_JSON_DEPTH, Limits)
from dgml_tf.export.tf_serving_layout import ModelConfig, parse_model_config_file
from serving.model_registry import ModelRegistry, describe
from serving.state_loader import ServingStateLoader

LOG = logging.getLogger("serving")
ADMIN_TOKEN_ENV = "DGML_SERVING_ADMIN_TOKEN"
_DEFAULT_BATCHING = BatchingParameters()
# Each pool thread is an OS thread created at start: a typo of 10**6 must not exhaust the host.
MAX_TENSORFLOW_THREADS = 1024


def define_flags(values: absl_flags.FlagValues) -> None:
    """The server's flags (TF Serving's names where it has one) in the FlagValues ``values``."""
    define_string = functools.partial(absl_flags.DEFINE_string, flag_values=values)
    define_integer = functools.partial(absl_flags.DEFINE_integer, flag_values=values)
    define_float = functools.partial(absl_flags.DEFINE_float, flag_values=values)
    # models
    define_string("model_name", None, "Embedder model name (URLs use /v1/models/<name>).")
    define_string("model_base_path", None, "Directory holding <version>/saved_model.pb.")
    define_string("model_config_file", None, "TF Serving model_config_list text proto (version "
                  "policies and labels); replaces --model_name/--model_base_path.")
    define_string("index_dir", None, "dgml_tf.index index directory; enables the retrieval "
                  "model.")
    define_string("retrieval_model_name", None, "Default: <model_name>_retrieval.")
    define_string("embedder_url", None, "Take embeddings from this TF Serving model URL "
                  "(http://host:8501/v1/models/<name>) instead of loading the SavedModel.")
    define_float("file_system_poll_wait_seconds", 0.0, "Poll the base paths and the index for "
                 "changes every N s (0: off).")
    define_string("admin_token", None, "Enables POST /v1/admin/reload with 'Authorization: "
                  f"Bearer <token>' (default: ${ADMIN_TOKEN_ENV}; unset: the endpoint answers "
                  "403).")
    # HTTP
    define_string("host", "127.0.0.1", "Address to listen on.")
    define_integer("port", 8501, "REST port (0: pick a free one; the ready line names it).")
    define_alias("rest_api_port", "port", values, deprecated=False)  # TF Serving's name
    define_integer("grpc_port", None, "TF Serving's gRPC API (serving.grpc_api) on this port; 0 "
                   f"picks a free one, -1 turns gRPC off. Default {DEFAULT_GRPC_PORT}, skipped "
                   "with a warning when taken (an explicit port that is taken stops the start).")
    define_integer("max_body_bytes", DEFAULT_MAX_BODY_BYTES, "Larger request bodies get 413 "
                   "(default 16 MiB).")
    define_integer("max_connections", 1000, "Open connections beyond this get a 503 at once.")
    define_float("header_timeout_seconds", 10.0, "Request line + headers must arrive within "
                 "this.")
    define_float("body_timeout_seconds", 30.0, "The whole body must arrive within this (else "
                 "408).")
    define_float("keep_alive_timeout_seconds", 5.0, "Idle keep-alive connections are closed "
                 "after this.")
    define_float("graceful_shutdown_timeout", 30.0, "On SIGTERM, in-flight requests get this "
                 "long to finish.")
    # limits
    define_integer("max_json_depth", DEFAULT_MAX_JSON_DEPTH, "Deepest JSON nesting accepted.")
    define_integer("max_instances", DEFAULT_MAX_INSTANCES, "Most rows (images) per request.")
    define_integer("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS, "Most pixels per image, read "
                   "from its header (default 4096*4096).")
    define_integer("max_request_pixels", None, "Most pixels summed over one request or merged "
                   "batch (default 4 * --max_image_pixels).")
    define_integer("max_concurrent_requests", 256, "Predict calls admitted at once (queued + "
                   "running); more get 503.")
    # batching (TF Serving's batching_parameters)
    absl_flags.DEFINE_bool("enable_batching", True, "Merge concurrent requests into one model "
                           "call (--noenable_batching or --enable_batching=false: off).",
                           flag_values=values)
    define_string("batching_parameters_file", None, "TF Serving BatchingParameters text proto; "
                  "--max_batch_size, --batch_timeout_micros, --max_enqueued_batches and "
                  "--num_batch_threads override it.")
    define_integer("max_batch_size", None, f"Default {_DEFAULT_BATCHING.max_batch_size}.")
    define_integer("batch_timeout_micros", None,
                   f"Default {_DEFAULT_BATCHING.batch_timeout_micros}.")
    define_integer("max_enqueued_batches", None,
                   f"Default {_DEFAULT_BATCHING.max_enqueued_batches}.")
    define_integer("num_batch_threads", None, "Model threads (default: the CPU count, at least "
                   "2).")
    # TensorFlow's thread pools (TF Serving's flags; 0: TensorFlow picks, one per core)
    define_integer("tensorflow_intra_op_parallelism", 0, "Threads one op may use (0: "
                   "TensorFlow's default; at most 1024). 1 with --num_batch_threads=<cores> "
                   "spends the least CPU per request (docs/serving.md).")
    define_integer("tensorflow_inter_op_parallelism", 0, "Ops of one model call run at once (0: "
                   "TensorFlow's default; at most 1024).")
    define_string("log_level", "INFO", "Python logging level of the server's log.")


def loader_from_args(args: absl_flags.FlagValues) -> ServingStateLoader:
    """Turns parsed flags into a :class:`ServingStateLoader`, with clear errors for bad mixes."""
    if args.model_config_file:
        configs = parse_model_config_file(args.model_config_file)
        retrieval_for = args.model_name or configs[0].name
    elif args.embedder_url:
        if not args.model_name:
            raise ValueError("--model_name is required (it names the retrieval model).")
        configs, retrieval_for = [], args.model_name
    else:
        if not (args.model_name and args.model_base_path):
            raise ValueError("Pass --model_name and --model_base_path (or --model_config_file, "
                             "or --embedder_url with --index_dir).")
        configs = [ModelConfig(args.model_name, args.model_base_path)]
        retrieval_for = args.model_name
    return ServingStateLoader(
        configs,
        index_dir=args.index_dir,
        retrieval_for=retrieval_for,
        retrieval_name=args.retrieval_model_name,
        embedder_url=args.embedder_url,
        embedder_base_path=args.model_base_path if args.embedder_url else None,
    )


def core_config_from_args(args: absl_flags.FlagValues) -> CoreConfig:
    """Limits, batching and admission from the flags (flags override the batching file)."""
    defaults = {"num_batch_threads": max(2, os.cpu_count() or 2)}
    if args.batching_parameters_file:
        batching = BatchingParameters.from_text_proto(args.batching_parameters_file, **defaults)
    else:
        batching = BatchingParameters(**defaults)
    overrides = {name: getattr(args, name) for name in
                 ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads")
                 if getattr(args, name) is not None}
    batching = BatchingParameters(**{**batching.__dict__, **overrides})
    limits = Limits(max_body_bytes=args.max_body_bytes, max_json_depth=args.max_json_depth,
                    max_instances=args.max_instances, max_image_pixels=args.max_image_pixels,
                    max_request_pixels=args.max_request_pixels or 4 * args.max_image_pixels)
    return CoreConfig(limits=limits, batching=batching, enable_batching=args.enable_batching,
                      max_concurrent_requests=args.max_concurrent_requests)


class Server(uvicorn.Server):
    """uvicorn's server with our signals: SIGTERM/SIGINT stop gracefully (without uvicorn's
    re-raise after the shutdown, so the exit code is 0), SIGHUP reloads, and ``on_ready`` runs
    once the port accepts requests.

    Args:
        config: the ``uvicorn.Config``.
        on_ready: called once after start-up.
        on_hup: called (in signal context: keep it short) on SIGHUP.
    """

    def __init__(self, config, on_ready: Callable[[], None], on_hup: Callable[[], None]):
        super().__init__(config)
        self._on_ready, self._on_hup = on_ready, on_hup

    async def startup(self, sockets=None):
        await super().startup(sockets=sockets)
        if self.started and not self.should_exit:
            self._on_ready()

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGTERM, signal.SIGINT)}
        if hasattr(signal, "SIGHUP"):
            previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda *_: self._on_hup())
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig, frame):
        # Not logged here (signal context); uvicorn logs "Shutting down" from its loop.
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        if not self.should_exit:
            self.exit_requested_at = time.monotonic()
        self.should_exit = True

    exit_requested_at: Optional[float] = None


def _reload_logged(core: ServingCore) -> None:
    try:
        core.reload()
    except Exception as error:  # keep serving the previous snapshot
        LOG.error("reload refused, still serving %s: %s", describe(core.state), error)


def _poll(core: ServingCore, every: float, stop: threading.Event) -> None:
    while not stop.wait(every):
        _reload_logged(core)


def _start_grpc(args: absl_flags.FlagValues, core: ServingCore):
    """The gRPC server on ``--grpc_port`` (None when off or when the default port is taken)."""
    if args.grpc_port is not None and args.grpc_port < 0:
        return None
    port = DEFAULT_GRPC_PORT if args.grpc_port is None else args.grpc_port
    # gRPC threads only wait on the core, which admits and batches (its limits answer first).
    workers = max(1, min(64, args.max_concurrent_requests))
    try:
        grpc_server = start_grpc_server(core, port, args.host, args.max_body_bytes,
                                        workers=workers, queue=2 * workers)
    except OSError as error:  # the port is taken
        if args.grpc_port is not None:
            raise
        LOG.warning("gRPC not started: %s", error)
        return None
    # Printed whatever --log_level says (like the ready line): names the port 0 picked.
    print(f"serving.server: gRPC on {grpc_server.target}", file=sys.stderr, flush=True)
    return grpc_server


def configure_tensorflow_threads(intra_op: int, inter_op: int) -> None:
    """Sets TensorFlow's thread pools before any model loads; 0 leaves TensorFlow's choice (and
    does not import TensorFlow, which a server of ``--embedder_url`` never needs)."""
    for name, value in (("tensorflow_intra_op_parallelism", intra_op),
                        ("tensorflow_inter_op_parallelism", inter_op)):
        if not 0 <= value <= MAX_TENSORFLOW_THREADS:
            raise ValueError(f"--{name} must be between 0 (TensorFlow's default) and "
                             f"{MAX_TENSORFLOW_THREADS} threads, got {value}.")
    if not (intra_op or inter_op):
        return
    import tensorflow as tf

    if intra_op:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
    if inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the server until SIGTERM/SIGINT; the exit code (2: it could not start).

    Args:
        argv: the flags, without the program name (``sys.argv[1:]`` when None).
    """
    remaining, args = parse_flags(["serving.server", *(sys.argv[1:] if argv is None else argv)],
                                  define_flags, __doc__)
    if len(remaining) > 1:
        print(f"serving.server: unexpected arguments {remaining[1:]}; every setting is a "
              "--flag (--help lists them).", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        core_config = core_config_from_args(args)
        configure_tensorflow_threads(args.tensorflow_intra_op_parallelism,
                                     args.tensorflow_inter_op_parallelism)
        loader = loader_from_args(args)
        registry = ModelRegistry(loader.build, loader.build(None))
        listener = socket.create_server((args.host, args.port), reuse_port=False, backlog=2048)
    except Exception as error:
        LOG.error("cannot start: %s", error)
        print(f"serving.server: cannot start: {error}", file=sys.stderr)
        return 2
    core = ServingCore(registry, core_config)
    try:
        grpc_server = _start_grpc(args, core)
    except OSError as error:
        LOG.error("cannot start: %s", error)
        print(f"serving.server: cannot start: {error}", file=sys.stderr)
        core.close(timeout=1.0)
        return 2
    admin_token = args.admin_token or os.environ.get(ADMIN_TOKEN_ENV) or None
    app = RestApp(core, HttpConfig(max_body_bytes=args.max_body_bytes,
                                   body_timeout_s=args.body_timeout_seconds,
                                   admin_token=admin_token, explorer_dir=EXPLORER_DIR))
    config = uvicorn.Config(
        app, http=protocol_class(header_timeout_s=args.header_timeout_seconds,
                                 max_connections=args.max_connections,
                                 max_body_bytes=args.max_body_bytes),
        loop="asyncio", lifespan="on", log_config=None, access_log=False,
        timeout_keep_alive=args.keep_alive_timeout_seconds,
        timeout_graceful_shutdown=args.graceful_shutdown_timeout,
        h11_max_incomplete_event_size=16 * 1024, server_header=False)
    host, port = listener.getsockname()[:2]
    url = f"http://{host}:{port}"
    stop = threading.Event()

    def on_ready():
        # Printed whatever --log_level says: supervisors and tests wait for this line.
        print(f"serving.server: serving {describe(core.state)} on {url} (ready; batching "
              f"{'on' if core_config.enable_batching else 'off'}, admin API "
              f"{'on' if admin_token else 'off'})", file=sys.stderr, flush=True)

    def on_hup():
        threading.Thread(target=_reload_logged, args=(core,), daemon=True).start()

    if args.file_system_poll_wait_seconds > 0:
        threading.Thread(target=_poll, args=(core, args.file_system_poll_wait_seconds, stop),
                         daemon=True).start()
    server = Server(config, on_ready, on_hup)
    try:
        asyncio.run(server.serve(sockets=[listener]))
    finally:
        stop.set()
        if grpc_server is not None:  # in-flight RPCs finish, new ones are refused
            grpc_server.stop(grace=args.graceful_shutdown_timeout)
        # One bound for the whole shutdown: what uvicorn's drain used is not granted twice.
        began = server.exit_requested_at or time.monotonic()
        idle = core.close(timeout=max(args.graceful_shutdown_timeout - (time.monotonic() - began), 1.0))
        listener.close()
    if not idle:
        LOG.error("stopped with model calls still running after %g s (--graceful_shutdown_timeout)",
                  args.graceful_shutdown_timeout)
        logging.shutdown()
        os._exit(1)  # model threads cannot be interrupted; do not wait for them at exit
    LOG.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
