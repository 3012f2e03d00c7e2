"""One training run from a run config: train, select on validation, report on test.

:func:`train` is what ``python -m dgml_tf.train`` runs once its flags are parsed. In order:

1. :func:`prepare`: flags checked against the strategy's replicas, this machine's decisions
   (oneDNN, determinism, precision), a resumed run's flags compared with its checkpoints;
2. :func:`load_training_data`: the dataset and its splits (before the run directory is touched,
   so a typo in ``--data_dir`` leaves a finished run intact);
3. :func:`open_run_dir`: stale temporaries removed, ``--noresume`` sets the old run aside,
   ``config.json`` written;
4. the model (:func:`dgml_tf.train.recipe.build_training_model`), a checkpoint restored
   (:func:`restore_state`), the callbacks (:func:`training_callbacks`);
5. :func:`fit_epochs`: one freshly seeded stream per epoch;
6. :func:`select_best` and :func:`final_summary`: ``best.keras`` evaluated on test (and
   validation), the projector written, ``summary.json`` / ``summary.md``.

Example:
    >>> from dgml_tf import flags
    >>> config = flags.training_config_from_args(["--flagfile=fashion_mnist.flags",
    ...                                           "--output_dir=runs/fm"])
    >>> summary = train(config)  # doctest: +SKIP
    >>> summary["metrics"]["concatenated"]["map@r"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

from dgml_tf import flags as dgml_flags
from dgml_tf.run_dir import RUN_ARTIFACTS, RunDir, load_splits
from dgml_tf.train import preflight, recipe
from dgml_tf.train.visuals import fixed_validation_images, write_final_projector

# Datasets held in memory: nothing to cache in the run directory.
_IN_MEMORY_DATASETS = ("fashion_mnist", "glyphs")


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """The splits of a run and what training needs to know about them."""

    splits: Any
    train_records: list  # relabelled 0..C-1
    num_classes: int
    steps_per_epoch: int
    has_validation: bool


def prepare(config: Mapping[str, Any], run: RunDir, num_replicas: int) -> Dict[str, Any]:
    """Checks the flags, decides the runtime, seeds; returns the runtime decisions.

    Raises:
        FlagValidationError: for invalid flags or a resume with other flags (nothing written).
    """
    import keras

    from dgml_tf.train import seeding

    preflight.validate_run(config, num_replicas)
    runtime = preflight.runtime_decisions(config)
    if config["resume"]:
        # With this machine's decisions: "auto" compares as the precision it resolves to.
        preflight.check_resumable(run, {**config, "runtime": runtime})
    # Exact resumption needs bitwise-reproducible kernels; on CPU this costs little (docs/benchmarks.md).
    seeding.set_global_seed(int(config["seed"]), op_determinism=runtime["deterministic"])
    if runtime["mixed_precision"] != "none":
        keras.mixed_precision.set_global_policy(runtime["mixed_precision"])
    return runtime


def load_training_data(config: Mapping[str, Any]) -> TrainingData:
    """The run's splits; raises FlagValidationError when a batch cannot be drawn from them."""
    splits = load_splits(config)
    train_records = recipe.contiguous_labels(splits.train)
    num_classes = len({r.label for r in train_records})
    if num_classes < config["classes_per_batch"]:
        raise dgml_flags.FlagValidationError(
            f"--classes_per_batch={config['classes_per_batch']} but the training split has only "
            f"{num_classes} classes (after {len({r.label for r in splits.val})} validation "
            f"classes); lower --classes_per_batch to <= {num_classes} or --val_classes.")
    steps = config["steps_per_epoch"] or recipe.default_steps_per_epoch(config,
                                                                        len(train_records))
    return TrainingData(splits, train_records, num_classes, steps,
                        has_validation=len({r.label for r in splits.val}) >= 2)


def open_run_dir(config: Mapping[str, Any], run: RunDir, runtime: Mapping[str, Any]) -> None:
    """Creates the run directory, sets a previous run aside (``--noresume``), writes the config."""
    from dgml_tf import callbacks as cb
    from dgml_tf.run_summary import write_config

    os.makedirs(run.path, exist_ok=True)
    cb.remove_stale_temporaries(run.path)  # e.g. a best.keras save killed half way
    if not config["resume"]:
        aside = cb.set_aside(run.path, RUN_ARTIFACTS, "noresume")
        if aside:
            print(f"--noresume: moved the previous run's files to {aside} (nothing deleted).")
    write_config(run.path, {**config, "runtime": runtime})


