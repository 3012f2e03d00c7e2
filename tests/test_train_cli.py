"""End to end: the train CLI on a tiny Fashion-MNIST config, then the evaluate CLI on its run.

One subprocess each (the CLIs parse global absl flags), 16 px images, a 3-stage small CNN,
2 epochs x 3 steps, evaluation on the first 20 images per class.
"""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fashion_mnist_available() -> bool:
    from pipelines.fashion_mnist import DEFAULT_ROOTS

    return any(os.path.isdir(os.path.expanduser(root)) for root in DEFAULT_ROOTS)


pytestmark = pytest.mark.skipif(not _fashion_mnist_available(),
                                reason="Fashion-MNIST not installed (apt dataset-fashion-mnist)")

TINY = ["--flagfile=fashion_mnist.flags", "--val_classes=2", "--image_size=16",
        "--resize_size=16", "--epochs=2",
        "--steps_per_epoch=3", "--eval_every=1", "--num_groups=2", "--embedding_dim=16",
        "--classes_per_batch=3", "--images_per_class=4", "--eval_max_per_class=20",
        "--eval_batch_size=64", "--projector_max_points=30", "--num_attention_images=2",
        "--lr_decay_epochs=1", "--verbose=2"]


def run_cli(module, args, cwd, timeout=400):
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2",
           "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("cli")
    out = str(work / "run")
    # Run from an unrelated directory: the bundled flagfile must be found by bare name.
    result = run_cli("dgml_tf.train", TINY + [f"--output_dir={out}"], cwd=str(work))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return out, result


def test_run_writes_summary_config_model_and_logs(tiny_run):
    out, result = tiny_run
    for name in ("summary.json", "summary.md", "config.json", "best.keras",
                 "checkpoints/latest.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["epochs"] == 2 and config["dataset"] == "fashion_mnist"
    assert config["num_groups"] == 2 and config["backbone"] == "small_cnn"

    summary = json.load(open(os.path.join(out, "summary.json")))
    metrics = summary["metrics"]
    assert sorted(metrics) == ["concatenated", "group_0", "group_1"]
    for row in metrics.values():
        for key in ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision",
                    "nmi"):
            assert 0.0 <= row[key] <= 1.0
        # Recall@K can only grow with K; MAP@R never exceeds R-precision's ceiling of 1.
        assert row["recall@1"] <= row["recall@2"] <= row["recall@4"] <= row["recall@8"]
        assert row["num_queries"] == 5 * 20  # test classes 5-9, 20 images each
    assert summary["best"]["metric"] == "map@r" and summary["best"]["epoch"] in (0, 1)
    # The printed table is the saved one.
    assert open(os.path.join(out, "summary.md")).read().strip() in result.stdout


