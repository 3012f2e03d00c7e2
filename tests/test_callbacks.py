"""Callbacks of the training CLI, on tiny Keras models (no dataset, no backbone)."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from dgml_tf import callbacks as cb
from dgml_tf.callbacks.tensorboard_extras import make_sprite


def _regression_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return model


def _data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype("float32")
    return x, (x @ rng.normal(size=(3, 2))).astype("float32")


def _snapshot(model):
    return [np.array(v) for v in model.weights]


# --- atomic writes --------------------------------------------------------------------------

def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "state.json"
    cb.write_json_atomically(str(target), {"epoch": 1, "value": np.float32(0.5)})
    cb.write_json_atomically(str(target), {"epoch": 2})
    assert json.loads(target.read_text()) == {"epoch": 2}
    assert os.listdir(tmp_path) == ["state.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "state.json"
    cb.write_json_atomically(str(target), {"epoch": 1})

    def crash(path):
        with open(path, "w") as handle:
            handle.write("{half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        cb.write_atomically(str(target), crash)
    assert json.loads(target.read_text()) == {"epoch": 1}
    assert os.listdir(tmp_path) == ["state.json"]


def test_atomic_write_keeps_the_keras_suffix(tmp_path):
    seen = []
    cb.write_atomically(str(tmp_path / "m.weights.h5"),
                        lambda p: (seen.append(p), open(p, "w").close()), ".weights.h5")
    assert seen[0].endswith(".weights.h5") and seen[0] != str(tmp_path / "m.weights.h5")
    with pytest.raises(ValueError, match="must end with"):
        cb.write_atomically(str(tmp_path / "m.h5"), lambda p: None, ".keras")


# --- checkpointing ------------------------------------------------------------------------------

def test_checkpoint_round_trip_restores_weights_and_optimizer(tmp_path):
    x, y = _data()
    model = _regression_model()
    checkpoint = cb.EpochCheckpoint(str(tmp_path))
    model.fit(x, y, batch_size=8, epochs=2, callbacks=[checkpoint], verbose=0)
    state = cb.load_training_state(str(tmp_path))
    assert state.epoch == 2 and len(state.history) == 2 and state.skipped == []
    # The last two epochs are kept, each with its state file.
    assert sorted(os.listdir(tmp_path)) == ["epoch-0001.json", "epoch-0001.weights.h5",
                                            "epoch-0002.json", "epoch-0002.weights.h5",
                                            "latest.json"]

    fresh = _regression_model(seed=1)
    cb.restore_variables(fresh, state)
    for a, b in zip(_snapshot(model), _snapshot(fresh)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(model.optimizer.variables, fresh.optimizer.variables):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    assert int(fresh.optimizer.iterations) == 2 * 3


def test_no_checkpoint_means_none(tmp_path):
    assert cb.load_training_state(str(tmp_path)) is None


def test_pointer_to_missing_weights_is_a_clear_error(tmp_path):
    (tmp_path / "latest.json").write_text(json.dumps({"epoch": 3, "weights": "gone.weights.h5"}))
    with pytest.raises(cb.CheckpointError, match="gone.weights.h5.*missing.*--noresume"):
        cb.load_training_state(str(tmp_path))


def _checkpointed_epochs(tmp_path, epochs=4):
    """A model trained ``epochs`` epochs with a checkpoint after each; per-epoch variables."""
    x, y = _data()
    model = _regression_model()
    checkpoint = cb.EpochCheckpoint(str(tmp_path))
    snapshots = {}

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots[epoch + 1] = _snapshot(self.model)

    model.fit(x, y, batch_size=8, epochs=epochs, callbacks=[checkpoint, Snapshot()], verbose=0)
    return snapshots


def _restored(state):
    fresh = _regression_model(seed=7)
    cb.restore_variables(fresh, state)
    return _snapshot(fresh)


def _assert_variables_equal(got, expected):
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


def test_keep_two_and_fall_back_when_the_newest_weights_are_damaged(tmp_path):
    snapshots = _checkpointed_epochs(tmp_path, epochs=4)
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith(".weights.h5")) == [
        "epoch-0003.weights.h5", "epoch-0004.weights.h5"]
    newest = tmp_path / "epoch-0004.weights.h5"
    data = newest.read_bytes()
    # Same size, one byte changed: only the checksum can tell.
    newest.write_bytes(data[:-100] + bytes([data[-100] ^ 0xFF]) + data[-99:])
    reports = []
    state = cb.load_training_state(str(tmp_path), report=reports.append)
    assert state.epoch == 3 and state.weights_path.endswith("epoch-0003.weights.h5")
    assert len(state.history) == 3
    assert "epoch-0004.weights.h5 (epoch 4)" in reports[0] and "checksum" in reports[0]
    assert "Falling back to the previous checkpoint" in reports[0]
    _assert_variables_equal(_restored(state), snapshots[3])

    newest.write_bytes(data[: len(data) // 3])  # truncated
    assert cb.load_training_state(str(tmp_path), report=reports.append).epoch == 3


def test_unreadable_pointer_uses_the_newest_state_file(tmp_path):
    snapshots = _checkpointed_epochs(tmp_path, epochs=3)
    (tmp_path / "latest.json").write_text('{"epoch": 3, "weig')  # torn by hand
    state = cb.load_training_state(str(tmp_path), report=lambda m: None)
    assert state.epoch == 3
    _assert_variables_equal(_restored(state), snapshots[3])


def test_weights_saved_but_state_not_yet_written_resumes_from_the_last_state(tmp_path):
    """A kill between the weights rename and the state file: that epoch does not count."""
    _checkpointed_epochs(tmp_path, epochs=2)
    (tmp_path / "epoch-0003.weights.h5").write_bytes(
        (tmp_path / "epoch-0002.weights.h5").read_bytes())
    state = cb.load_training_state(str(tmp_path), report=lambda m: None)
    assert state.epoch == 2 and state.skipped == []


def test_every_checkpoint_damaged_is_a_clear_error(tmp_path):
    _checkpointed_epochs(tmp_path, epochs=2)
    for name in ("epoch-0001.weights.h5", "epoch-0002.weights.h5"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(cb.CheckpointError, match="No usable checkpoint.*--noresume"):
        cb.load_training_state(str(tmp_path))


def test_checkpoint_start_removes_only_a_dead_savers_temporaries(tmp_path):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".tmp-{dead.pid}-epoch-0002.weights.h5"
    live = tmp_path / f".tmp-{os.getpid()}-epoch-0002.weights.h5"  # a save in progress: ours
    unrelated = [tmp_path / ".tmp-notes", tmp_path / "x.tmp-1-y", tmp_path / "epoch-0001.json"]
    (tmp_path / f".tmp-{dead.pid}-folder").mkdir()  # a directory: never touched here
    for path in [stale, live, *unrelated]:
        path.write_text("x")
    cb.EpochCheckpoint(str(tmp_path))
    assert not stale.exists()
    assert live.exists() and all(p.exists() for p in unrelated)
    assert (tmp_path / f".tmp-{dead.pid}-folder").is_dir()


def test_pause_writes_its_marker_at_the_chosen_step(tmp_path):
    """The test-only kill point: marker written after exactly step N (released here)."""
    import threading

    marker = tmp_path / "paused"
    pause = cb.pause_from_environment({"DGML_TEST_PAUSE_AT_STEP": f"5:{marker}"})
    assert cb.pause_from_environment({}) is None
    with pytest.raises(ValueError, match="<step>:<marker path>"):
        cb.pause_from_environment({"DGML_TEST_PAUSE_AT_STEP": "five"})
    seen = []

    class Watch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append((int(self.model.optimizer.iterations), marker.exists()))

    def release_when_paused():
        while not marker.exists():
            threading.Event().wait(0.01)
        (tmp_path / "paused.release").write_text("")

    releaser = threading.Thread(target=release_when_paused)
    releaser.start()
    x, y = _data()
    _regression_model().fit(x, y, batch_size=8, epochs=2, callbacks=[pause, Watch()],
                            verbose=0)
    releaser.join()
    assert marker.read_text().strip() == "5"
    assert seen == [(i, i >= 5) for i in range(1, 7)]


# --- NaN / Inf ---------------------------------------------------------------------------------

def test_nan_loss_stops_at_its_step_and_keeps_last_good_checkpoint(tmp_path):
    x, y = _data(n=24)
    model = _regression_model()
    guard = cb.NonFiniteLossGuard(steps_per_epoch=3)
    checkpoint = cb.EpochCheckpoint(str(tmp_path), nan_guard=guard)
    model.fit(x, y, batch_size=8, epochs=1, callbacks=[guard, checkpoint], verbose=0)
    good = _snapshot(model)
    good_file = cb.load_training_state(str(tmp_path)).weights_path

    bad_x = x.copy()
    bad_x[9] = np.nan  # second batch of the second epoch: global step 3 + 2 = 5
    model.fit(bad_x, y, batch_size=8, epochs=2, initial_epoch=1, shuffle=False,
              callbacks=[guard, checkpoint], verbose=0)
    assert guard.tripped and guard.step == 5 and guard.epoch == 1
    state = cb.load_training_state(str(tmp_path))
    assert state.epoch == 1 and state.weights_path == good_file
    assert checkpoint.skipped_epochs == [1]
    restored = _regression_model(seed=3)
    cb.restore_variables(restored, state)
    for a, b in zip(good, _snapshot(restored)):
        np.testing.assert_array_equal(a, b)
        assert np.all(np.isfinite(b))
    message = str(guard.error(state.weights_path))
    assert "step 5" in message and state.weights_path in message


def test_non_finite_weights_are_never_written(tmp_path):
    model = _regression_model()
    model.optimizer.build(model.trainable_variables)
    assert cb.all_finite(model)
    model.layers[0].kernel.assign(np.full((3, 2), np.inf, "float32"))
    assert not cb.all_finite(model)
    checkpoint = cb.EpochCheckpoint(str(tmp_path))
    checkpoint.set_model(model)
    checkpoint.on_epoch_end(0, {"loss": 1.0})
    assert cb.load_training_state(str(tmp_path)) is None


# --- validation and best model ------------------------------------------------------------------

def test_tracker_keeps_the_maximum_and_ignores_nan():
    tracker = cb.BestModelTracker("map@r")
    assert [tracker.update(e, v) for e, v in enumerate([0.2, 0.5, float("nan"), 0.4])] == [
        True, True, False, False]
    assert tracker.state() == {"metric": "map@r", "value": 0.5, "epoch": 1}
    other = cb.BestModelTracker("recall@1")
    other.restore(tracker.state())
    assert other.best_value is None  # a different metric starts over


def test_validation_saves_the_best_epoch_and_logs_metrics(tmp_path):
    x, y = _data()
    model = _regression_model()
    scores = iter([0.1, 0.3, 0.2])
    snapshots = []

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots.append(_snapshot(self.model))

    logged = []

    class Logs(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logged.append(dict(logs))

    tracker = cb.BestModelTracker("map@r")
    best = str(tmp_path / "best.keras")
    validation = cb.ValidationEvaluation(lambda m: {"map@r": next(scores), "num_queries": 4},
                                         model, best, tracker, log=lambda line: None)
    model.fit(x, y, batch_size=8, epochs=3, callbacks=[validation, Snapshot(), Logs()],
              verbose=0)
    assert tracker.best_epoch == 1
    saved = keras.saving.load_model(best, compile=False)
    for a, b in zip(snapshots[1], _snapshot(saved)):
        np.testing.assert_array_equal(a, b)
    assert [entry["val_map@r"] for entry in logged] == [0.1, 0.3, 0.2]
    assert "val_num_queries" not in logged[0]


def test_validation_period_includes_the_last_epoch():
    validation = cb.ValidationEvaluation(lambda m: {}, None, "unused.keras",
                                         cb.BestModelTracker("map@r"), every=2, total_epochs=5)
    assert [e for e in range(5) if validation.should_evaluate(e)] == [1, 3, 4]


def test_unknown_selection_metric_names_the_available_ones(tmp_path):
    model = _regression_model()
    validation = cb.ValidationEvaluation(lambda m: {"recall@1": 0.5}, model,
                                         str(tmp_path / "b.keras"), cb.BestModelTracker("map@r"))
    validation.set_model(model)
    with pytest.raises(KeyError, match="recall@1"):
        validation.on_epoch_end(0, {})


# --- TensorBoard extras and progress --------------------------------------------------------------

def _events(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(logdir, size_guidance={"images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def test_learning_rates_are_written_per_group(tmp_path):
    logger = cb.LearningRateLogger(str(tmp_path), lambda: {"backbone": 1e-5, "queries": 3e-4})
    logs = {}
    logger.on_epoch_end(0, logs)
    logger.on_epoch_end(1, logs)
    tensors = _events(str(tmp_path)).Tensors("learning_rate/queries")
    assert [e.step for e in tensors] == [0, 1]
    assert np.isclose(tf.make_ndarray(tensors[0].tensor_proto), 3e-4)
    assert logs["lr_backbone"] == 1e-5


def _attention_model(num_groups=2, size=8):
    """A model whose attention output is known: group k looks only at column k."""
    inputs = keras.Input((size, size, 3))
    maps = np.zeros((num_groups, 4, 4), "float32")
    for k in range(num_groups):
        maps[k, :, k] = 0.25
    attention = keras.layers.Lambda(
        lambda x: keras.ops.broadcast_to(keras.ops.convert_to_tensor(maps),
                                         (keras.ops.shape(x)[0],) + maps.shape))(inputs)
    embedding = keras.layers.GlobalAveragePooling2D()(inputs)
    return keras.Model(inputs, {"embedding": embedding, "attention": attention})


def test_attention_images_one_summary_per_group(tmp_path):
    images = np.full((3, 8, 8, 3), 128.0, "float32")
    panels = cb.tensorboard_extras.attention_panels(_attention_model(), images)
    assert panels.shape == (3, 2, 8, 8, 3) and panels.dtype == np.uint8
    # Group 0 attends to the left column: its panel differs from group 1's there.
    assert not np.array_equal(panels[0, 0, :, :2], panels[0, 1, :, :2])
    writer = cb.AttentionImages(str(tmp_path), _attention_model(), images)
    assert writer.write(step=0)
    tags = _events(str(tmp_path)).Tags()["tensors"]
    assert sorted(tags) == ["attention/group_0", "attention/group_1"]


def test_sprite_tiles_images_row_major():
    images = np.stack([np.full((2, 2, 1), i, np.uint8) for i in range(5)])
    sprite = make_sprite(images)
    assert sprite.shape == (6, 6, 3)  # ceil(sqrt(5)) = 3 tiles per side
    assert sprite[0, 2, 0] == 1 and sprite[2, 0, 0] == 3 and sprite[4, 4, 0] == 0


def test_projector_writes_metadata_sprite_and_config(tmp_path):
    embeddings = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    images = np.zeros((5, 6, 6, 1), np.uint8)
    cb.write_projector(str(tmp_path), embeddings, [0, 1, 1, 2, 2], images, {1: "trouser"})
    lines = (tmp_path / "metadata.tsv").read_text().splitlines()
    assert lines[0] == "label\tname" and lines[2] == "1\ttrouser" and len(lines) == 6
    config = (tmp_path / "projector_config.pbtxt").read_text()
    assert "sprite.png" in config and "metadata.tsv" in config
    reader = tf.train.load_checkpoint(str(tmp_path))
    np.testing.assert_array_equal(reader.get_tensor("embedding/.ATTRIBUTES/VARIABLE_VALUE"),
                                  embeddings)


def test_run_progress_estimates_remaining_time():
    ticks = iter([0.0, 30.0, 30.0, 90.0])
    lines = []
    progress = cb.RunProgress(5, log=lines.append, clock=lambda: next(ticks))
    progress.on_epoch_begin(0)
    progress.on_epoch_end(0, {"loss": 1.5, "val_map@r": 0.2})
    progress.on_epoch_begin(1)
    progress.on_epoch_end(1, {"loss": 1.0})
    assert "epoch 1/5" in lines[0] and "loss=1.5" in lines[0] and "ETA 2.0 min" in lines[0]
    assert "45.0 s/epoch" in lines[1] and "ETA 2.2 min" in lines[1]


def test_run_progress_lists_losses_not_the_loss_groups_learning_rate():
    # The margin betas' parameter group is named "loss": its rate keys end in "loss" too.
    lines = []
    progress = cb.RunProgress(1, log=lines.append, clock=lambda: 0.0)
    progress.on_epoch_end(0, {"loss": 2.0, "embedding_loss": 1.5, "diversity_loss": 0.5,
                              "learning_rate_loss": 5e-4, "lr_loss": 5e-4, "lr_backbone": 1e-4})
    shown = lines[0].split(": ", 1)[1].split(";")[0]
    assert shown == "diversity_loss=0.5, embedding_loss=1.5, loss=2", shown


def test_progress_bar_shows_the_run_total(capsys):
    x, y = _data(n=8)
    model = _regression_model()
    model.fit(x, y, batch_size=8, epochs=3, initial_epoch=2, verbose=2,
              callbacks=[cb.RunProgbar(10)])
    assert "Epoch 3/10" in capsys.readouterr().out