def restore_state(config: Mapping[str, Any], run: RunDir, model) -> Tuple[Any, Any, int]:
    """``(checkpoint state or None, best-model tracker, first epoch to train)``."""
    from dgml_tf import callbacks as cb

    state = cb.load_training_state(run.checkpoint_dir) if config["resume"] else None
    tracker = cb.BestModelTracker(dgml_flags.SELECTION_METRICS[config["selection_metric"]])
    if state is None:
        return None, tracker, 0
    cb.restore_variables(model, state)
    tracker.restore(state.best)
    print(f"Resuming from {state.weights_path}: {state.epoch} of {config['epochs']} epochs "
          "done.", flush=True)
    return state, tracker, state.epoch


def validation_metrics(model, splits, config: Mapping[str, Any]) -> Dict[str, float]:
    """The selection metrics of ``model`` on the validation split (concatenated embedding)."""
    from dgml_tf.evaluate.protocol import evaluate_model

    return evaluate_model(model, splits, config, "val", compute_nmi=False,
                          per_group=False)["concatenated"]


def training_callbacks(config: Mapping[str, Any], run: RunDir, data: TrainingData,
                       embedding_model, model, tracker, state, start_epoch: int):
    """``(NaN guard, callbacks)`` of the run: validation + best.keras, checkpoints, logs."""
    import keras

    from dgml_tf import callbacks as cb

    guard = cb.NonFiniteLossGuard(steps_per_epoch=data.steps_per_epoch)
    callbacks: List[keras.callbacks.Callback] = [guard]
    pause = cb.pause_from_environment()  # tests only: a kill point the process reports
    if pause is not None:
        callbacks.append(pause)
    if data.has_validation:
        callbacks.append(cb.ValidationEvaluation(
            lambda m: validation_metrics(m, data.splits, config),
            embedding_model, run.best_model_path, tracker, every=config["eval_every"],
            total_epochs=config["epochs"], nan_guard=guard))
    checkpoint = cb.EpochCheckpoint(run.checkpoint_dir, nan_guard=guard, best_tracker=tracker,
                                    history=state.history if state else None)
    train_logs = os.path.join(run.tensorboard_dir, "train")
    callbacks += [
        cb.LearningRateLogger(train_logs,
                              lambda: {g: float(keras.ops.convert_to_numpy(lr)) for g, lr in
                                       model.optimizer.learning_rates().items()}),
        keras.callbacks.TensorBoard(run.tensorboard_dir, update_freq="epoch", write_graph=False),
        checkpoint,
        cb.RunProgress(config["epochs"]),
    ]
    if config["verbose"]:
        callbacks.append(cb.RunProgbar(config["epochs"]))
    if config["num_attention_images"] > 0 and config["head"] == "attentive":
        images = fixed_validation_images(data.splits, config, config["num_attention_images"])
        if images is not None:
            attention = cb.AttentionImages(train_logs, embedding_model, images,
                                           every=config["eval_every"])
            callbacks.insert(1, attention)
            if start_epoch == 0:
                attention.write(step=-1)  # the untrained model, for comparison
    return guard, callbacks


def fit_epochs(config: Mapping[str, Any], run: RunDir, strategy, model, data: TrainingData,
               callbacks: list, guard, start_epoch: int) -> float:
    """Trains epochs ``start_epoch..epochs-1``; returns the seconds it took.

    Raises:
        NonFiniteLossError: when the loss stopped being finite (names the last good checkpoint).
    """
    from dgml_tf import callbacks as cb
    from dgml_tf.train import distribute

    # model.fit fails under MultiWorkerMirroredStrategy on TF 2.20 (DEVELOPERS.md); the custom
    # loop has fit's signature.
    trainer = model
    if distribute.is_multi_worker(strategy):
        from dgml_tf.train.custom_loop import CustomLoopTrainer

        trainer = CustomLoopTrainer(model, strategy)
    started = time.time()
    cache_dir = run.path if config["dataset"] not in _IN_MEMORY_DATASETS else None
    for epoch in range(start_epoch, config["epochs"]):
        # A fresh stream per epoch, seeded from (seed, epoch): an epoch restarted after a crash
        # sees exactly the batches of the uninterrupted run.
        dataset = recipe.make_epoch_dataset(config, data.train_records, data.splits.arrays,
                                            epoch, strategy.num_replicas_in_sync, cache_dir)
        trainer.fit(dataset, initial_epoch=epoch, epochs=epoch + 1,
                    steps_per_epoch=data.steps_per_epoch, callbacks=callbacks,
                    verbose=config["verbose"])
        if guard.tripped:
            state_now = cb.load_training_state(run.checkpoint_dir)
            raise guard.error(state_now.weights_path if state_now else None)
    return time.time() - started


