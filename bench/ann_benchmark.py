"""ANN benchmark: ScaNN vs exact brute force vs nmslib HNSW, QPS at recall@10 >= 0.95.

Data (structured synthetic, shaped like attentive-grouping embeddings): 200k gallery + 1k query
vectors of 510 = 3 x 170 dims. Each group's vector is drawn around one of 1000 cluster centres
whose coordinates have a power-law spectrum (a few dominant directions, like real embeddings),
then L2-normalised per group and concatenated (norm sqrt(3)), exactly the structure the model
outputs. Similarity: cosine (dot product of normalised vectors). Ground truth: exact top-10.

Everything is single-threaded (OMP/BLAS threads = 1; nmslib queries with 1 thread) so QPS are
comparable and the shared machine is not swamped. Run:

    PYTHONPATH=. .venv/bin/python bench/ann_benchmark.py [--num_items=200000]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from dgml_tf.distances import l2_normalize_np  # noqa: E402
from dgml_tf.index import choose_scann_params, exact_top_k, recall_at_k  # noqa: E402
from dgml_tf.index.scann_index import build_scann_searcher  # noqa: E402


def grouped_clustered_vectors(n: int, groups: int = 3, group_dim: int = 170, clusters: int = 1000,
                              seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    spectrum = (1.0 + np.arange(group_dim)) ** -0.8  # power-law variance per direction
    parts = []
    for _ in range(groups):
        centres = rng.standard_normal((clusters, group_dim)) * spectrum
        assignment = rng.integers(0, clusters, n)
        noise = rng.standard_normal((n, group_dim)) * spectrum * 0.5
        parts.append(l2_normalize_np((centres[assignment] + noise).astype(np.float32)))
    return np.concatenate(parts, axis=1)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_items", type=int, default=200_000)
    parser.add_argument("--num_queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--write_docs", action="store_true",
                        help="also refresh the table in docs/benchmarks.md (bench/doc_tables.py)")
    args = parser.parse_args()
    k = args.k

    data = grouped_clustered_vectors(args.num_items + args.num_queries)
    gallery = l2_normalize_np(data[: args.num_items])
    queries = l2_normalize_np(data[args.num_items:])
    print(f"gallery {gallery.shape}, queries {queries.shape}, k={k}, single-threaded")

    rows = []

    def report(label, recall, qps, build):
        # Printed as soon as measured, so a long HNSW build never hides finished results.
        rows.append((label, recall, qps, build))
        print(f"{label:<72} {recall:>9.4f} {qps:>9.1f} {build:>8.1f}", flush=True)

    print(f"\n{'method':<72} {'recall@10':>9} {'QPS':>9} {'build s':>8}")
    (truth, _), seconds = timed(lambda: exact_top_k(queries, gallery, k))
    report("exact brute force (NumPy matmul + argpartition)", 1.0, len(queries) / seconds, 0.0)

    params = choose_scann_params(len(gallery))
    searcher, build = timed(lambda: build_scann_searcher(gallery, params, num_neighbors=k))
    print(f"ScaNN params (chosen for N={len(gallery)}): {params.to_dict()}; build {build:.1f} s",
          flush=True)
    for leaves in sorted({params.num_leaves_to_search, 8, 16, 32, 48, 64}):
        (found, _), seconds = timed(
            lambda leaves=leaves: searcher.search_batched(queries, final_num_neighbors=k,
                                                          leaves_to_search=leaves))
        label = f"ScaNN tree {params.num_leaves} leaves, search {leaves}, AH, reorder {params.reorder_k}"
        report(label, recall_at_k(found, truth), len(queries) / seconds, build)

    try:
        import nmslib
    except ImportError:
        nmslib = None
        print("nmslib not installed: HNSW skipped")
    if nmslib is not None:
        index = nmslib.init(method="hnsw", space="cosinesimil")
        index.addDataPointBatch(gallery)
        _, build = timed(lambda: index.createIndex({"M": 16, "efConstruction": 100, "post": 0,
                                                    "indexThreadQty": 2}, print_progress=False))
        for ef in (16, 32, 64, 128, 256):
            index.setQueryTimeParams({"efSearch": ef})
            results, seconds = timed(lambda: index.knnQueryBatch(queries, k=k, num_threads=1))
            found = np.stack([ids for ids, _ in results])
            report(f"nmslib HNSW M=16 efC=100 efSearch={ef}", recall_at_k(found, truth),
                   len(queries) / seconds, build)

    print("\nbest QPS with recall@10 >= 0.95:")
    for prefix in ("exact", "ScaNN", "nmslib"):
        ok = [r for r in rows if r[0].startswith(prefix) and r[1] >= 0.95]
        if ok:
            best = max(ok, key=lambda r: r[2])
            print(f"  {best[0]:<70} recall {best[1]:.4f}  {best[2]:.1f} QPS")
        else:
            print(f"  {prefix}: no setting reached recall 0.95")
    table = [f"{len(gallery):,} gallery + {len(queries):,} query vectors of {gallery.shape[1]} "
             f"dims, k = {k}, single-threaded search", "",
             "| method | recall@10 | QPS | build s |", "|---|---:|---:|---:|"]
    table += [f"| {label} | {recall:.4f} | {qps:.1f} | {build:.1f} |"
              for label, recall, qps, build in rows]
    if args.write_docs:
        from doc_tables import BENCHMARKS_DOC, cpu_note, refresh_section  # bench/ is sys.path[0]
        refresh_section(BENCHMARKS_DOC, "ann", cpu_note() + "\n\n" + "\n".join(table))
        print(f"refreshed ann in {BENCHMARKS_DOC}")


if __name__ == "__main__":
    main()
