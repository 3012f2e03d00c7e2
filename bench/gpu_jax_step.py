"""JAX-backend training step of ResNet50 + attentive grouping, for a GPU machine without TensorFlow.

What is timed: ``MetricLearningModel(build_embedding_model("resnet50", weights=None,
head="attentive"), MarginLoss(...), diversity_weight)`` with Adam, one ``train_on_batch`` per
step on device-resident random images (batch = classes x 4), after ``--warmup`` steps (the XLA
compile). Float32 and ``mixed_bfloat16``, each batch size, in images per second. With two or
more devices it also checks ``keras.distribution.DataParallel``: one SGD step (learning rate 1)
on the same global batch over all devices against one device, printing the largest loss and
gradient differences.

This script never imports TensorFlow (it prints ``tensorflow imported: False`` at the end to
prove it); tests/test_backends.py runs it at toy size on CPU where TensorFlow is not importable.

Usage (on the GPU machine, with ``pip install "jax[cuda12]" keras==3.15.1`` and this repo)::

    KERAS_BACKEND=jax python bench/gpu_jax_step.py                      # 224 px, 64 and 128
    python bench/gpu_jax_step.py --image_size=32 --batch_sizes=2 --steps=1 --warmup=1  # smoke
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ["KERAS_BACKEND"] = "jax"  # before Keras is imported
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from dgml_tf.losses import MarginLoss  # noqa: E402
from dgml_tf.models import build_embedding_model  # noqa: E402
from dgml_tf.train import MetricLearningModel  # noqa: E402


def _build(image_size: int, batch: int, args, optimizer) -> MetricLearningModel:
    embedder = build_embedding_model("resnet50", (image_size, image_size, 3), weights=None,
                                     head="attentive", num_groups=args.num_groups,
                                     embedding_dim=args.embedding_dim, freeze_batch_norm=True)
    model = MetricLearningModel(
        embedder, MarginLoss(num_classes=max(batch // 4, 1), num_groups=args.num_groups),
        diversity_weight=args.diversity_weight, seed=0)
    model.compile(optimizer=optimizer)
    return model


def _batch(image_size: int, batch: int):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, size=(batch, image_size, image_size, 3)).astype("float32")
    labels = (np.arange(batch) // 4).astype("int32")
    return images, labels


def time_steps(image_size: int, batch: int, dtype: str, args) -> float:
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if dtype == "bfloat16" else
                                            "float32")
    try:
        model = _build(image_size, batch, args, keras.optimizers.Adam(1e-4))
        images, labels = _batch(image_size, batch)
        images, labels = jax.device_put(images), jax.device_put(labels)
        for _ in range(args.warmup):
            model.train_on_batch(images, labels)
        start = time.perf_counter()
        for _ in range(args.steps):
            logs = model.train_on_batch(images, labels, return_dict=True)
        elapsed = time.perf_counter() - start  # train_on_batch returns host floats: synced
        if not np.isfinite(logs["loss"]):
            raise FloatingPointError(f"{dtype} batch {batch}: loss {logs['loss']}")
        return args.steps * batch / elapsed
    finally:
        keras.mixed_precision.set_global_policy("float32")


def data_parallel_check(image_size: int, batch: int, args) -> str:
    devices = jax.devices()
    if len(devices) < 2:
        return f"DataParallel check: skipped ({len(devices)} device)"
    batch = max(batch - batch % len(devices), len(devices))
    results = []
    for distribution in (None, keras.distribution.DataParallel(devices=devices)):
        keras.backend.clear_session()
        keras.distribution.set_distribution(distribution)
        try:
            keras.utils.set_random_seed(0)
            model = _build(image_size, batch, args, keras.optimizers.SGD(1.0))
            images, labels = _batch(image_size, batch)
            before = [np.array(v.numpy()) for v in model.trainable_variables]
            loss = model.train_on_batch(images, labels, return_dict=True)["loss"]
            after = [np.array(v.numpy()) for v in model.trainable_variables]
            results.append((loss, [b - a for b, a in zip(before, after)]))
        finally:
            keras.distribution.set_distribution(None)
    (loss_1, grads_1), (loss_n, grads_n) = results
    grad_diff = max(float(np.max(np.abs(a - b))) for a, b in zip(grads_1, grads_n))
    grad_scale = max(float(np.max(np.abs(a))) for a in grads_1)
    return (f"DataParallel check over {len(devices)} devices, global batch {batch}: loss "
            f"{loss_1:.6f} (1 device) vs {loss_n:.6f}; max |grad diff| {grad_diff:.2e} "
            f"(max |grad| {grad_scale:.2e})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_sizes", default="64,128")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--num_groups", type=int, default=3)
    parser.add_argument("--embedding_dim", type=int, default=512)
    parser.add_argument("--diversity_weight", type=float, default=0.02)
    args = parser.parse_args(argv)
    # Positive sizes only: a zero or negative value would time nothing and divide by zero.
    if min(args.image_size, args.steps, args.warmup + 1) < 1:
        parser.error("--image_size and --steps must be >= 1, --warmup >= 0")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if min(batch_sizes) < 1:
        parser.error("--batch_sizes must be positive integers")
    devices = jax.devices()
    print(f"jax {jax.__version__}, keras {keras.__version__}, python {platform.python_version()}")
    print(f"devices: {len(devices)} x {devices[0].device_kind} ({devices[0].platform})")
    print(f"ResNet50 + attentive grouping (K={args.num_groups}, D={args.embedding_dim}), "
          f"{args.image_size} px, MarginLoss + diversity, Adam; {args.steps} timed steps")
    for dtype in args.dtypes.split(","):
        for batch in batch_sizes:
            rate = time_steps(args.image_size, batch, dtype, args)
            print(f"{dtype:9s} batch {batch:4d}: {rate:9.1f} images/s", flush=True)
    print(data_parallel_check(args.image_size, batch_sizes[0], args))
    print(f"tensorflow imported: {'tensorflow' in sys.modules}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
