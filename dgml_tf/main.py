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

import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

from dgml_tf.run_dir import RunDir
from serving.ports import free_port

MODEL_NAME = "dgml"
MARKER = ".dgml-main-job"  # written into --output_dir when this job creates it


def define_flags(values) -> None:
    """The main job's flags (in the private FlagValues ``values``)."""
    from absl import flags

    flags.DEFINE_string("output_dir", "outputs/main", "Where every artifact goes.",
                        flag_values=values)
    flags.DEFINE_string("flagfile_name", "fashion_mnist.flags", "Bundled training flagfile.",
                        flag_values=values)
    flags.DEFINE_string("data_dir", None, "Fashion-MNIST IDX folder (default: the Debian "
                        "package's).", flag_values=values)
    flags.DEFINE_integer("num_queries", 4, "Test images sent to the REST service.",
                         flag_values=values)
    flags.DEFINE_integer("top_k", 5, "Neighbours printed per query.", flag_values=values)
    flags.DEFINE_boolean("fresh", False, "Redo every stage even if its output exists: removes "
                         "--output_dir first, but only a directory this job created (it holds "
                         f"the {MARKER} marker); anything else is refused.", flag_values=values)
    flags.DEFINE_list("train_args", [], "Extra flags for dgml_tf.train, e.g. "
                      "epochs=1,steps_per_epoch=5.", flag_values=values)


@dataclasses.dataclass
class Job:
    """Where the main job's stages read and write, and what it reports at the end.

    Args:
        out: the absolute ``--output_dir``.
        data_dir: ``--data_dir`` (None: the dataset's default location).
        fresh: ``--fresh`` (redo the stages).
    """

    out: str
    data_dir: Optional[str] = None
    fresh: bool = False
    artifacts: Dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def run(self) -> RunDir:
        return RunDir(os.path.join(self.out, "run"))

    @property
    def serving_base(self) -> str:
        return os.path.join(self.out, "serving")

    @property
    def embedder_base(self) -> str:
        return os.path.join(self.serving_base, MODEL_NAME)

    @property
    def index_dir(self) -> str:
        return os.path.join(self.out, "index")

    @property
    def explain_dir(self) -> str:
        return os.path.join(self.out, "explain")

    def data_args(self) -> List[str]:
        """``--data_dir`` for the stages that read the dataset (none: their default)."""
        return [f"--data_dir={self.data_dir}"] if self.data_dir else []


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


def _index_manifest(index_dir: str) -> dict:
    from dgml_tf.index.manifest import read_manifest
    from dgml_tf.index.publish import current_version_dir

    return read_manifest(current_version_dir(index_dir))


def _is_served_scann_index(index_dir: str) -> bool:
    """A published ScaNN index whose recall was measured with held-out queries (else rebuilt)."""
    if not os.path.exists(os.path.join(index_dir, "CURRENT")):
        return False
    manifest = _index_manifest(index_dir)
    recall = manifest.get("recall_at_10") or {}
    return manifest.get("backend") == "scann" and recall.get("queries") == "held_out"


def _set_aside_if_trained_otherwise(out: str, run: RunDir, train_args: list) -> None:
    """Moves ``out`` to ``<out>.previous-<time>`` when its run was trained with other flags
    (e.g. an updated bundled flagfile), so every stage is redone and nothing is deleted."""
    from dgml_tf import flags as dgml_flags

    if not run.has_config():
        return
    changed = dgml_flags.changed_training_flags(
        run.read_config(), dgml_flags.training_config_from_args(train_args))
    if changed:
        aside = f"{out}.previous-{time.strftime('%Y%m%d-%H%M%S')}"
        os.rename(out, aside)
        print(f"{run.path} was trained with other flags ({'; '.join(changed)}); moved the old "
              f"outputs to {aside} and starting over.")


def _remove_fresh(path: str) -> None:
    """``--fresh``: removes ``path`` only if an earlier main job created it, else exits."""
    from dgml_tf.atomic import RefusedError, remove_marked_directory

    try:
        if remove_marked_directory(path, MARKER):
            print(f"--fresh: removed {path} (created by an earlier main job).")
    except RefusedError as error:
        raise SystemExit(f"--fresh {error} Move or delete it yourself, or pass an --output_dir "
                         "that the main job created (or a new one).") from None


def prepare(job: Job, train_args: List[str]) -> None:
    """Removes (``--fresh``) or sets aside a stale ``job.out``, then creates and marks it."""
    from dgml_tf.atomic import create_marked_directory

    if job.fresh:
        _remove_fresh(job.out)
    _set_aside_if_trained_otherwise(job.out, job.run, train_args)
    create_marked_directory(job.out, MARKER, "Created by `python -m dgml_tf.main`; its --fresh "
                            "may remove this directory.")


