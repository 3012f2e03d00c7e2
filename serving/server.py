"""``python -m serving.server``: the REST retrieval service on TF Serving's contract.

Example:
    python -m serving.server --model_base_path=/models/dgml --model_name=dgml \\
        --index_dir=/indexes/dgml --port=8501 --host=127.0.0.1

serves ``dgml`` (the embedder SavedModel versions) and ``dgml_retrieval`` (top-k neighbours from
the ScaNN index). Reload with ``POST /v1/admin/reload``, ``kill -HUP <pid>`` or
``--file_system_poll_wait_seconds``; stop with SIGTERM or Ctrl-C (in-flight requests finish).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Optional, Sequence

from serving.model_config import ModelConfig, parse_model_config_file
from serving.model_registry import ModelRegistry, describe
from serving.rest_api import DEFAULT_MAX_BODY_BYTES, RestServer
from serving.state_loader import ServingStateLoader

LOG = logging.getLogger("serving")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serving.server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name", help="embedder model name (URLs use /v1/models/<name>)")
    parser.add_argument("--model_base_path", help="directory holding <version>/saved_model.pb")
    parser.add_argument("--model_config_file", help="TF Serving model_config_list text proto "
                        "(version policies and labels); replaces --model_name/--model_base_path")
    parser.add_argument("--index_dir", help="dgml_tf.indexing index directory; enables the "
                        "retrieval model")
    parser.add_argument("--retrieval_model_name", help="default: <model_name>_retrieval")
    parser.add_argument("--embedder_url", help="take embeddings from this TF Serving model URL "
                        "(http://host:8501/v1/models/<name>) instead of loading the SavedModel")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", "--rest_api_port", dest="port", type=int, default=8501)
    parser.add_argument("--max_body_bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    parser.add_argument("--file_system_poll_wait_seconds", type=float, default=0.0,
                        help="poll the base paths and the index for changes every N s (0: off)")
    parser.add_argument("--log_level", default="INFO")
    return parser


def loader_from_args(args: argparse.Namespace) -> ServingStateLoader:
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


def create_server(loader: ServingStateLoader, host: str = "127.0.0.1", port: int = 8501,
                  max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> RestServer:
    """Loads everything once, then binds; start-up errors surface before the port opens."""
    registry = ModelRegistry(loader.build, loader.build(None))
    return RestServer((host, port), registry, max_body_bytes=max_body_bytes)


def _reload_logged(registry: ModelRegistry) -> None:
    try:
        registry.reload()
    except Exception as error:  # keep serving the previous snapshot
        LOG.error("reload refused, still serving %s: %s", describe(registry.state), error)


def _poll(registry: ModelRegistry, every: float, stop: threading.Event) -> None:
    while not stop.wait(every):
        _reload_logged(registry)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        server = create_server(loader_from_args(args), args.host, args.port, args.max_body_bytes)
    except Exception as error:
        LOG.error("cannot start: %s", error)
        print(f"serving.server: cannot start: {error}", file=sys.stderr)
        return 2
    registry = server.registry
    stop = threading.Event()

    def request_shutdown(signum, _frame):
        LOG.info("signal %d: shutting down after in-flight requests", signum)
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, request_shutdown)
    signal.signal(signal.SIGINT, request_shutdown)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda *_: threading.Thread(
            target=_reload_logged, args=(registry,), daemon=True).start())
    if args.file_system_poll_wait_seconds > 0:
        threading.Thread(target=_poll, args=(registry, args.file_system_poll_wait_seconds, stop),
                         daemon=True).start()
    LOG.info("serving %s on %s (ready)", describe(registry.state), server.url)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()  # joins in-flight request threads
        LOG.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
