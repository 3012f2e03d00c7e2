"""REST latency and throughput of the service, dynamic batching off vs on, in one run.

Exports a small untrained attentive-grouping embedder (small_cnn, 32 px), indexes a synthetic
gallery with ScaNN, then starts two ``python -m serving.server`` on 127.0.0.1 (port 0, found
from the ready line): one with ``--enable_batching=false``, one with the default batching
(``--max_batch_size`` 32, ``--batch_timeout_micros`` 2000). Both run for the whole measurement.
Each cell sends single-image requests from N client threads (one keep-alive connection each),
``--requests`` in all, in ``--rounds`` rounds that alternate between the two servers (off, on,
on, off, ...), each round stopping at its share of the requests or of ``--max_seconds``; the
table pools the rounds' latencies. Measuring one mode after the other instead let a slow phase
of this shared VM (+-30% over minutes) decide the ratio. Client and server share this machine's
cores, so the numbers are an upper bound on what the service alone costs.

Prints the table (p50/p99 ms, req/s, and the on/off ratios side by side) with the CPU flags,
and each cell's CPU time per request of the server process and of this client process (from
/proc and ``time.process_time``): with both on the same saturated cores, batching can raise req/s
only by about the factor it cuts the total CPU per request.
Goal (issue 14): at concurrency 8, batching on has p99 <= 0.5x and throughput >= 2x of off.

Usage:
    python bench/rest_latency.py [--requests 400] [--max_seconds 60] [--gallery 256]
        [--concurrency 8 32] [--rounds 4] [--grpc] [--server_flag=--FLAG=VALUE ...]

``--grpc`` also sends the same cells over TF Serving's gRPC API (``--grpc_port``) and prints a
REST vs gRPC table. ``--server_flag`` (repeatable) passes a flag to both servers, e.g.
``--server_flag=--tensorflow_intra_op_parallelism=1``.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from doc_tables import cpu_note  # noqa: E402  (bench/ is sys.path[0])
from serving.ports import free_port  # noqa: E402

_READY = re.compile(r" on http://([0-9.]+):(\d+) \(ready")


def start_server(args: list, log_path: Path, timeout: float = 300.0):
    """Starts the server; returns (process, port) once it logs its ready line."""
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    log = open(log_path, "w")
    process = subprocess.Popen([sys.executable, "-m", "serving.server", "--port=0", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                               cwd=str(REPO), text=True)
    found = {}

    def read():
        for line in process.stdout:
            log.write(line)
            log.flush()
            match = _READY.search(line)
            if match and "port" not in found:
                found["port"] = int(match.group(2))
                ready.set()
        ready.set()
        log.close()

    ready = threading.Event()
    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(timeout) or "port" not in found:
        process.kill()
        raise RuntimeError(f"server did not become ready; see {log_path}")
    return process, found["port"]


def _closed_loop(make_sender, concurrency: int, requests: int, max_seconds: float) -> dict:
    """Runs ``concurrency`` client threads until ``requests`` are sent or ``max_seconds`` pass.

    ``make_sender()`` is called once per thread and returns ``(send, close)``: ``send(n)`` sends
    request ``n`` and returns whether it succeeded. Returns latency percentiles (ms) and req/s.
    """
    latencies, errors, lock = [], [0], threading.Lock()
    counter = iter(range(requests))
    stop_at = time.monotonic() + max_seconds
    start = threading.Barrier(concurrency + 1)

    def worker():
        send, close = make_sender()
        start.wait()
        while time.monotonic() < stop_at:
            with lock:
                n = next(counter, None)
            if n is None:
                break
            began = time.perf_counter()
            ok = send(n)
            elapsed = time.perf_counter() - began
            with lock:
                if ok:
                    latencies.append(elapsed)
                else:
                    errors[0] += 1
        close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    return _stats(np.asarray(latencies) * 1e3, errors[0], wall)


def _stats(ms: np.ndarray, errors: int, wall: float) -> dict:
    return {
        "n": len(ms), "errors": errors, "wall": wall, "ms": ms,
        "p50": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p99": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
        "rps": len(ms) / wall if wall > 0 else float("nan"),
    }


def pool(parts: list) -> dict:
    """One cell's statistics from its rounds: latencies pooled, req/s = requests / total time,
    CPU seconds summed."""
    stats = _stats(np.concatenate([p["ms"] for p in parts]), sum(p["errors"] for p in parts),
                   sum(p["wall"] for p in parts))
    for key in ("server_cpu", "client_cpu"):
        if all(key in p for p in parts):
            stats[key] = sum(p[key] for p in parts)
    return stats


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads; /proc)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def with_cpu(run, server_pid: int) -> dict:
    """``run()``'s stats plus the CPU seconds the server and this client process spent in it:
    with the cores saturated, req/s can only grow by as much as CPU per request shrinks."""
    server, client = process_cpu_seconds(server_pid), time.process_time()
    stats = run()
    stats["server_cpu"] = process_cpu_seconds(server_pid) - server
    stats["client_cpu"] = time.process_time() - client
    return stats


def interleaved(run, modes, rounds: int) -> dict:
    """``{mode: pooled stats}`` of ``run(mode)`` called ``rounds`` times per mode, the modes
    alternating (off, on, on, off, ...) so a slow phase of a shared machine hits both alike."""
    parts = {mode: [] for mode in modes}
    for index in range(rounds):
        for mode in (modes if index % 2 == 0 else modes[::-1]):
            parts[mode].append(run(mode))
    return {mode: pool(p) for mode, p in parts.items()}


def run_cell(port: int, path: str, bodies: list, concurrency: int, requests: int,
             max_seconds: float) -> dict:
    """Sends up to ``requests`` requests from ``concurrency`` threads, one keep-alive HTTP/1.1
    connection each; returns latency stats."""

    def make_sender():
        state = {"connection": http.client.HTTPConnection("127.0.0.1", port, timeout=120)}

        def send(n):
            try:
                state["connection"].request("POST", path, body=bodies[n % len(bodies)],
                                            headers={"Content-Type": "application/json"})
                response = state["connection"].getresponse()
                response.read()
                return response.status == 200
            except (OSError, http.client.HTTPException):
                state["connection"].close()
                state["connection"] = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                return False

        return send, lambda: state["connection"].close()

    return _closed_loop(make_sender, concurrency, requests, max_seconds)


def run_grpc_cell(target: str, requests_protos: list, concurrency: int, requests: int,
                  max_seconds: float) -> dict:
    """:func:`run_cell` over TF Serving's gRPC API: the same stop rules and statistics, one
    HTTP/2 channel shared by the client threads (as gRPC clients do), ready-made
    ``PredictRequest`` protos as the REST cells use ready-made JSON bodies."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    channel = grpc.insecure_channel(target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    def send(n):
        try:
            stub.Predict(requests_protos[n % len(requests_protos)], timeout=120)
            return True
        except grpc.RpcError:
            return False

    try:
        return _closed_loop(lambda: (send, lambda: None), concurrency, requests, max_seconds)
    finally:
        channel.close()