def train_stage(job: Job, train_args: List[str]) -> None:
    """1/6: trains the run (reused when its test summary exists)."""
    _stage("1/6 train (Fashion-MNIST zero-shot: classes 0-4 train, 5-9 test)")
    run = job.run
    if os.path.exists(run.summary_path):
        print(f"reusing the finished run in {run.path} (--fresh to retrain)")
    else:
        _run("dgml_tf.train", *train_args)
    job.artifacts["training run (config, checkpoints, TensorBoard)"] = run.path
    job.artifacts["best model"] = run.best_model_path
    job.artifacts["test summary"] = run.summary_path


def evaluate_stage(job: Job) -> None:
    """2/6: evaluates the run on the test split, per group and per class."""
    _stage("2/6 evaluate on the unseen classes (each group alone too)")
    run = job.run
    _run("dgml_tf.evaluate", f"--run_dir={run.path}", "--split=test", "--per_class",
         *job.data_args())
    table_md = run.eval_paths("test")[1]
    if os.path.exists(table_md):
        job.artifacts["per-group evaluation table"] = table_md
    per_class_json, per_class_md = run.eval_paths("test", per_class=True)
    if os.path.exists(per_class_json):
        job.artifacts["per-class evaluation table"] = per_class_md


def explain_stage(job: Job) -> None:
    """3/6: the interpretation figures (reused unless ``--fresh``)."""
    _stage("3/6 interpretation figures")
    if job.fresh or not os.path.exists(os.path.join(job.explain_dir, "explain.json")):
        _run("dgml_tf.explain", f"--run_dir={job.run.path}", f"--output_dir={job.explain_dir}",
             *job.data_args())
    job.artifacts["attention figures"] = job.explain_dir


def export_and_index_stage(job: Job) -> None:
    """4/6: exports the embedder (once) and indexes the test split with ScaNN."""
    from dgml_tf.export.tf_serving_layout import existing_versions, latest_version_dir

    _stage("4/6 export (TF Serving SavedModel + ONNX) and index the test split")
    if not existing_versions(job.embedder_base):
        run_config = job.run.read_config()
        _run("dgml_tf.export", f"--run_dir={job.run.path}", f"--base_dir={job.serving_base}",
             f"--model_name={MODEL_NAME}", "--onnx", f"--image_size={run_config['image_size']}",
             f"--resize_size={run_config['resize_size']}")
    try:
        version_dir = str(latest_version_dir(job.embedder_base))
    except FileNotFoundError as error:
        raise SystemExit(str(error)) from None
    job.artifacts["TF Serving model base (mount at /models)"] = job.serving_base
    job.artifacts["embedder SavedModel"] = version_dir
    if not _is_served_scann_index(job.index_dir):
        # A real ScaNN index even below ScaNN's 20k brute-force guidance (what `auto` would pick):
        # the service path the main job checks is the one big galleries use. choose_scann_params
        # suits 5,000 items: asymmetric hashing over all points, 100 candidates re-scored exactly.
        _run("dgml_tf.index", f"--saved_model={version_dir}", "--dataset=fashion_mnist",
             "--split=test", f"--index_dir={job.index_dir}",
             f"--retrieval_base_dir={job.serving_base}", f"--model_name={MODEL_NAME}",
             "--backend=scann",
             "--store_images",  # the explorer shows neighbours (PNG: 2.5 MB for 5,000 images)
             *job.data_args())
    recall = _index_manifest(job.index_dir)["recall_at_10"]
    print(f"ScaNN index recall@10 vs exact search, {recall['num_queries']} held-out queries "
          f"(searcher over the other {recall['gallery_items']} items): {recall['value']:.4f}")
    job.artifacts["retrieval index"] = job.index_dir


def query_service(job: Job, splits, url: str, num_queries: int, top_k: int) -> list:
    """Sends ``num_queries`` test images to the retrieval model and prints their neighbours."""
    import numpy as np

    from dgml_tf.atomic import write_json_atomically
    from dgml_tf.index.gallery import encode_png
    from serving.client import RetrievalClient

    rng = np.random.default_rng(0)
    picks = rng.choice(len(splits.test), size=num_queries, replace=False)
    client = RetrievalClient(url, f"{MODEL_NAME}_retrieval")
    queries = [splits.test[i] for i in picks]
    images = [encode_png(splits.arrays[r.source]) for r in queries]
    # One more than asked: the query itself is in the indexed test split; drop it by id.
    found = client.neighbours(images, k=top_k + 1)
    names = splits.class_names or {}
    rows = []
    for record, neighbours in zip(queries, found, strict=True):
        others = [n for n in neighbours if n.id != record.item_id][:top_k]
        same = sum(n.label == record.label for n in others)
        label = names.get(record.label, record.label)
        print(f"query {record.item_id} ({label}): {same}/{len(others)} neighbours share its class")
        for n in others:
            name = names.get(n.label, n.label)
            print(f"   #{n.rank} {n.id:<14} {name!s:<12} score {n.score:.3f}")
        rows.append({"query": record.item_id, "label": int(record.label),
                     "neighbours": [vars(n) for n in others]})
    path = os.path.join(job.out, "rest_queries.json")
    write_json_atomically(path, rows)
    job.artifacts["REST query answers"] = path
    return rows


