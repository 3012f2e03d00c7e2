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
    assert state.epoch == 2 and len(state.history) == 2
    # Only the latest epoch's weights are kept (keep=1).
    assert sorted(os.listdir(tmp_path)) == ["epoch-0002.weights.h5", "latest.json"]

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
    with pytest.raises(FileNotFoundError, match="--noresume"):
        cb.load_training_state(str(tmp_path))


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
