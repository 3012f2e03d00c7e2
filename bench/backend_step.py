"""Training-step time of the same Keras model on the TensorFlow, JAX and PyTorch backends (CPU).

The model: ``build_embedding_model(--backbone, --image_size px, head="attentive")`` inside
``MetricLearningModel`` with ``MarginLoss`` (distance-weighted mining) + ``--diversity_weight``
x the diversity loss, Adam, fed by ``train_on_batch`` with one in-memory batch (``--batch``
images, 4 per class). Each backend runs in its own subprocess (``KERAS_BACKEND`` is fixed at
import): TensorFlow and JAX in this interpreter, PyTorch in ``./.venv-torch``
(``bash bench/setup_torch_venv.sh``; add ``keras==3.15.1 numpy==2.4.6``) or here if torch is
importable. Each warms up ``--warmup`` steps (compiles), then times ``--repeats`` blocks of
``--steps`` steps; the table gives the median block's ms per step, its images/s and the ratio to
TensorFlow. Compilation is each backend's Keras default (``jit_compile="auto"``: XLA on JAX;
TensorFlow's tf.function graph; torch eager), printed per row.

Usage: python bench/backend_step.py [--batch=32 --image_size=64 --steps=10 --repeats=3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TORCH_VENV_PYTHON = REPO / ".venv-torch" / "bin" / "python"
BACKENDS = ("tensorflow", "jax", "torch")
_FLAGS_OF_INTEREST = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16",
                      "amx_bf16", "amx_tile")


def cpu_description() -> str:
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", "unknown CPU", "x86_64"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    present = [f for f in _FLAGS_OF_INTEREST if f in flags]
    absent = [f for f in _FLAGS_OF_INTEREST if f not in flags]
    return (f"{model}; {os.cpu_count()} logical CPUs; flags: {' '.join(present) or '-'}"
            f" (absent: {' '.join(absent) or '-'})")


def worker(args) -> dict:
    """Runs in the backend's own process (KERAS_BACKEND set by the parent)."""
    sys.path.insert(0, str(REPO))
    import keras
    import numpy as np

    from dgml_tf.losses import MarginLoss
    from dgml_tf.models import build_embedding_model
    from dgml_tf.train import MetricLearningModel

    keras.utils.set_random_seed(0)
    embedder = build_embedding_model(args.backbone, (args.image_size, args.image_size, 3),
                                     head="attentive", num_groups=args.num_groups,
                                     embedding_dim=args.embedding_dim, freeze_batch_norm=False)
    model = MetricLearningModel(
        embedder, MarginLoss(num_classes=args.batch // 4, num_groups=args.num_groups),
        diversity_weight=args.diversity_weight, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (args.batch, args.image_size, args.image_size, 3))
    images = images.astype("float32")
    labels = (np.arange(args.batch) // 4).astype("int32")
    for _ in range(args.warmup):
        model.train_on_batch(images, labels)
    blocks = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            logs = model.train_on_batch(images, labels, return_dict=True)
        blocks.append((time.perf_counter() - start) / args.steps)
    if not np.isfinite(logs["loss"]):
        raise FloatingPointError(f"loss {logs['loss']}")
    versions = {"keras": keras.__version__}
    backend = keras.backend.backend()
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[backend]
    versions[module] = __import__(module).__version__
    return {"backend": backend, "seconds": blocks, "jit_compile": str(model.jit_compile),
            "versions": versions}


def _python_for(backend: str) -> str | None:
    if backend != "torch":
        return sys.executable
    if TORCH_VENV_PYTHON.exists():
        return str(TORCH_VENV_PYTHON)
    try:
        import importlib.util

        return sys.executable if importlib.util.find_spec("torch") else None
    except ImportError:
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="small_cnn")
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--num_groups", type=int, default=4)
    parser.add_argument("--embedding_dim", type=int, default=128)
    parser.add_argument("--diversity_weight", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--write_docs", action="store_true",
                        help="also refresh the table in docs/benchmarks.md (bench/doc_tables.py)")
    args = parser.parse_args(argv)
    if args.batch < 8 or args.batch % 4:
        parser.error("--batch must be a multiple of 4 and >= 8 (4 images per class)")
    if min(args.steps, args.repeats, args.image_size) < 1 or args.warmup < 0:
        parser.error("--steps, --repeats, --image_size must be >= 1 and --warmup >= 0")
    if args.worker:
        print("RESULT " + json.dumps(worker(args)))
        return 0

    header = [f"CPU: {cpu_description()}",
              f"{args.backbone} + attentive grouping (K={args.num_groups}, D={args.embedding_dim}), "
              f"{args.image_size} px, batch {args.batch}, MarginLoss + diversity, Adam; median of "
              f"{args.repeats} x {args.steps} steps after {args.warmup} warm-up steps"]
    print("\n".join(header))
    rows, reference = [], None
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])
                   if not a.startswith(("--backends", "--write_docs"))]
    for backend in args.backends.split(","):
        python = _python_for(backend)
        if python is None:
            rows.append(f"{backend:10s}  not run: no torch (bash bench/setup_torch_venv.sh)")
            continue
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2",
               "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
        result = subprocess.run([python, __file__, f"--worker={backend}", *passthrough],
                                env=env, capture_output=True, text=True)
        lines = [l for l in result.stdout.splitlines() if l.startswith("RESULT ")]
        if result.returncode != 0 or not lines:
            rows.append(f"{backend:10s}  FAILED: {result.stderr.strip().splitlines()[-1:]}")
            continue
        data = json.loads(lines[-1][len("RESULT "):])
        median = statistics.median(data["seconds"])
        reference = reference or (median if backend == "tensorflow" else None)
        ratio = f"{reference / median:5.2f}x" if reference else "  -  "
        versions = ", ".join(f"{k} {v}" for k, v in data["versions"].items())
        rows.append(f"{backend:10s} {1000 * median:8.1f} ms/step {args.batch / median:8.1f} "
                    f"images/s  {ratio} vs TF  (min-max {1000 * min(data['seconds']):.1f}-"
                    f"{1000 * max(data['seconds']):.1f} ms; jit_compile={data['jit_compile']}; "
                    f"{versions})")
    print("backend      time/step   throughput   speed")
    print("\n".join(rows))
    if args.write_docs:
        from doc_tables import BENCHMARKS_DOC, refresh_section  # bench/ is sys.path[0]
        table = header + ["backend      time/step   throughput   speed"] + rows
        refresh_section(BENCHMARKS_DOC, "backend_step", "```\n" + "\n".join(table) + "\n```")
        print(f"refreshed backend_step in {BENCHMARKS_DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
