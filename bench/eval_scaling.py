"""Time and peak memory of dgml_tf's chunked Recall@K at Stanford Online Products scale,
next to faiss-cpu exact (flat inner-product) search computing the same Recall@K.

Data: ``--num-items`` (default 60,000) random unit vectors of ``--dim`` (512) dimensions in
``--num-classes`` (11,000) classes (a random class centre plus Gaussian noise, normalised, so
Recall@K is neither 0 nor 1). Each method runs in its own subprocess so its peak resident memory
(``ru_maxrss``) is its own; "search peak" is the peak minus the resident size just before the
search (imports and data included in the latter).

Usage::

    python bench/eval_scaling.py                    # full SOP-size run (CPU heavy, minutes)
    python bench/eval_scaling.py --num-items 5000   # quick check

faiss is only needed here: ``pip install faiss-cpu``. Without it, the faiss row says so.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

RECALL_KS = (1, 10, 100, 1000)


def make_data(num_items: int, dim: int, num_classes: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=num_items)
    centres = rng.standard_normal((num_classes, dim), dtype=np.float32)
    x = centres[labels] + 2.2 * rng.standard_normal((num_items, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, labels


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def run_ours(x, labels, chunk_size: int) -> dict:
    from dgml_tf.evaluate import evaluate_retrieval

    result = evaluate_retrieval(x, labels, recall_ks=RECALL_KS, compute_nmi=False,
                                compute_map_at_r=False, chunk_size=chunk_size)
    return {f"recall@{k}": result[f"recall@{k}"] for k in RECALL_KS}


def run_faiss(x, labels, chunk_size: int) -> dict:
    import faiss
    import numpy as np

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    k = max(RECALL_KS)
    hits = np.zeros(len(RECALL_KS), dtype=np.int64)
    for start in range(0, len(x), chunk_size):
        _, found = index.search(x[start:start + chunk_size], k + 1)
        rows = np.arange(start, start + len(found))
        # Drop each query itself; if it did not make its own top k+1, drop the last column.
        own = found == rows[:, None]
        keep = np.where(own.any(axis=1, keepdims=True), ~own,
                        np.arange(k + 1)[None, :] < k)
        neighbours = found[keep].reshape(len(found), k)
        relevant = labels[neighbours] == labels[rows, None]
        for j, kk in enumerate(RECALL_KS):
            hits[j] += int(relevant[:, :kk].any(axis=1).sum())
    return {f"recall@{kk}": float(h) / len(x) for kk, h in zip(RECALL_KS, hits, strict=True)}


def worker(args) -> None:
    try:
        if args.worker == "faiss":
            import faiss  # noqa: F401
    except ImportError:
        print(json.dumps({"error": "faiss is not installed: pip install faiss-cpu"}))
        return
    if args.worker == "ours":
        import tensorflow  # noqa: F401  (import cost kept out of the timing)
    x, labels = make_data(args.num_items, args.dim, args.num_classes, args.seed)
    before = _rss_mb()
    start = time.perf_counter()
    recalls = (run_ours if args.worker == "ours" else run_faiss)(x, labels, args.chunk_size)
    seconds = time.perf_counter() - start
    peak = _rss_mb()
    version = None
    if args.worker == "faiss":
        import faiss

        version = faiss.__version__
    print(json.dumps({"seconds": seconds, "rss_before_mb": before, "peak_rss_mb": peak,
                      "recalls": recalls, "version": version}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-items", type=int, default=60_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--num-classes", type=int, default=11_000)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=("ours", "faiss"), help=argparse.SUPPRESS)
    parser.add_argument("--write_docs", action="store_true",
                        help="also refresh the table in docs/benchmarks.md (bench/doc_tables.py)")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow",
               PYTHONPATH=os.pathsep.join(filter(None, [
                   os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                   os.environ.get("PYTHONPATH")])))
    rows = {}
    for name in ("ours", "faiss"):
        command = [sys.executable, os.path.abspath(__file__), "--worker", name,
                   "--num-items", str(args.num_items), "--dim", str(args.dim),
                   "--num-classes", str(args.num_classes), "--chunk-size", str(args.chunk_size),
                   "--seed", str(args.seed)]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            raise SystemExit(f"{name} worker failed:\n{done.stderr[-3000:]}")
        rows[name] = json.loads(lines[-1])

    full_matrix_mb = args.num_items ** 2 * 4 / 2 ** 20
    table = [f"Recall@K, {args.num_items} x {args.dim} unit vectors, {args.num_classes} classes, "
             f"chunk {args.chunk_size} (a full N x N float32 matrix would be {full_matrix_mb:,.0f} MB)",
             ""]
    header = ["method", "seconds", "RSS before MB", "peak RSS MB", "search peak MB"] + [
        f"R@{k}" for k in RECALL_KS]
    table.append("| " + " | ".join(header) + " |")
    table.append("|" + "---|" * len(header))
    labels = {"ours": "dgml_tf chunked TF top_k", "faiss": "faiss IndexFlatIP"}
    for name, row in rows.items():
        if "error" in row:
            table.append(f"| {labels[name]} | " + row["error"] + " |" * (len(header) - 1))
            continue
        label = labels[name] + (f" {row['version']}" if row.get("version") else "")
        cells = [label, f"{row['seconds']:.1f}", f"{row['rss_before_mb']:.0f}",
                 f"{row['peak_rss_mb']:.0f}", f"{row['peak_rss_mb'] - row['rss_before_mb']:.0f}"]
        cells += [f"{100 * row['recalls'][f'recall@{k}']:.3f}" for k in RECALL_KS]
        table.append("| " + " | ".join(cells) + " |")
    if "error" not in rows["faiss"]:
        diff = max(abs(rows["ours"]["recalls"][key] - rows["faiss"]["recalls"][key])
                   for key in rows["ours"]["recalls"])
        flips = diff * args.num_items
        table += ["", f"Largest Recall@K difference: {100 * diff:.4f} points ({flips:.0f} queries)"
                  + (" - identical." if diff == 0 else " - float rounding at the K-th boundary.")]
    print("\n".join(table))
    if args.write_docs:
        from doc_tables import BENCHMARKS_DOC, cpu_note, refresh_section  # bench/ is sys.path[0]
        refresh_section(BENCHMARKS_DOC, "eval_scaling", cpu_note() + "\n\n" + "\n".join(table))
        print(f"refreshed eval_scaling in {BENCHMARKS_DOC}")


if __name__ == "__main__":
    main()
