"""CPU per call of the exported ``serving_default``, TensorFlow's default thread pools vs 1 + 1.

What dynamic batching can save is the per-call overhead, and on a CPU much of a small model's
single-image call is spent handing work between TensorFlow's thread pools. This script exports
the REST benchmark's model (``serving.synthetic_gallery.export_tiny_embedder``: small_cnn +
attentive grouping, 32 px), then times ``serving_default`` on PNG bytes at batch 1 and 8 in one
subprocess per thread setting (TensorFlow sizes its pools once per process), the settings
alternating over ``--rounds``. It prints wall and CPU milliseconds per call (best round) and the
CPU of a merged call of 8 over 8 single calls: the most a server that merges 8 requests can save.

Usage:
    python bench/signature_cpu.py [--calls 200] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"TensorFlow default pools": (0, 0), "1 intra-op + 1 inter-op thread": (1, 1)}
BATCHES = (1, 8)


def worker(version_dir: str, intra: int, inter: int, calls: int) -> dict:
    """``{batch: (wall ms, CPU ms)}`` per ``serving_default`` call in this process."""
    import tensorflow as tf

    from serving.synthetic_gallery import synthetic_gallery

    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    signature = tf.saved_model.load(version_dir).signatures["serving_default"]
    images = synthetic_gallery(list(range(max(BATCHES))))
    result = {}
    for batch in BATCHES:
        data = tf.constant(images[:batch])
        for _ in range(20):  # warm-up: tracing, caches
            signature(image_bytes=data)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(calls):
            signature(image_bytes=data)
        result[batch] = (1e3 * (time.perf_counter() - wall) / calls,
                         1e3 * (time.process_time() - cpu) / calls)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="timed calls per batch size")
    parser.add_argument("--rounds", type=int, default=2, help="subprocesses per setting, alternating")
    parser.add_argument("--_worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._worker:
        version_dir, intra, inter, calls = args._worker
        print(json.dumps(worker(version_dir, int(intra), int(inter), int(calls))))
        return 0
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from doc_tables import cpu_note  # bench/ is sys.path[0]
    from serving.synthetic_gallery import export_tiny_embedder

    runs: dict = {}  # (setting, batch) -> [(wall ms, CPU ms) per round]
    with tempfile.TemporaryDirectory(prefix="signature_cpu_") as tmp:
        version_dir = str(export_tiny_embedder(Path(tmp) / "models", "dgml", 1, seed=0))
        env = dict(os.environ, PYTHONPATH=str(REPO))
        for index in range(args.rounds):
            order = list(SETTINGS) if index % 2 == 0 else list(SETTINGS)[::-1]
            for name in order:
                intra, inter = SETTINGS[name]
                done = subprocess.run(
                    [sys.executable, __file__, "--_worker", version_dir, str(intra), str(inter),
                     str(args.calls)], env=env, capture_output=True, text=True, check=True)
                for batch, timing in json.loads(done.stdout.splitlines()[-1]).items():
                    runs.setdefault((name, int(batch)), []).append(tuple(timing))
    best = {key: min(timings, key=lambda t: t[1]) for key, timings in runs.items()}  # least CPU
    lines = [f"serving_default of the REST benchmark's export (small_cnn, 32 px PNG), ms per call, "
             f"best of {args.rounds} alternating subprocesses x {args.calls} calls; {cpu_note()}", "",
             "| threads | batch 1 wall | batch 1 CPU | batch 8 wall | batch 8 CPU | "
             "CPU of 8 singles / one merged 8 |", "|---|---:|---:|---:|---:|---:|"]
    for name in SETTINGS:
        (w1, c1), (w8, c8) = best[(name, 1)], best[(name, 8)]
        lines.append(f"| {name} | {w1:.2f} | {c1:.2f} | {w8:.2f} | {c8:.2f} | {8 * c1 / c8:.2f}x |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