def grpc_requests(images: list, k) -> list:
    """One-image ``PredictRequest`` protos for the embedder (``k`` None) or the retrieval model
    (options travel as scalar input tensors, see serving.grpc_api)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    protos = []
    for image in images:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "dgml" if k is None else "dgml_retrieval"
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([image]))
        if k is not None:
            request.inputs["k"].CopyFrom(tf.make_tensor_proto(k))
        protos.append(request)
    return protos


def grpc_table(results: dict, endpoints, concurrency_levels) -> list:
    """REST and gRPC rows of the same cells side by side (Markdown lines)."""
    lines = ["REST vs gRPC, the same single-image load (REST: one keep-alive HTTP/1.1 connection "
             f"per client thread; gRPC: one HTTP/2 channel); {cpu_note()}", "",
             "| endpoint | clients | batching | REST p50 ms | REST p99 ms | REST req/s | gRPC p50 ms | "
             "gRPC p99 ms | gRPC req/s | gRPC/REST req/s |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in endpoints:
        for concurrency in concurrency_levels:
            for mode in ("off", "on"):
                rest, rpc = results[(name, concurrency, mode)], results[("gRPC " + name, concurrency, mode)]
                lines.append(
                    f"| {name} | {concurrency} | {mode} | {rest['p50']:.1f} | {rest['p99']:.1f} | "
                    f"{rest['rps']:.1f} | {rpc['p50']:.1f} | {rpc['p99']:.1f} | {rpc['rps']:.1f} | "
                    f"{rpc['rps'] / rest['rps']:.2f}x |"
                    + (f" (gRPC errors: {rpc['errors']})" if rpc["errors"] else ""))
    return lines


def rest_table(args, results: dict, endpoints) -> list:
    """The batching off/on table (Markdown lines)."""
    lines = [f"REST latency, 1 image/request, gallery {args.gallery} (ScaNN), small_cnn 32 px, "
             f"{os.cpu_count()} CPU cores shared by client and server, batching off and on "
             f"interleaved in {args.rounds} rounds per cell"
             + (f", server flags {' '.join(args.server_flag)}" if args.server_flag else "")
             + f"; {cpu_note()}",
             "", "| endpoint | clients | batching | requests | errors | p50 ms | p99 ms | req/s | "
             "p99 on/off | req/s on/off | CPU ms/req server + client | CPU/req off/on |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in endpoints:
        for concurrency in args.concurrency:
            off, on = results[(name, concurrency, "off")], results[(name, concurrency, "on")]
            cpu = {mode: (1e3 * s["server_cpu"] / max(s["n"], 1), 1e3 * s["client_cpu"] / max(s["n"], 1))
                   for mode, s in (("off", off), ("on", on))}
            for mode, s in (("off", off), ("on", on)):
                ratios = (f"{on['p99'] / off['p99']:.2f}x | {on['rps'] / off['rps']:.2f}x"
                          if mode == "on" else " | ")
                cpu_ratio = f"{sum(cpu['off']) / sum(cpu['on']):.2f}x" if mode == "on" else ""
                lines.append(f"| {name} | {concurrency} | {mode} | {s['n']} | {s['errors']} | "
                             f"{s['p50']:.1f} | {s['p99']:.1f} | {s['rps']:.1f} | {ratios} | "
                             f"{cpu[mode][0]:.2f} + {cpu[mode][1]:.2f} | {cpu_ratio} |")
    return lines


MODES = ("off", "on")


def measure(args, servers: dict, endpoints: dict, images: list) -> dict:
    """``{(endpoint, clients, mode): stats}`` for every cell, modes interleaved in rounds."""
    results = {}
    per_round = max(1, args.requests // args.rounds)
    for name, (path, bodies) in endpoints.items():
        for mode in MODES:  # warm-up (graph tracing, caches)
            run_cell(servers[mode][1], path, bodies, 8, 40, 30)
        for concurrency in args.concurrency:
            cells = interleaved(lambda mode, path=path, bodies=bodies, c=concurrency: with_cpu(
                lambda: run_cell(servers[mode][1], path, bodies, c, per_round,
                                 args.max_seconds / args.rounds), servers[mode][0].pid),
                MODES, args.rounds)
            results.update({(name, concurrency, mode): cells[mode] for mode in MODES})
    if args.grpc:  # the same images and cells over gRPC
        for name, k in (("dgml:predict (embed)", None), ("dgml_retrieval:predict k=10", 10)):
            protos = grpc_requests(images[:32], k)
            targets = {mode: f"127.0.0.1:{servers[mode][2]}" for mode in MODES}
            for mode in MODES:
                run_grpc_cell(targets[mode], protos, 8, 40, 30)  # warm-up
            for concurrency in args.concurrency:
                cells = interleaved(lambda mode, t=targets, p=protos, c=concurrency: run_grpc_cell(
                    t[mode], p, c, per_round,
                    args.max_seconds / args.rounds), MODES, args.rounds)
                results.update({("gRPC " + name, concurrency, mode): cells[mode]
                                for mode in MODES})
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per cell (bound)")
    parser.add_argument("--max_seconds", type=float, default=60.0, help="time per cell (bound)")
    parser.add_argument("--gallery", type=int, default=256, help="indexed synthetic images")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--rounds", type=int, default=4,
                        help="each cell's requests are sent in this many rounds, batching off "
                             "and on alternating (both servers run throughout)")
    parser.add_argument("--grpc", action="store_true",
                        help="also send the same cells over gRPC (a REST vs gRPC table)")
    parser.add_argument("--server_flag", action="append", default=[],
                        help="a flag for both servers (repeatable), e.g. "
                             "--server_flag=--tensorflow_intra_op_parallelism=1")
    parser.add_argument("--write_docs", action="store_true",
                        help="also refresh the tables in docs/benchmarks.md (bench/doc_tables.py)")
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from serving.synthetic_gallery import export_tiny_embedder, index_synthetic_gallery, synthetic_gallery

    if args.rounds < 1 or args.requests < args.rounds:
        parser.error("--rounds must be >= 1 and at most --requests.")
    with tempfile.TemporaryDirectory(prefix="rest_latency_") as tmp:
        tmp = Path(tmp)
        labels = [i % 16 for i in range(args.gallery)]
        images = synthetic_gallery(labels)
        version_dir = export_tiny_embedder(tmp / "models", "dgml", 1, seed=0)
        index_synthetic_gallery(version_dir, images, labels, tmp / "index", backend="scann")
        b64 = [{"b64": base64.b64encode(i).decode("ascii")} for i in images[:32]]
        endpoints = {
            "dgml:predict (embed)": ("/v1/models/dgml:predict",
                                     [json.dumps({"instances": [b]}).encode() for b in b64]),
            "dgml_retrieval:predict k=10": ("/v1/models/dgml_retrieval:predict",
                                            [json.dumps({"instances": [b], "k": 10}).encode() for b in b64]),
        }
        common = [f"--model_base_path={tmp / 'models' / 'dgml'}", "--model_name=dgml",
                  f"--index_dir={tmp / 'index'}", "--host=127.0.0.1", "--log_level=WARNING",
                  *args.server_flag]
        servers = {}
        try:
            # Both servers run for the whole measurement (an idle one costs no CPU), and their
            # cells interleave in rounds: a drift of the shared machine cannot favour one mode.
            for mode in MODES:
                grpc_port = free_port() if args.grpc else -1
                process, port = start_server(
                    common + [f"--enable_batching={'true' if mode == 'on' else 'false'}",
                              f"--grpc_port={grpc_port}"], tmp / f"server_{mode}.log")
                servers[mode] = (process, port, grpc_port)
            results = measure(args, servers, endpoints, images)
        finally:
            for process, _, _ in servers.values():
                process.terminate()
            for process, _, _ in servers.values():
                process.wait(timeout=120)

    lines = rest_table(args, results, endpoints)
    print("\n".join(lines))
    tables = {"rest_latency": "\n".join(lines)}
    if args.grpc:
        tables["rest_grpc_latency"] = "\n".join(grpc_table(results, endpoints, args.concurrency))
        print("\n" + tables["rest_grpc_latency"])
    if args.write_docs:
        from doc_tables import BENCHMARKS_DOC, refresh_section  # bench/ is sys.path[0]
        for name, table in tables.items():
            refresh_section(BENCHMARKS_DOC, name, table)
        print(f"refreshed {', '.join(tables)} in {BENCHMARKS_DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
