"""REST latency of the retrieval service: p50/p99 at concurrency 1 and 8, loopback only.

Exports a small untrained attentive-grouping embedder (small_cnn, 32 px), indexes a synthetic
gallery with ScaNN, starts ``python -m serving.server`` as its own process on 127.0.0.1, and
sends bounded numbers of single-image requests (each cell stops at ``--requests`` requests or
``--max_seconds``, whichever comes first). Client and server share this machine's cores, so the
numbers are an upper bound on what the service alone costs.

Usage:
    python bench/rest_latency.py [--requests 200] [--max_seconds 60] [--gallery 256]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, process: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("server did not become ready")


def _post(url: str, body: bytes) -> float:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
    return time.perf_counter() - started


def run_cell(url: str, bodies: list, concurrency: int, requests: int, max_seconds: float) -> dict:
    """Sends up to ``requests`` requests from ``concurrency`` threads; returns latency stats."""
    latencies, errors, lock = [], [0], threading.Lock()
    counter = iter(range(requests))
    stop_at = time.monotonic() + max_seconds

    def worker():
        while time.monotonic() < stop_at:
            with lock:
                n = next(counter, None)
            if n is None:
                return
            try:
                elapsed = _post(url, bodies[n % len(bodies)])
                with lock:
                    latencies.append(elapsed)
            except Exception:  # counted, not raised: the table reports errors
                with lock:
                    errors[0] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ms = np.asarray(latencies) * 1e3
    return {
        "n": len(latencies), "errors": errors[0],
        "p50": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p99": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
        "rps": len(latencies) / wall if wall > 0 else float("nan"),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per cell (bound)")
    parser.add_argument("--max_seconds", type=float, default=60.0, help="time per cell (bound)")
    parser.add_argument("--gallery", type=int, default=256, help="indexed synthetic images")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from serving.synthetic_gallery import export_tiny_embedder, index_gallery, synthetic_gallery

    with tempfile.TemporaryDirectory(prefix="rest_latency_") as tmp:
        tmp = Path(tmp)
        labels = [i % 16 for i in range(args.gallery)]
        images = synthetic_gallery(labels)
        version_dir = export_tiny_embedder(tmp / "models", "dgml", 1, seed=0)
        index_gallery(version_dir, images, labels, tmp / "index", backend="scann")
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        env = dict(os.environ, PYTHONPATH=str(REPO))
        with open(tmp / "server.log", "w") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "serving.server", f"--model_base_path={tmp / 'models' / 'dgml'}",
                 "--model_name=dgml", f"--index_dir={tmp / 'index'}", f"--port={port}",
                 "--host=127.0.0.1", "--log_level=WARNING"],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
            try:
                _wait_ready(url, process)
                b64 = [{"b64": base64.b64encode(i).decode("ascii")} for i in images[:32]]
                endpoints = {
                    "dgml:predict (embed)": (f"{url}/v1/models/dgml:predict",
                                             [json.dumps({"instances": [b]}).encode() for b in b64]),
                    "dgml_retrieval:predict k=10": (f"{url}/v1/models/dgml_retrieval:predict",
                                                    [json.dumps({"instances": [b], "k": 10}).encode() for b in b64]),
                }
                rows = []
                for name, (endpoint, bodies) in endpoints.items():
                    run_cell(endpoint, bodies, 1, 5, 30)  # warm-up (graph tracing, caches)
                    for concurrency in args.concurrency:
                        stats = run_cell(endpoint, bodies, concurrency, args.requests, args.max_seconds)
                        rows.append((name, concurrency, stats))
            finally:
                process.terminate()
                process.wait(timeout=60)

    print(f"REST latency, 1 image/request, gallery {args.gallery} (ScaNN), small_cnn 32 px, "
          f"{os.cpu_count()} CPU cores shared by client and server")
    print(f"| endpoint | concurrency | requests | errors | p50 ms | p99 ms | req/s |")
    print(f"|---|---:|---:|---:|---:|---:|---:|")
    for name, concurrency, s in rows:
        print(f"| {name} | {concurrency} | {s['n']} | {s['errors']} | {s['p50']:.1f} | "
              f"{s['p99']:.1f} | {s['rps']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