def select_best(run: RunDir, embedding_model, has_validation: bool):
    """The model to report: best.keras of validation, else the last epoch's (saved as it)."""
    from dgml_tf import callbacks as cb
    from dgml_tf.models.saving import load_keras_model

    if not has_validation or not os.path.isfile(run.best_model_path):
        # No validation split: the last epoch is the model.
        cb.save_model_atomically(embedding_model, run.best_model_path)
    return load_keras_model(run.best_model_path)


def final_summary(config: Mapping[str, Any], run: RunDir, best_model, data: TrainingData,
                  best: Mapping[str, Any], training: Mapping[str, Any]) -> Dict[str, Any]:
    """Test (and validation) metrics of ``best_model``, the projector, the summary dict.

    Args:
        best: the tracker's state (which epoch won, on what metric).
        training: what the run did (epochs, steps, resumption, time, replicas).
    """
    from dgml_tf.evaluate.protocol import evaluate_model
    from dgml_tf.run_summary import build_summary

    test = evaluate_model(best_model, data.splits, config, "test")
    validation = {}
    if data.has_validation:
        validation = validation_metrics(best_model, data.splits, config)
    if config["projector_max_points"] > 0:
        write_final_projector(best_model, data.splits, config,
                              os.path.join(run.tensorboard_dir, "projector"),
                              config["projector_max_points"])
    return build_summary(config, test, best=best, validation=validation, training=training)


def finish(config: Mapping[str, Any], run: RunDir, summary: Mapping[str, Any]) -> Optional[str]:
    """Writes summary.json / .md; prints the report (chief) or removes a worker's scratch dir.

    Returns:
        The markdown report.
    """
    from dgml_tf.run_summary import write_summary

    report = write_summary(run.path, summary)
    if run.path != config["output_dir"]:
        shutil.rmtree(run.path, ignore_errors=True)  # a finished worker's scratch copy
        try:
            os.rmdir(os.path.dirname(run.path))  # "workers/", once every worker is done
        except OSError:
            pass
    else:
        print(report)
    return report


def train(config: Dict[str, Any]) -> Dict[str, Any]:
    """Runs training, selection and the final test evaluation; returns the summary.

    Args:
        config: the run config (flag values; see :mod:`dgml_tf.train.cli`).

    Returns:
        The summary written to ``summary.json``.

    Raises:
        FlagValidationError: invalid flags, a resume with other flags, too few classes.
        CheckpointError: no intact checkpoint to resume from.
        NonFiniteLossError: the loss stopped being finite.
    """
    from dgml_tf.train import distribute

    # The strategy first: MultiWorkerMirroredStrategy must exist before other TF ops.
    strategy = distribute.strategy_from_environment()
    replicas = strategy.num_replicas_in_sync
    # Non-chief workers run every step too, but write to their own scratch directory.
    run = RunDir(distribute.worker_output_dir(strategy, config["output_dir"]))
    # Nothing in the run directory is touched until the flags and the dataset are known good.
    runtime = prepare(config, run, replicas)
    data = load_training_data(config)
    open_run_dir(config, run, runtime)

    with strategy.scope():
        embedding_model, model = recipe.build_training_model(config, data.num_classes,
                                                             data.steps_per_epoch)
    state, tracker, start_epoch = restore_state(config, run, model)
    guard, callbacks = training_callbacks(config, run, data, embedding_model, model, tracker,
                                          state, start_epoch)
    seconds = fit_epochs(config, run, strategy, model, data, callbacks, guard, start_epoch)

    best_model = select_best(run, embedding_model, data.has_validation)
    summary = final_summary(
        config, run, best_model, data,
        best=tracker.state() if data.has_validation else {"metric": None},
        training={"epochs": config["epochs"], "steps_per_epoch": data.steps_per_epoch,
                  "resumed_at_epoch": start_epoch, "seconds_this_process": round(seconds, 1),
                  "train_classes": data.num_classes, "train_images": len(data.train_records),
                  "replicas": replicas})
    finish(config, run, summary)
    return summary
