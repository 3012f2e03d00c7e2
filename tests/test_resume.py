"""Preemption safety: ``kill -9`` during an epoch, rerun the same command, get the same weights.

Run A trains 3 epochs uninterrupted. Run B is started with the same flags and a test-only pause
(``DGML_TEST_PAUSE_AT_STEP``): after optimizer step 18 (step 6 of epoch 2) it writes a marker
file and waits; the test SIGKILLs it as soon as the marker exists, so the kill lands at exactly
that step on any machine. The same command is run again: it resumes from the epoch-1 checkpoint
(stream of epoch e re-seeded from (seed, e), mining keyed on the optimizer step) and must end
with bitwise the same model and optimizer variables as A. Both runs use the CLI's defaults
(oneDNN on, op determinism on for CPU), with ``TF_ENABLE_ONEDNN_OPTS`` unset.

A damaged newest checkpoint (truncated weights file) is detected by its checksum: the rerun says
so, resumes from the one before and still ends bitwise equal to A; stale temporary files of a
killed save are removed, other files are not.
"""

import json
import os
import shutil
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest

from test_train_cli import REPO, pytestmark  # noqa: F401 (same data and skip reason)

ARGS = ["--flagfile=fashion_mnist.flags", "--val_classes=2", "--image_size=16",
        "--resize_size=16", "--epochs=3",
        "--steps_per_epoch=12", "--eval_every=10", "--num_groups=2", "--embedding_dim=16",
        "--classes_per_batch=3", "--images_per_class=4", "--eval_max_per_class=10",
        "--projector_max_points=0", "--num_attention_images=0", "--lr_decay_epochs=2",
        "--verbose=0"]
# The CLI's own oneDNN default must apply: no TF_ENABLE_ONEDNN_OPTS from the caller.
ENV = {**{k: v for k, v in os.environ.items()
          if k not in ("TF_ENABLE_ONEDNN_OPTS", "DGML_ONEDNN_DEFAULTED",
                       "DGML_TEST_PAUSE_AT_STEP")},
       "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
KILL_STEP = 18  # step 6 of the 12 of epoch 2


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


def _assert_same_run(a_dir, b_dir):
    a, b = _final_variables(a_dir), _final_variables(b_dir)
    assert sorted(a) == sorted(b) and len(a) > 10
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert json.load(open(os.path.join(b_dir, "summary.json")))["metrics"] == json.load(
        open(os.path.join(a_dir, "summary.json")))["metrics"]


def _kill_at_reported_step(out, cwd, step):
    """Starts a run that pauses after ``step``; SIGKILLs it once it reports the pause."""
    marker = os.path.join(cwd, f"paused-{os.path.basename(out)}")
    env = {**ENV, "DGML_TEST_PAUSE_AT_STEP": f"{step}:{marker}"}
    process = subprocess.Popen(_command(out), cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        while not os.path.exists(marker):
            try:
                process.wait(timeout=0.1)  # a liveness check, not a timing assumption
            except subprocess.TimeoutExpired:
                continue
            raise AssertionError("the run ended before reaching the pause: "
                                 + process.stderr.read()[-3000:])
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        process.stderr.close()
    assert open(marker).read().strip() == str(step)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Run A: the same command, never interrupted."""
    work = tmp_path_factory.mktemp("uninterrupted")
    out = str(work / "a")
    _run(out, str(work))
    return out


def test_kill_9_at_a_reported_step_then_rerun_equals_uninterrupted(tmp_path, uninterrupted):
    config = json.load(open(os.path.join(uninterrupted, "config.json")))
    # The defaults under test: oneDNN chosen by the CLI, determinism on (CPU), float32 here.
    assert config["runtime"]["onednn"] == {"TF_ENABLE_ONEDNN_OPTS": "1", "source": "default",
                                           "active": True}
    assert config["runtime"]["deterministic"] is True

    resumed = str(tmp_path / "b")
    _kill_at_reported_step(resumed, str(tmp_path), KILL_STEP)
    assert json.load(open(os.path.join(resumed, "checkpoints", "latest.json")))["epoch"] == 1

    result = _run(resumed, str(tmp_path))
    assert "Resuming from" in result.stdout and "1 of 3 epochs done" in result.stdout
    _assert_same_run(uninterrupted, resumed)


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, uninterrupted):
    damaged = str(tmp_path / "c")
    shutil.copytree(uninterrupted, damaged)
    checkpoints = os.path.join(damaged, "checkpoints")
    # The last two checkpoints are kept; older ones are gone.
    assert sorted(n for n in os.listdir(checkpoints) if n.endswith(".weights.h5")) == [
        "epoch-0002.weights.h5", "epoch-0003.weights.h5"]
    newest = os.path.join(checkpoints, "epoch-0003.weights.h5")
    with open(newest, "r+b") as handle:
        handle.truncate(os.path.getsize(newest) // 2)
    # What a save killed half way leaves behind (a dead writer's pid), and look-alikes of ours.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = os.path.join(checkpoints, f".tmp-{dead.pid}-epoch-0004.weights.h5")
    stale_model = os.path.join(damaged, f".tmp-{dead.pid}-best.keras")
    others = [os.path.join(checkpoints, ".tmp-notes.txt"), os.path.join(damaged, "my.tmp-1-x")]
    for path in [stale, stale_model, *others]:
        open(path, "w").write("partial")

    result = _run(damaged, str(tmp_path))
    assert "epoch-0003.weights.h5 (epoch 3)" in result.stdout
    assert "Falling back to the previous checkpoint" in result.stdout
    assert "2 of 3 epochs done" in result.stdout
    assert not os.path.exists(stale) and not os.path.exists(stale_model)
    assert all(os.path.exists(p) for p in others)
    _assert_same_run(uninterrupted, damaged)


def test_restore_then_continue_equals_continuing_in_process(tmp_path):
    """The checkpoint holds every variable a step depends on: restoring it into a freshly built
    model and taking one more step gives bitwise the same variables as stepping the original."""
    from absl import flags as absl_flags

    from dgml_tf import callbacks as cb
    from dgml_tf import flagfiles
    from dgml_tf import flags as dgml_flags
    from dgml_tf.train import recipe
    from dgml_tf.train import seeding

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

    _, original = recipe.build_training_model(config, num_classes=3, steps_per_epoch=12)
    original.fit(images, labels, batch_size=12, epochs=2, verbose=0)
    checkpoint = cb.EpochCheckpoint(str(tmp_path))
    checkpoint.set_model(original)
    checkpoint.save(2)
    _, restored = recipe.build_training_model(config, num_classes=3, steps_per_epoch=12)
    cb.restore_variables(restored, cb.load_training_state(str(tmp_path)))

    for model in (original, restored):
        model.fit(images, labels, batch_size=12, epochs=1, verbose=0)
    for a, b in zip(original.weights + original.optimizer.variables,
                    restored.weights + restored.optimizer.variables):
        assert a.path == b.path
        np.testing.assert_array_equal(np.array(a), np.array(b), err_msg=a.path)
