"""Embedder throughput: TF SavedModel (embed_pixels) vs ONNX Runtime vs Keras predict.

Same model (dgml_tf.models small_cnn backbone + attentive grouping, K=3, D=48, random weights,
32 px), same preprocessed Fashion-MNIST images, batch 64, CPU. Outputs are checked to agree
(max abs difference printed) before timing. The SavedModel is also exported with
``fold_batch_norm=False`` (BatchNorms computed after the convolutions, not folded into them) and
both exports are timed alternately at batch 1, 8 and ``--batch_size`` (the fold's ratio). Run:

    PYTHONPATH=. .venv/bin/python bench/embedder_throughput.py [--num_images=1024 --threads=1]
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import gzip  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402


def fashion_mnist_rgb(count: int, size: int) -> np.ndarray:
    path = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
    with gzip.open(path, "rb") as f:
        gray = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:count]
    import tensorflow as tf

    from pipelines.transforms import eval_transform

    resize = int(round(size * 256 / 224))
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    return np.stack([eval_transform(tf.constant(im), size, resize).numpy() for im in rgb])


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def fold_table(args, images, folded, unfolded, run_savedmodel) -> list:
    """Folded vs unfolded export, timed alternately (best of 3 each) at batch 1, 8 and
    ``--batch_size``: Markdown lines."""
    lines = ["", "SavedModel embed_pixels with the BatchNorms folded into the convolutions "
             "(the export's default) vs `fold_batch_norm=False`, the two timed alternately:", "",
             "| batch | folded images/s | unfolded images/s | folded / unfolded |",
             "|---:|---:|---:|---:|"]
    for batch in sorted({1, 8, args.batch_size}):
        count = min(len(images), max(batch, 256 if batch < 8 else len(images)))
        batches = [images[i:i + batch] for i in range(0, count - batch + 1, batch)]
        seconds = {"folded": [], "unfolded": []}
        for _ in range(3):
            for name, signature in (("folded", folded), ("unfolded", unfolded)):
                seconds[name].append(best_of(
                    lambda s=signature, b=batches: run_savedmodel(s, b), 1))
        rates = {name: len(batches) * batch / min(times) for name, times in seconds.items()}
        lines.append(f"| {batch} | {rates['folded']:.1f} | {rates['unfolded']:.1f} | "
                     f"{rates['folded'] / rates['unfolded']:.2f}x |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_images", type=int, default=1024)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write_docs", action="store_true",
                        help="also refresh the table in docs/benchmarks.md (bench/doc_tables.py)")
    args = parser.parse_args()

    import keras
    import onnxruntime as ort
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from dgml_tf.export import export_for_serving, export_onnx
    from dgml_tf.models import build_embedding_model

    keras.utils.set_random_seed(0)
    model = build_embedding_model(backbone="small_cnn", input_shape=(args.size, args.size, 3),
                                  head="attentive", num_groups=3, embedding_dim=48, weights=None)
    images = fashion_mnist_rgb(args.num_images, args.size)
    work = tempfile.mkdtemp(prefix="dgml-bench-")
    version_dir = export_for_serving(model, work, "bench", image_size=args.size, resize_size=None)
    unfolded_dir = export_for_serving(model, work, "unfolded", image_size=args.size,
                                      resize_size=None, fold_batch_norm=False)
    onnx_path = export_onnx(version_dir, os.path.join(work, "bench.onnx"))
    pixels = tf.saved_model.load(str(version_dir)).signatures["embed_pixels"]
    unfolded = tf.saved_model.load(str(unfolded_dir)).signatures["embed_pixels"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    batches = [images[i:i + args.batch_size] for i in range(0, len(images), args.batch_size)]

    def run_savedmodel(signature=pixels, batches=batches):
        return np.concatenate([signature(images=tf.constant(b))["embedding"].numpy()
                               for b in batches])

    def run_onnx():
        return np.concatenate([session.run(["embedding"], {"images": b})[0] for b in batches])

    def run_keras():
        return model.predict(images, batch_size=args.batch_size, verbose=0)["embedding"]

    reference = run_keras()
    table = []
    for name, fn in (("SavedModel", run_savedmodel), ("ONNX Runtime", run_onnx),
                     ("SavedModel unfolded", lambda: run_savedmodel(unfolded))):
        table.append(f"max |{name} - Keras| = {np.abs(fn() - reference).max():.2e}")
    table += ["", f"{len(images)} images {args.size}x{args.size}, batch {args.batch_size}, "
              f"{args.threads} thread(s); best of 3", "",
              "| runtime | images/s |", "|---|---:|"]
    for name, fn in (("TF SavedModel embed_pixels", run_savedmodel), ("ONNX Runtime", run_onnx),
                     ("Keras model.predict", run_keras)):
        table.append(f"| {name} | {len(images) / best_of(fn):.1f} |")
    table += fold_table(args, images, pixels, unfolded, run_savedmodel)
    print("\n".join(table))
    if args.write_docs:
        from doc_tables import BENCHMARKS_DOC, cpu_note, refresh_section  # bench/ is sys.path[0]
        refresh_section(BENCHMARKS_DOC, "embedder_throughput", cpu_note() + "\n\n" + "\n".join(table))
        print(f"refreshed embedder_throughput in {BENCHMARKS_DOC}")


if __name__ == "__main__":
    main()