def serve_stage(job: Job, num_queries: int, top_k: int):
    """5/6: starts ``serving.server`` on a free port, queries it, stops it; returns the
    dataset splits it queried with."""
    import pipelines

    _stage("5/6 REST service: start, query, stop")
    splits = pipelines.load_dataset("fashion_mnist", job.data_dir)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = os.path.join(job.out, "server.log")
    with open(log_path, "w", encoding="utf-8") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "serving.server", f"--model_name={MODEL_NAME}",
             f"--model_base_path={job.embedder_base}", f"--index_dir={job.index_dir}",
             "--host=127.0.0.1", f"--port={port}"], stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_ready(f"{url}/v1/models/{MODEL_NAME}_retrieval", server)
            print(f"service ready at {url} (log: {log_path})")
            # The retrieval explorer page (serving/explorer/); this service stops after the
            # queries below, so the line also says how to keep one running.
            print(f"explorer: {url}/explorer/ while this service runs; to keep one: python -m "
                  f"serving.server --model_name={MODEL_NAME} "
                  f"--model_base_path={job.embedder_base} --index_dir={job.index_dir}, then "
                  "open http://127.0.0.1:8501/explorer/")
            query_service(job, splits, url, num_queries, top_k)
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
            print("service stopped")
    job.artifacts["server log"] = log_path
    return splits


def results_stage(job: Job, splits) -> str:
    """6/6: the trained embedding next to the raw-pixel baseline; returns the table."""
    from dgml_tf.atomic import write_text_atomically
    from dgml_tf.evaluate.baselines import (format_comparison_table,
                                            format_per_class_comparison, raw_pixel_baseline)

    _stage("6/6 results")
    run = job.run
    with open(run.summary_path, encoding="utf-8") as f:
        summary = json.load(f)
    baseline, baseline_per_class = raw_pixel_baseline(splits)
    trained = summary["metrics"]["concatenated"]
    table = format_comparison_table({"raw pixels (cosine)": baseline,
                                     "dgml_tf attentive grouping": trained})
    per_class_path = run.eval_paths("test", per_class=True)[0]
    if os.path.exists(per_class_path):
        with open(per_class_path, encoding="utf-8") as f:
            per_class = json.load(f)
        table += "\n\nPer test class:\n\n" + format_per_class_comparison(
            per_class, baseline_per_class, splits.class_names or {})
    print("Fashion-MNIST zero-shot, test = t10k classes 5-9 (5,000 images), cosine retrieval:")
    print(table)
    results_path = os.path.join(job.out, "results.md")
    write_text_atomically(results_path, table + "\n")
    job.artifacts["results table"] = results_path
    return table


def _print_artifacts(artifacts: Dict[str, str]) -> None:
    print("\nArtifacts:")
    width = max(len(k) for k in artifacts)
    for name, path in artifacts.items():
        print(f"  {name:<{width}}  {path}")


def main(argv: Sequence[str], values) -> int:
    """Runs the six stages with the parsed flags ``values``; returns the exit code."""
    if len(argv) > 1:
        raise SystemExit(f"Unexpected arguments: {argv[1:]}\nRun with --help for the flags.")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # inherited by every stage's process
    from dgml_tf import hardware

    hardware.apply_onednn_default()  # before any TF import; every stage inherits it
    job = Job(out=os.path.abspath(values.output_dir), data_dir=values.data_dir,
              fresh=values.fresh)
    train_args = [f"--flagfile={values.flagfile_name}", f"--output_dir={job.run.path}",
                  *job.data_args(), *(f"--{a}" for a in values.train_args)]
    prepare(job, train_args)
    train_stage(job, train_args)
    evaluate_stage(job)
    explain_stage(job)
    export_and_index_stage(job)
    splits = serve_stage(job, values.num_queries, values.top_k)
    results_stage(job, splits)
    _print_artifacts(job.artifacts)
    return 0


def run(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m dgml_tf.main``: parses ``argv`` (``sys.argv`` when None) and runs the job."""
    from dgml_tf.cli import run_cli

    run_cli(argv, define_flags, main, __doc__)


if __name__ == "__main__":
    run()
