"""The main job, end to end, on the embedded Fashion-MNIST default.

``python -m dgml_tf.main`` (what ``scripts/main.sh`` runs after setting up ``./.venv``):

1. trains attentive grouping with ``dgml_tf/configs/fashion_mnist.flags`` (zero-shot: classes 0-4
   train, 5-9 test), selecting the checkpoint on validation classes carved from 0-4;
2. evaluates it on the unseen classes (concatenated embedding and each group alone) next to the
   raw-pixel nearest-neighbour baseline;
3. writes interpretation figures (per-group attention maps, a retrieval panel);
4. exports the embedder for TF Serving (and ONNX) and builds the retrieval index of the test split;
5. starts the REST service on a free localhost port, queries it with a few test images, prints
   their neighbours, and stops the service;
6. prints where every artifact is and a results table.

Each stage is the same CLI a user runs (``python -m dgml_tf.train`` ...), in its own process, so
the main job also checks that they compose. A stage whose output already exists is reused unless
``--fresh`` is given (a re-run after an interruption continues where it stopped).
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from typing import Mapping, Optional, Sequence

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "outputs/main", "Where every artifact goes.")
flags.DEFINE_string("flagfile_name", "fashion_mnist.flags", "Bundled training flagfile.")
flags.DEFINE_string("data_dir", None, "Fashion-MNIST IDX folder (default: the Debian package's).")
flags.DEFINE_integer("num_queries", 4, "Test images sent to the REST service.")
flags.DEFINE_integer("top_k", 5, "Neighbours printed per query.")
flags.DEFINE_boolean("fresh", False, "Redo every stage even if its output exists: removes "
                     "--output_dir first, but only a directory this job created (it holds the "
                     ".dgml-main-job marker); anything else is refused.")
flags.DEFINE_list("train_args", [], "Extra flags for dgml_tf.train, e.g. epochs=1,steps_per_epoch=5.")

MODEL_NAME = "dgml"


def _stage(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def _run(module: str, *args: str) -> None:
    """Runs ``python -m module args`` and fails loudly with its exit code."""
    cmd = [sys.executable, "-m", module, *args]
    print("$ " + " ".join(cmd), flush=True)
    result = subprocess.run(cmd, check=False)
    if result.returncode != 0:
        raise SystemExit(f"Stage `{module}` failed with exit code {result.returncode}; its output "
                         "is above. Fix the cause and run the main job again: finished stages are "
                         "reused.")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(url: str, process: subprocess.Popen, timeout: float = 180.0) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"The REST service exited with code {process.returncode} at start; "
                             "its log is above.")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"The REST service did not answer {url} within {timeout:.0f} s.")


def _png_bytes(image) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image.squeeze()).save(buffer, format="PNG")
    return buffer.getvalue()


def _raw_pixel_baseline(splits) -> tuple:
    """Cosine nearest neighbours on raw pixels of the test split (the bar to beat): overall
    metrics and per-class rows."""
    import numpy as np

    from dgml_tf.evaluation import evaluate_retrieval, evaluate_retrieval_per_class

    rows = np.asarray([r.source for r in splits.test])
    pixels = splits.arrays[rows].reshape(len(rows), -1).astype(np.float32)
    labels = np.asarray([r.label for r in splits.test])
    return (evaluate_retrieval(pixels, labels, recall_ks=(1, 2, 4, 8), compute_nmi=True),
            evaluate_retrieval_per_class(pixels, labels, recall_ks=(1,)))


def _latest_version(base: str) -> str:
    versions = sorted(int(v) for v in os.listdir(base) if v.isdigit())
    if not versions:
        raise SystemExit(f"No exported version under {base}.")
    return os.path.join(base, str(versions[-1]))


def _index_manifest(index_dir: str) -> dict:
    from dgml_tf.indexing.manifest import read_manifest
    from dgml_tf.indexing.publish import current_version_dir

    return read_manifest(current_version_dir(index_dir))


def _is_served_scann_index(index_dir: str) -> bool:
    """A published ScaNN index whose recall was measured with held-out queries (else rebuilt)."""
    if not os.path.exists(os.path.join(index_dir, "CURRENT")):
        return False
    manifest = _index_manifest(index_dir)
    recall = manifest.get("recall_at_10") or {}
    return manifest.get("backend") == "scann" and recall.get("queries") == "held_out"


def _query_service(splits, url: str, artifacts: dict) -> list:
    """Sends a few test images to the retrieval model and prints their neighbours."""
    import numpy as np

    from serving.client import RetrievalClient

    rng = np.random.default_rng(0)
    picks = rng.choice(len(splits.test), size=FLAGS.num_queries, replace=False)
    client = RetrievalClient(url, f"{MODEL_NAME}_retrieval")
    queries = [splits.test[i] for i in picks]
    images = [_png_bytes(splits.arrays[r.source]) for r in queries]
    # One more than asked: the query itself is in the indexed test split; drop it by id.
    found = client.neighbours(images, k=FLAGS.top_k + 1)
    names = splits.class_names or {}
    rows = []
    for record, neighbours in zip(queries, found):
        others = [n for n in neighbours if n.id != record.item_id][:FLAGS.top_k]
        same = sum(n.label == record.label for n in others)
        label = names.get(record.label, record.label)
        print(f"query {record.item_id} ({label}): {same}/{len(others)} neighbours share its class")
        for n in others:
            print(f"   #{n.rank} {n.id:<14} {names.get(n.label, n.label)!s:<12} score {n.score:.3f}")
        rows.append({"query": record.item_id, "label": int(record.label),
                     "neighbours": [vars(n) for n in others]})
    path = os.path.join(os.path.abspath(FLAGS.output_dir), "rest_queries.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=2)
    artifacts["REST query answers"] = path
    return rows


def _results_table(summary: dict, baseline: dict) -> str:
    keys = [("recall@1", "R@1"), ("recall@2", "R@2"), ("recall@4", "R@4"), ("recall@8", "R@8"),
            ("map@r", "MAP@R"), ("r_precision", "RP"), ("nmi", "NMI")]
    trained = summary["metrics"]["concatenated"]
    lines = ["| embedding | " + " | ".join(k for _, k in keys) + " |",
             "|---|" + "---|" * len(keys)]
    for name, values in (("raw pixels (cosine)", baseline), ("dgml_tf attentive grouping", trained)):
        cells = [f"{100 * values[k]:.1f}" if k in values else "n/a" for k, _ in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _per_class_table(per_class: Mapping[str, Mapping[str, float]],
                     baseline: Mapping[int, Mapping[str, float]],
                     names: Mapping[int, str]) -> str:
    """Per test class: R@1 and MAP@R of raw pixels next to the trained embedding's."""
    lines = ["| class | R@1 raw | R@1 trained | MAP@R raw | MAP@R trained |",
             "|---|---|---|---|---|"]
    for label, raw in baseline.items():
        trained = per_class.get(str(label), {})
        cells = [f"{100 * row[k]:.1f}" if k in row else "n/a"
                 for k in ("recall@1", "map@r") for row in (raw, trained)]
        lines.append(f"| {label} {names.get(label, '')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _set_aside_if_trained_otherwise(out: str, run_dir: str, train_args: list) -> None:
    """Moves ``out`` to ``<out>.previous-<time>`` when its run was trained with other flags
    (e.g. an updated bundled flagfile), so every stage is redone and nothing is deleted."""
    from dgml_tf import flags as dgml_flags

    config_path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(config_path):
        return
    with open(config_path, encoding="utf-8") as handle:
        stored = json.load(handle)
    changed = dgml_flags.changed_training_flags(
        stored, dgml_flags.training_config_from_args(train_args))
    if changed:
        aside = f"{out}.previous-{time.strftime('%Y%m%d-%H%M%S')}"
        os.rename(out, aside)
        print(f"{run_dir} was trained with other flags ({'; '.join(changed)}); moved the old "
              f"outputs to {aside} and starting over.")


MARKER = ".dgml-main-job"  # written into --output_dir when this job creates it


def _remove_fresh(path: str) -> None:
    """``--fresh``: removes ``path`` only if an earlier main job created it, else exits."""
    from dgml_tf.callbacks.atomic import RefusedError, remove_marked_directory

    try:
        if remove_marked_directory(path, MARKER):
            print(f"--fresh: removed {path} (created by an earlier main job).")
    except RefusedError as error:
        raise SystemExit(f"--fresh {error} Move or delete it yourself, or pass an --output_dir "
                         "that the main job created (or a new one).") from None


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # inherited by every stage's process
    from dgml_tf import hardware

    hardware.apply_onednn_default()  # before any TF import; every stage inherits it
    out = os.path.abspath(FLAGS.output_dir)
    if FLAGS.fresh:
        _remove_fresh(out)
    run_dir = os.path.join(out, "run")
    data_args = [f"--data_dir={FLAGS.data_dir}"] if FLAGS.data_dir else []
    train_args = [f"--flagfile={FLAGS.flagfile_name}", f"--output_dir={run_dir}", *data_args,
                  *(f"--{a}" for a in FLAGS.train_args)]
    _set_aside_if_trained_otherwise(out, run_dir, train_args)
    from dgml_tf.callbacks.atomic import create_marked_directory

    create_marked_directory(out, MARKER, "Created by `python -m dgml_tf.main`; its --fresh may "
                            "remove this directory.")
    serving_base = os.path.join(out, "serving")
    index_dir = os.path.join(out, "index")
    explain_dir = os.path.join(out, "explain")
    artifacts: dict[str, str] = {}

    _stage("1/6 train (Fashion-MNIST zero-shot: classes 0-4 train, 5-9 test)")
    summary_path = os.path.join(run_dir, "summary.json")
    if os.path.exists(summary_path):
        print(f"reusing the finished run in {run_dir} (--fresh to retrain)")
    else:
        _run("dgml_tf.train", *train_args)
    artifacts["training run (config, checkpoints, TensorBoard)"] = run_dir
    artifacts["best model"] = os.path.join(run_dir, "best.keras")
    artifacts["test summary"] = summary_path

    _stage("2/6 evaluate on the unseen classes (each group alone too)")
    eval_json = os.path.join(run_dir, "eval_test.md")
    _run("dgml_tf.evaluate", f"--run_dir={run_dir}", "--split=test", "--per_class",
         *data_args)
    if os.path.exists(eval_json):
        artifacts["per-group evaluation table"] = eval_json
    per_class_path = os.path.join(run_dir, "eval_test_per_class.json")
    if os.path.exists(per_class_path):
        artifacts["per-class evaluation table"] = per_class_path.replace(".json", ".md")

    _stage("3/6 interpretation figures")
    if FLAGS.fresh or not os.path.exists(os.path.join(explain_dir, "explain.json")):
        _run("dgml_tf.explain", f"--run_dir={run_dir}", f"--output_dir={explain_dir}",
             *data_args)
    artifacts["attention figures"] = explain_dir

    _stage("4/6 export (TF Serving SavedModel + ONNX) and index the test split")
    embedder_base = os.path.join(serving_base, MODEL_NAME)
    if not (os.path.isdir(embedder_base) and any(v.isdigit() for v in os.listdir(embedder_base))):
        with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as f:
            run_config = json.load(f)
        _run("dgml_tf.export", f"--run_dir={run_dir}", f"--base_dir={serving_base}",
             f"--model_name={MODEL_NAME}", "--onnx", f"--image_size={run_config['image_size']}",
             f"--resize_size={run_config['resize_size']}")
    version_dir = _latest_version(embedder_base)
    artifacts["TF Serving model base (mount at /models)"] = serving_base
    artifacts["embedder SavedModel"] = version_dir
    if not _is_served_scann_index(index_dir):
        # A real ScaNN index even below ScaNN's 20k brute-force guidance (what `auto` would pick):
        # the service path the main job checks is the one big galleries use. choose_scann_params
        # suits 5,000 items: asymmetric hashing over all points, 100 candidates re-scored exactly.
        _run("dgml_tf.index", f"--saved_model={version_dir}", "--dataset=fashion_mnist",
             "--split=test", f"--index_dir={index_dir}", f"--retrieval_base_dir={serving_base}",
             f"--model_name={MODEL_NAME}", "--backend=scann",
             "--store_images",  # the explorer shows neighbours (PNG: 2.5 MB for 5,000 images)
             *([f"--data_root={FLAGS.data_dir}"] if FLAGS.data_dir else []))
    recall = _index_manifest(index_dir)["recall_at_10"]
    print(f"ScaNN index recall@10 vs exact search, {recall['num_queries']} held-out queries "
          f"(searcher over the other {recall['gallery_items']} items): {recall['value']:.4f}")
    artifacts["retrieval index"] = index_dir

    _stage("5/6 REST service: start, query, stop")
    import pipelines

    splits = pipelines.load_dataset("fashion_mnist", FLAGS.data_dir)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = os.path.join(out, "server.log")
    with open(log_path, "w", encoding="utf-8") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "serving.server", f"--model_name={MODEL_NAME}",
             f"--model_base_path={embedder_base}", f"--index_dir={index_dir}",
             "--host=127.0.0.1", f"--port={port}"], stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_ready(f"{url}/v1/models/{MODEL_NAME}_retrieval", server)
            print(f"service ready at {url} (log: {log_path})")
            # The retrieval explorer page (serving/explorer/); this service stops after the
            # queries below, so the line also says how to keep one running.
            print(f"explorer: {url}/explorer/ while this service runs; to keep one: python -m "
                  f"serving.server --model_name={MODEL_NAME} --model_base_path={embedder_base} "
                  f"--index_dir={index_dir}, then open http://127.0.0.1:8501/explorer/")
            _query_service(splits, url, artifacts)
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
            print("service stopped")
    artifacts["server log"] = log_path

    _stage("6/6 results")
    with open(summary_path, encoding="utf-8") as f:
        summary = json.load(f)
    baseline, baseline_per_class = _raw_pixel_baseline(splits)
    table = _results_table(summary, baseline)
    if os.path.exists(per_class_path):
        with open(per_class_path, encoding="utf-8") as f:
            per_class = json.load(f)
        table += "\n\nPer test class:\n\n" + _per_class_table(
            per_class, baseline_per_class, splits.class_names or {})
    print("Fashion-MNIST zero-shot, test = t10k classes 5-9 (5,000 images), cosine retrieval:")
    print(table)
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    artifacts["results table"] = os.path.join(out, "results.md")
    print("\nArtifacts:")
    width = max(len(k) for k in artifacts)
    for name, path in artifacts.items():
        print(f"  {name:<{width}}  {path}")


def run(argv: Optional[Sequence[str]] = None) -> None:
    app.run(main, argv=argv)


if __name__ == "__main__":
    run()