def test_tensorboard_has_losses_rates_metrics_images_and_projector(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = tiny_run
    tags = {}
    for run in ("train", "validation"):
        accumulator = EventAccumulator(os.path.join(out, "tensorboard", run),
                                       size_guidance={"tensors": 0})
        accumulator.Reload()
        tags[run] = set(accumulator.Tags()["tensors"])
    assert {"epoch_embedding_loss", "epoch_diversity_loss", "epoch_loss"} <= tags["train"]
    assert {"learning_rate/backbone", "learning_rate/queries", "learning_rate/loss"} <= tags[
        "train"]
    assert {"attention/group_0", "attention/group_1"} <= tags["train"]
    assert "epoch_map@r" in tags["validation"]
    projector = os.path.join(out, "tensorboard", "projector")
    assert len(open(os.path.join(projector, "metadata.tsv")).read().splitlines()) == 31
    assert os.path.isfile(os.path.join(projector, "sprite.png"))


def test_learning_rate_steps_down_after_decay_epoch(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    import tensorflow as tf

    out, _ = tiny_run
    accumulator = EventAccumulator(os.path.join(out, "tensorboard", "train"),
                                   size_guidance={"tensors": 0})
    accumulator.Reload()
    rates = [float(tf.make_ndarray(e.tensor_proto))
             for e in accumulator.Tensors("learning_rate/backbone")]
    # --lr_backbone from the flagfile; --lr_decay_epochs=1 with factor 0.3: after epoch 1 the
    # *next* step's rate is 0.3 x lr (logged at the end of epoch index 0 and 1).
    config = json.load(open(os.path.join(out, "config.json")))
    lr, decayed = config["lr_backbone"], 0.3 * config["lr_backbone"]
    assert np.allclose(rates, [decayed, decayed]) or np.allclose(rates, [lr, decayed]), rates


def test_evaluate_cli_reproduces_the_summary(tiny_run, tmp_path):
    out, _ = tiny_run
    result = run_cli("dgml_tf.evaluate", [f"--run_dir={out}", "--split=test", "--per_class"],
                     cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = json.load(open(os.path.join(out, "eval_test.json")))["metrics"]
    trained = json.load(open(os.path.join(out, "summary.json")))["metrics"]
    for row in ("concatenated", "group_0", "group_1"):
        for key in ("recall@1", "map@r", "r_precision"):
            assert evaluated[row][key] == pytest.approx(trained[row][key], abs=1e-6)
    assert "| concatenated |" in result.stdout
    # --per_class: one row per test class (5-9, named), averaging back to the overall metrics.
    per_class = json.load(open(os.path.join(out, "eval_test_per_class.json")))
    assert sorted(per_class) == ["5", "6", "7", "8", "9"]
    counts = np.array([row["num_queries"] for row in per_class.values()])
    assert counts.sum() == evaluated["concatenated"]["num_queries"]
    for key in ("recall@1", "map@r"):
        weighted = sum(row[key] * n for row, n in zip(per_class.values(), counts)) / counts.sum()
        assert weighted == pytest.approx(evaluated["concatenated"][key], abs=1e-9)
    assert "| 5 Sandal |" in result.stdout


def test_unknown_flagfile_lists_bundled_ones(tmp_path):
    result = run_cli("dgml_tf.train", ["--flagfile=nope.flags"], cwd=str(tmp_path), timeout=60)
    assert result.returncode == 2
    assert "cub" in result.stderr and "fashion_mnist" in result.stderr
    assert not glob.glob(str(tmp_path / "runs"))


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_worker_cli_run_equals_the_single_process_run(tmp_path):
    """`python -m dgml_tf.train` under TF_CONFIG (2 local workers, MultiWorkerMirroredStrategy
    through the custom loop) ends with the weights of a one-process run on the same global
    batches; only the chief writes the run directory."""
    from dgml_tf.models.saving import load_keras_model as load_model  # registers our layers

    flags = ["--flagfile=fashion_mnist.flags", "--val_classes=0", "--image_size=16",
             "--resize_size=16", "--epochs=2", "--steps_per_epoch=3", "--num_groups=2",
             "--embedding_dim=16", "--classes_per_batch=4", "--images_per_class=2",
             "--eval_max_per_class=10", "--projector_max_points=0", "--num_attention_images=0",
             # Frozen BN statistics: per-replica batch statistics would differ by design.
             "--freeze_bn", "--verbose=0",
             # Adam steps ~lr whatever the gradient's size, so a weight whose gradient is ~0
             # moves by +-lr on reduction-order noise; at the flagfile's lr 3e-3 with the
             # multi-similarity loss 2 of 147k weights went 1.3e-4 apart. Pin the margin loss at
             # lr 1e-3 (the loss math under replicas: the MirroredStrategy tests, exactly).
             "--loss=margin", "--lambda_div=0.02", "--lr_backbone=1e-3", "--lr_key_value=1e-3",
             "--lr_queries=1e-3"]
    single = str(tmp_path / "single")
    result = run_cli("dgml_tf.train", flags + [f"--output_dir={single}"], cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]

    multi = str(tmp_path / "multi")
    hosts = [f"localhost:{_free_port()}", f"localhost:{_free_port()}"]
    base_env = {k: v for k, v in os.environ.items()
                if k.lower() not in ("http_proxy", "https_proxy", "grpc_proxy", "all_proxy")}
    procs = []
    for index in range(2):
        env = {**base_env, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2",
               "CUDA_VISIBLE_DEVICES": "", "NO_PROXY": "localhost,127.0.0.1",
               "TF_CONFIG": json.dumps({"cluster": {"worker": hosts},
                                        "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "dgml_tf.train", *flags, f"--output_dir={multi}"],
            cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True))
    try:
        logs = [p.communicate(timeout=400)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]

    summary = json.load(open(os.path.join(multi, "summary.json")))
    assert summary["training"]["replicas"] == 2
    assert not os.path.exists(os.path.join(multi, "workers"))  # worker scratch removed
    one = load_model(os.path.join(single, "best.keras"))
    two = load_model(os.path.join(multi, "best.keras"))
    # Adam moves a weight by about lr = 1e-3 per step whatever the gradient's size, so a
    # different global batch shows up far above this tolerance; reduction order stays below.
    for w1, w2 in zip(one.get_weights(), two.get_weights()):
        np.testing.assert_allclose(w2, w1, rtol=1e-4, atol=1e-4)
    assert summary["metrics"]["concatenated"]["recall@1"] == pytest.approx(
        json.load(open(os.path.join(single, "summary.json")))["metrics"]["concatenated"][
            "recall@1"])


def test_resuming_with_other_flags_is_refused_and_leaves_the_run_intact(tiny_run, tmp_path):
    out, _ = tiny_run
    with open(os.path.join(out, "best.keras"), "rb") as handle:
        before = handle.read()
    changed = [a for a in TINY if not a.startswith("--epochs")] + ["--epochs=3", "--verbose=0"]
    result = run_cli("dgml_tf.train", changed + [f"--output_dir={out}"], cwd=str(tmp_path))
    assert result.returncode == 1
    assert "holds a run trained with other flags" in result.stderr
    assert "--epochs: 2 -> 3" in result.stderr and "--noresume" in result.stderr
    with open(os.path.join(out, "best.keras"), "rb") as handle:
        assert handle.read() == before
    assert json.load(open(os.path.join(out, "config.json")))["epochs"] == 2


def _bytes(path):
    with open(path, "rb") as handle:
        return handle.read()


def _tree(path):
    """Relative path -> bytes of every file under ``path``."""
    files = {}
    for root, _, names in os.walk(path):
        for name in names:
            full = os.path.join(root, name)
            files[os.path.relpath(full, path)] = _bytes(full)
    return files


@pytest.mark.parametrize("bad", ["missing", "empty"])
def test_noresume_with_a_wrong_data_dir_leaves_the_finished_run_intact(bad, tiny_run, tmp_path):
    """A typo in --data_dir after a finished run: the command fails before touching the run."""
    out, _ = tiny_run
    before = _tree(out)
    data_dir = tmp_path / "fashion"  # "missing": never created; "empty": no IDX files in it
    if bad == "empty":
        data_dir.mkdir()
    result = run_cli("dgml_tf.train", TINY + [f"--output_dir={out}", "--noresume",
                                              f"--data_dir={data_dir}"], cwd=str(tmp_path))
    assert result.returncode != 0
    assert str(data_dir) in result.stderr
    assert _tree(out) == before  # best.keras, checkpoints, config: byte-identical
    assert not os.path.exists(os.path.join(out, "set_aside"))


def test_noresume_sets_the_previous_run_aside_and_deletes_nothing(tiny_run, tmp_path):
    import shutil

    out = str(tmp_path / "run")
    shutil.copytree(tiny_run[0], out)
    before = _tree(out)
    changed = [a for a in TINY if not a.startswith(("--epochs", "--verbose"))]
    result = run_cli("dgml_tf.train", changed + ["--epochs=1", "--verbose=0", "--noresume",
                                                 f"--output_dir={out}"], cwd=str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    (aside,) = [line.split(" to ", 1)[1].split(" (nothing deleted)")[0]
                for line in result.stdout.splitlines() if line.startswith("--noresume: moved")]
    assert os.path.dirname(aside) == os.path.join(out, "set_aside")
    # Every file of the previous run is in the set-aside folder, byte for byte.
    assert _tree(aside) == before
    assert json.load(open(os.path.join(aside, "config.json")))["epochs"] == 2
    # The new run starts from scratch in the same directory.
    assert json.load(open(os.path.join(out, "config.json")))["epochs"] == 1
    assert json.load(open(os.path.join(out, "checkpoints", "latest.json")))["epoch"] == 1
    assert "Resuming" not in result.stdout
