"""Throughput of the input pipelines (images/s) on realistic-size JPEGs, printed as a table.

Generates ``--num-images`` (default 2,000) 500x375 JPEGs (smooth random content, ~quality 90) in
``--num-classes`` classes into a temporary folder, then times:

* the one-off validation pass (decode every file once, ``pipelines.image_check``),
* the class-balanced train pipeline (random resized crop + flip to ``--image-size``),
* the evaluation pipeline (resize 256, centre crop 224).

Next to the train pipeline it prints the training step's consumption rate (images/s), so one
sees whether input or compute limits training. That rate is either passed in
(``--train-rate``, e.g. measured with the training CLI) or measured by
``dgml_tf.train.measure_train_step_rate(image_size=..., batch_size=...)`` when that function
exists; otherwise the column says "n/a" (no number is made up).

Usage::

    python bench/pipeline_throughput.py                          # 2,000 images, 20 timed steps
    python bench/pipeline_throughput.py --num-images 200 --steps 5 --train-rate 85
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from typing import Optional

from synthetic_images import write_jpegs  # bench/ is sys.path[0]


def images_per_second(iterator, batch_size: int, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):  # fills the prefetch buffer and lets AUTOTUNE settle
        next(iterator)
    start = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    return steps * batch_size / (time.perf_counter() - start)


def training_consumption_rate(given: Optional[float], image_size: int, batch_size: int) -> str:
    if given is not None:
        return f"{given:,.0f} (given)"
    try:
        from dgml_tf import train as training
    except ImportError:
        return "n/a"
    measure = getattr(training, "measure_train_step_rate", None)
    if measure is None:
        return "n/a"
    return f"{measure(image_size=image_size, batch_size=batch_size):,.0f}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--resize-size", type=int, default=256)
    parser.add_argument("--batch-classes", type=int, default=56)
    parser.add_argument("--images-per-class", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="timed batches per pipeline")
    parser.add_argument("--train-rate", type=float, default=None,
                        help="measured training consumption rate (images/s) to print alongside")
    parser.add_argument("--data-dir", default=None,
                        help="reuse/keep generated JPEGs here instead of a temporary folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write_docs", action="store_true",
                        help="also refresh the table in docs/benchmarks.md (bench/doc_tables.py)")
    args = parser.parse_args(argv)

    folder = args.data_dir or tempfile.mkdtemp(prefix="dgml_pipeline_bench_")
    try:
        start = time.perf_counter()
        records = write_jpegs(folder, args.num_images, args.num_classes, args.seed)
        print(f"wrote {len(records)} 500x375 JPEGs in {time.perf_counter() - start:.1f} s to {folder}")

        from pipelines.image_check import check_image_files
        from pipelines.image_pipeline import build_train_pipeline, make_eval_dataset

        start = time.perf_counter()
        check = check_image_files(records)
        check_rate = len(records) / (time.perf_counter() - start)

        batch = args.batch_classes * args.images_per_class
        train = build_train_pipeline(
            check.valid, batch_classes=args.batch_classes,
            images_per_class=args.images_per_class, image_size=args.image_size, seed=args.seed,
            check_files=False,
        )
        train_rate = images_per_second(iter(train.dataset), batch, args.steps)

        eval_batch = 64
        eval_dataset = make_eval_dataset(
            check.valid, image_size=args.image_size, resize_size=args.resize_size,
            batch_size=eval_batch, check_files=False,
        ).repeat()
        eval_rate = images_per_second(iter(eval_dataset), eval_batch, args.steps)

        consumption = training_consumption_rate(args.train_rate, args.image_size, batch)
        rows = [
            ("validation pass (decode once)", f"{check_rate:,.0f}", ""),
            (f"train {args.batch_classes}x{args.images_per_class}, crop {args.image_size}",
             f"{train_rate:,.0f}", consumption),
            (f"eval resize {args.resize_size}, crop {args.image_size}", f"{eval_rate:,.0f}", ""),
        ]
        table = [f"CPU cores: {os.cpu_count()}, images: {len(records)}, timed steps: {args.steps}",
                 "",
                 f"| {'pipeline':<36} | {'images/s':>9} | {'training step consumes (images/s)':>33} |",
                 f"|{'-' * 38}|{'-' * 11}|{'-' * 35}|"]
        table += [f"| {name:<36} | {rate:>9} | {other:>33} |" for name, rate, other in rows]
        print("\n" + "\n".join(table))
        if args.write_docs:
            from doc_tables import BENCHMARKS_DOC, cpu_note, refresh_section  # bench/ is sys.path[0]
            refresh_section(BENCHMARKS_DOC, "pipeline_throughput", cpu_note() + "\n\n" + "\n".join(table))
            print(f"refreshed pipeline_throughput in {BENCHMARKS_DOC}")
    finally:
        if args.data_dir is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
