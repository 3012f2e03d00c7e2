"""Preemption safety: ``kill -9`` during an epoch, rerun the same command, get the same weights.

Run A trains 3 epochs uninterrupted. Run B is started with the same flags, SIGKILLed once its
first epoch checkpoint exists (i.e. inside epoch 2), then the same command is run again: it
resumes from the epoch-1 checkpoint (stream of epoch e re-seeded from (seed, e), mining keyed on
the optimizer step) and must end with bitwise the same model and optimizer variables as A.
"""

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np

from test_train_cli import REPO, pytestmark  # noqa: F401 (same data and skip reason)

ARGS = ["--flagfile=fashion_mnist.flags", "--val_classes=2", "--image_size=16",
        "--resize_size=16", "--epochs=3",
        "--steps_per_epoch=12", "--eval_every=10", "--num_groups=2", "--embedding_dim=16",
        "--classes_per_batch=3", "--images_per_class=4", "--eval_max_per_class=10",
        "--projector_max_points=0", "--num_attention_images=0", "--lr_decay_epochs=2",
        "--verbose=0"]
ENV = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def _command(out):
    return [sys.executable, "-m", "dgml_tf.train", *ARGS, f"--output_dir={out}"]


def _run(out, cwd, timeout=400):
    result = subprocess.run(_command(out), cwd=cwd, env=ENV, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def _final_variables(out):
    pointer = json.load(open(os.path.join(out, "checkpoints", "latest.json")))
    assert pointer["epoch"] == 3
    values = {}
    with h5py.File(os.path.join(out, "checkpoints", pointer["weights"]), "r") as handle:
        handle.visititems(lambda name, obj: values.__setitem__(name, np.array(obj))
                          if isinstance(obj, h5py.Dataset) else None)
    return values


def _completed_epochs(out):
    try:
        return json.load(open(os.path.join(out, "checkpoints", "latest.json")))["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


def test_kill_9_mid_epoch_then_rerun_equals_uninterrupted(tmp_path):
    uninterrupted = str(tmp_path / "a")
    _run(uninterrupted, str(tmp_path))

    resumed = str(tmp_path / "b")
    process = subprocess.Popen(_command(resumed), cwd=str(tmp_path), env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while _completed_epochs(resumed) < 1:
            assert process.poll() is None, "run B ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.2)
        time.sleep(0.5)  # into epoch 2 (12 steps), well before its end
        assert _completed_epochs(resumed) == 1, "epoch 2 finished before the kill"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    result = _run(resumed, str(tmp_path))
    assert "Resuming from" in result.stdout and "1 of 3 epochs done" in result.stdout

    a, b = _final_variables(uninterrupted), _final_variables(resumed)
    assert sorted(a) == sorted(b) and len(a) > 10
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert json.load(open(os.path.join(resumed, "summary.json")))["metrics"] == json.load(
        open(os.path.join(uninterrupted, "summary.json")))["metrics"]


def test_restore_then_continue_equals_continuing_in_process(tmp_path):
    """The checkpoint holds every variable a step depends on: restoring it into a freshly built
    model and taking one more step gives bitwise the same variables as stepping the original."""
    from absl import flags as absl_flags

    from dgml_tf import callbacks as cb
    from dgml_tf import flagfiles
    from dgml_tf import flags as dgml_flags
    from dgml_tf import train
    from dgml_tf.training import seeding

    values = absl_flags.FlagValues()
    for define in (dgml_flags.define_data_flags, dgml_flags.define_model_flags,
                   dgml_flags.define_training_flags, dgml_flags.define_output_flags):
        define(values)
    values(flagfiles.resolve_flagfile_args(["t", *ARGS]))
    config = values.flag_values_dict()
    seeding.set_global_seed(0, op_determinism=True)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (12, 16, 16, 3)).astype("float32")
    labels = np.repeat(np.arange(3), 4)

    _, original = train.build_training_model(config, num_classes=3, steps_per_epoch=12)
    original.fit(images, labels, batch_size=12, epochs=2, verbose=0)
    checkpoint = cb.EpochCheckpoint(str(tmp_path))
    checkpoint.set_model(original)
    checkpoint.save(2)
    _, restored = train.build_training_model(config, num_classes=3, steps_per_epoch=12)
    cb.restore_variables(restored, cb.load_training_state(str(tmp_path)))

    for model in (original, restored):
        model.fit(images, labels, batch_size=12, epochs=1, verbose=0)
    for a, b in zip(original.weights + original.optimizer.variables,
                    restored.weights + restored.optimizer.variables):
        assert a.path == b.path
        np.testing.assert_array_equal(np.array(a), np.array(b), err_msg=a.path)
