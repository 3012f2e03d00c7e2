"""``python -m dgml_tf.train``: train an attentive-grouping embedding, select it on validation,
report it on test.

Example:
    python -m dgml_tf.train --flagfile=cub.flags --data_dir=/data/CUB_200_2011 \\
        --output_dir=runs/cub
    python -m dgml_tf.train --flagfile=fashion_mnist.flags --output_dir=runs/fm

``--flagfile=NAME.flags`` finds the flagfiles bundled in ``dgml_tf/configs`` from any working
directory (a file of that name in the working directory wins); flags after it override it.

What a run writes into ``--output_dir``:

- ``config.json``: every flag value, and under ``runtime`` what this machine decided (oneDNN,
  op determinism, the precision ``--mixed_precision=auto`` chose);
- ``checkpoints/``: the last two epochs' model + optimizer state (atomic, fsynced, checksummed;
  a rerun of the same command continues from the newest intact one, e.g. after ``kill -9``);
- ``best.keras``: the embedding model of the best validation epoch (``--selection_metric``);
- ``summary.json`` and ``summary.md``: test metrics of ``best.keras`` (concatenated embedding and
  each group), In-Shop as query vs gallery;
- ``tensorboard/``: losses, per-group learning rates, validation metrics, attention images, and
  the embedding projector of the final model.

``--noresume`` first checks the flags and reads the dataset, and only then moves the previous
run's checkpoints, ``best.keras``, config, summaries and logs to ``set_aside/<time>-noresume/``
(printed); nothing is deleted.

Defaults that follow the machine (``dgml_tf/hardware.py``): oneDNN on unless
``TF_ENABLE_ONEDNN_OPTS`` is set, op determinism on for CPU-only training (``--deterministic``),
bf16 mixed precision where the hardware has it (``--mixed_precision=auto``).

Determinism: the training stream of epoch ``e`` is seeded from ``(seed, e)`` and mining
randomness from ``(seed, optimizer step)``, so a resumed run ends with the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Any, Dict, List, Mapping, Optional

from absl import app
from absl import flags as absl_flags
from absl import logging

from dgml_tf import flagfiles
from dgml_tf import flags as dgml_flags
from dgml_tf import hardware

FLAGS = absl_flags.FLAGS
_PREDEFINED = frozenset(FLAGS)  # absl's own (logging) flags, not part of a run's config
dgml_flags.define_data_flags()
dgml_flags.define_model_flags()
dgml_flags.define_training_flags()
dgml_flags.define_output_flags()

BEST_MODEL = "best.keras"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
# What a run writes (and --noresume sets aside): its results, not the dataset cache files.
RUN_ARTIFACTS = (CHECKPOINT_DIR, BEST_MODEL, "config.json", "summary.json", "summary.md",
                 TENSORBOARD_DIR, "eval_test.json", "eval_test.md", "eval_val.json",
                 "eval_val.md", "eval_test_per_class.json", "eval_test_per_class.md",
                 "eval_val_per_class.json", "eval_val_per_class.md")

# --augmentation -> random-resized-crop ranges (area fraction, aspect ratio) of the pipeline.
# "small_shift" keeps most of a 28 px garment (a crop of 64-100% of the area is a shift and a
# mild zoom); "crop_flip" is the usual ImageNet-style 8-100% crop of photos.
AUGMENTATIONS = {
    "crop_flip": {"scale": (0.08, 1.0), "ratio": (3 / 4, 4 / 3)},
    "small_shift": {"scale": (0.64, 1.0), "ratio": (0.85, 1.18)},
}


def resolve_augmentation(config: Mapping[str, Any]) -> Optional[dict]:
    """Crop ranges for the training stream, or None for no augmentation."""
    name = config["augmentation"]
    if name == "auto":
        name = "small_shift" if config["image_size"] <= 64 else "crop_flip"
    return None if name == "none" else AUGMENTATIONS[name]


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of epoch ``epoch``'s training stream: a fixed function of (seed, epoch)."""
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + 1) % (2**31 - 1)


def contiguous_labels(records: list) -> list:
    """Training records relabelled 0..C-1 (the margin loss keeps one beta per training class)."""
    from pipelines.records import Record

    classes = {label: i for i, label in enumerate(sorted({r.label for r in records}))}
    return [Record(r.source, classes[r.label], r.item_id) for r in records]


def group_configs(config: Mapping[str, Any]) -> dict:
    """Optimizer settings of the parameter groups from the lr_*/wd_* flags."""
    from dgml_tf.training.parameter_groups import GroupConfig, StepSchedule

    boundaries = dgml_flags.decay_epochs(config)
    schedule = StepSchedule(tuple(boundaries), config["lr_decay_factor"]) if boundaries else None

    def group(lr, wd):
        return GroupConfig(lr, wd, decoupled=config["decoupled_weight_decay"], schedule=schedule)

    return {"backbone": group(config["lr_backbone"], config["wd_backbone"]),
            "key_value": group(config["lr_key_value"], config["wd_key_value"]),
            "queries": group(config["lr_queries"], config["wd_queries"]),
            "loss": group(config["lr_beta"], 0.0)}


def build_embedding_model(config: Mapping[str, Any]):
    """The embedding model the flags describe."""
    from dgml_tf.models import build_embedding_model as build

    weights = None if config["weights"] == "none" else config["weights"]
    return build(backbone=config["backbone"],
                 input_shape=(config["image_size"], config["image_size"], 3),
                 weights=weights, head=config["head"], num_groups=config["num_groups"],
                 embedding_dim=config["embedding_dim"], reduction=config["reduction"],
                 freeze_batch_norm=config["freeze_bn"], projection=config["projection"],
                 feature_layer=config.get("feature_layer") or None,
                 trainable_from=config.get("train_backbone_from") or None)


def build_embedding_loss(config: Mapping[str, Any], num_classes: int):
    """The per-group embedding loss the flags describe."""
    from dgml_tf import losses

    k = 1 if config["head"] == "single" else config["num_groups"]
    if config["loss"] == "margin":
        return losses.MarginLoss(num_classes=num_classes, num_groups=k, margin=config["margin"],
                                 initial_beta=config["beta_init"], seed=config["seed"])
    if config["loss"] == "binomial":
        return losses.BinomialDevianceLoss(num_groups=k)
    if config["loss"] == "contrastive":
        return losses.ContrastiveLoss(num_groups=k)
    from tensorflow_similarity.losses import MultiSimilarityLoss

    # Passed as a class: tfsim 0.17.1 instances default to reduction="auto" (DEVELOPERS.md).
    return losses.PerGroupLoss(MultiSimilarityLoss, num_groups=k)


def build_training_model(config: Mapping[str, Any], num_classes: int, steps_per_epoch: int):
    """(embedding model, compiled MetricLearningModel) in the current strategy scope."""
    from dgml_tf.training import MetricLearningModel, build_grouped_optimizer

    embedding_model = build_embedding_model(config)
    model = MetricLearningModel(embedding_model, build_embedding_loss(config, num_classes),
                                diversity_weight=config["lambda_div"], seed=int(config["seed"]))
    optimizer = build_grouped_optimizer(model, group_configs(config), steps_per_epoch)
    model.compile(optimizer=optimizer, jit_compile=config["jit_compile"])
    return embedding_model, model


def make_epoch_dataset(config: Mapping[str, Any], train_records: list, arrays, epoch: int,
                       num_replicas: int, cache_dir: Optional[str]):
    """The training batches of one epoch, seeded from (seed, epoch)."""
    import pipelines

    crops = resolve_augmentation(config)
    return pipelines.make_train_dataset(
        train_records, arrays, batch_classes=config["classes_per_batch"],
        images_per_class=config["images_per_class"], image_size=config["image_size"],
        resize_size=config["resize_size"], seed=epoch_seed(config["seed"], epoch),
        augment=crops is not None, replace=config["sample_with_replacement"],
        num_replicas=num_replicas, cache_dir=cache_dir, flip=config.get("hflip", True),
        **(crops or {}))


def default_steps_per_epoch(config: Mapping[str, Any], num_train: int) -> int:
    return max(1, num_train // (config["classes_per_batch"] * config["images_per_class"]))


def fixed_validation_images(splits, config: Mapping[str, Any], count: int):
    """The first image of ``count`` different validation (else test) classes, evaluation crop."""
    import numpy as np

    import pipelines

    records = splits.val or splits.test or splits.query
    chosen, seen = [], set()
    for record in records:
        if record.label not in seen:
            seen.add(record.label)
            chosen.append(record)
        if len(chosen) == count:
            break
    if not chosen:
        return None
    dataset = pipelines.make_eval_dataset(chosen, splits.arrays, image_size=config["image_size"],
                                          resize_size=config["resize_size"],
                                          batch_size=len(chosen))
    return np.concatenate([np.asarray(images) for images, _ in dataset])


def write_final_projector(embedding_model, splits, config: Mapping[str, Any], logdir: str,
                          max_points: int) -> Optional[str]:
    """Embeds up to ``max_points`` test images and writes the TensorBoard projector."""
    import numpy as np

    import pipelines
    from dgml_tf.callbacks import write_projector

    records = (splits.test or splits.gallery)[:max_points]
    if not records or max_points <= 0:
        return None
    dataset = pipelines.make_eval_dataset(records, splits.arrays, image_size=config["image_size"],
                                          resize_size=config["resize_size"],
                                          batch_size=config["eval_batch_size"])
    embeddings, labels, thumbnails = [], [], []
    small = config["image_size"] <= 64
    for images, batch_labels in dataset:
        embeddings.append(np.asarray(embedding_model(images, training=False)["embedding"]))
        labels.append(np.asarray(batch_labels))
        if small:
            thumbnails.append(np.clip(np.asarray(images), 0, 255).astype(np.uint8))
    return write_projector(logdir, np.concatenate(embeddings), np.concatenate(labels),
                           np.concatenate(thumbnails) if small else None, splits.class_names)


def _count(value: float):
    return int(value) if float(value).is_integer() else float(value)


def check_resumable(output_dir: str, checkpoint_dir: str, config: Mapping[str, Any]) -> None:
    """Refuses to continue a run whose checkpoints were trained with other flags.

    Raises:
        FlagValidationError: naming every changed flag and the three ways out; nothing in
            ``output_dir`` is touched.
    """
    import json

    from dgml_tf.callbacks.checkpointing import POINTER

    config_path = os.path.join(output_dir, "config.json")
    has_checkpoint = os.path.isdir(checkpoint_dir) and any(
        n == POINTER or n.startswith("epoch-") for n in os.listdir(checkpoint_dir))
    if not (os.path.isfile(config_path) and has_checkpoint):
        return
    with open(config_path, encoding="utf-8") as handle:
        stored = json.load(handle)
    changed = dgml_flags.changed_training_flags(stored, config)
    if changed:
        raise dgml_flags.FlagValidationError(
            f"{output_dir} holds a run trained with other flags:\n  - " + "\n  - ".join(changed)
            + "\nRerun with that run's flags to continue it, pass --noresume to start over in "
            "this directory (its checkpoints, best.keras and logs are moved to "
            "set_aside/<time>-noresume/, not deleted), or choose another --output_dir.")


def runtime_decisions(config: Mapping[str, Any]) -> Dict[str, Any]:
    """What this machine decided for the run (recorded in config.json under ``runtime``):
    oneDNN, op determinism and the precision ``--mixed_precision`` resolves to."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    capabilities = []
    for gpu in gpus:
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        capabilities.append(tuple(capability) if capability else (0, 0))
    flags = hardware.cpu_flags()
    return {
        "onednn": {hardware.ONEDNN_VARIABLE: os.environ.get(hardware.ONEDNN_VARIABLE),
                   "source": ("default" if os.environ.get(hardware.ONEDNN_DEFAULTED) == "1"
                              else "environment"),
                   "active": hardware.onednn_active()},
        "deterministic": hardware.resolve_deterministic(config.get("deterministic"), len(gpus)),
        "mixed_precision": hardware.resolve_mixed_precision(
            config["mixed_precision"], flags, capabilities),
        "gpus": [list(c) for c in capabilities],
        "cpu_bf16": hardware.cpu_has_bf16(flags),
    }


def train(config: Dict[str, Any]) -> Dict[str, Any]:
    """Runs training, selection and the final test evaluation; returns the summary."""
    import keras
    import numpy as np

    import pipelines
    from dgml_tf import callbacks as cb
    from dgml_tf.evaluate import evaluate_model
    from dgml_tf.run_summary import build_summary, write_config, write_summary
    from dgml_tf.training import distribute, seeding

    # The strategy first: MultiWorkerMirroredStrategy must exist before other TF ops.
    strategy = distribute.strategy_from_environment()
    replicas = strategy.num_replicas_in_sync
    # Non-chief workers run every step too, but write to their own scratch directory.
    output_dir = distribute.worker_output_dir(strategy, config["output_dir"])
    checkpoint_dir = os.path.join(output_dir, CHECKPOINT_DIR)
    best_path = os.path.join(output_dir, BEST_MODEL)
    tensorboard_dir = os.path.join(output_dir, TENSORBOARD_DIR)
    # Nothing in output_dir is touched until the flags and the dataset are known to be good.
    errors = dgml_flags.validate_training_flags(config, num_replicas=replicas)
    if errors:
        raise dgml_flags.FlagValidationError("Invalid flags:\n  - " + "\n  - ".join(errors))
    runtime = runtime_decisions(config)
    if config["resume"]:
        # With this machine's decisions: "auto" compares as the precision it resolves to.
        check_resumable(output_dir, checkpoint_dir, {**config, "runtime": runtime})
    # Exact resumption needs bitwise-reproducible kernels; on CPU this costs little (README).
    seeding.set_global_seed(int(config["seed"]), op_determinism=runtime["deterministic"])
    if runtime["mixed_precision"] != "none":
        keras.mixed_precision.set_global_policy(runtime["mixed_precision"])

    val = config["val_classes"]
    splits = pipelines.load_dataset(config["dataset"], config["data_dir"],
                                    **({} if val is None else {"val_classes": _count(val)}),
                                    seed=int(config["seed"]))
    train_records = contiguous_labels(splits.train)
    num_classes = len({r.label for r in train_records})
    if num_classes < config["classes_per_batch"]:
        raise dgml_flags.FlagValidationError(
            f"--classes_per_batch={config['classes_per_batch']} but the training split has only "
            f"{num_classes} classes (after {len({r.label for r in splits.val})} validation "
            f"classes); lower --classes_per_batch to <= {num_classes} or --val_classes.")
    steps = config["steps_per_epoch"] or default_steps_per_epoch(config, len(train_records))
    has_validation = len({r.label for r in splits.val}) >= 2

    os.makedirs(output_dir, exist_ok=True)
    cb.remove_stale_temporaries(output_dir)  # e.g. a best.keras save killed half way
    if not config["resume"]:
        aside = cb.set_aside(output_dir, RUN_ARTIFACTS, "noresume")
        if aside:
            print(f"--noresume: moved the previous run's files to {aside} (nothing deleted).")
    write_config(output_dir, {**config, "runtime": runtime})

    with strategy.scope():
        embedding_model, model = build_training_model(config, num_classes, steps)

    state = cb.load_training_state(checkpoint_dir) if config["resume"] else None
    start_epoch = 0
    tracker = cb.BestModelTracker(dgml_flags.SELECTION_METRICS[config["selection_metric"]])
    if state is not None:
        cb.restore_variables(model, state)
        tracker.restore(state.best)
        start_epoch = state.epoch
        print(f"Resuming from {state.weights_path}: {state.epoch} of {config['epochs']} epochs "
              "done.", flush=True)

    guard = cb.NonFiniteLossGuard(steps_per_epoch=steps)
    callbacks: List[keras.callbacks.Callback] = [guard]
    pause = cb.pause_from_environment()  # tests only: a kill point the process reports
    if pause is not None:
        callbacks.append(pause)
    if has_validation:
        callbacks.append(cb.ValidationEvaluation(
            lambda m: evaluate_model(m, splits, config, "val", compute_nmi=False,
                                     per_group=False)["concatenated"],
            embedding_model, best_path, tracker, every=config["eval_every"],
            total_epochs=config["epochs"], nan_guard=guard))
    checkpoint = cb.EpochCheckpoint(checkpoint_dir, nan_guard=guard, best_tracker=tracker,
                                    history=state.history if state else None)
    callbacks += [
        cb.LearningRateLogger(os.path.join(tensorboard_dir, "train"),
                              lambda: {g: float(keras.ops.convert_to_numpy(lr)) for g, lr in
                                       model.optimizer.learning_rates().items()}),
        keras.callbacks.TensorBoard(tensorboard_dir, update_freq="epoch", write_graph=False),
        checkpoint,
        cb.RunProgress(config["epochs"]),
    ]
    if config["verbose"]:
        callbacks.append(cb.RunProgbar(config["epochs"]))
    if config["num_attention_images"] > 0 and config["head"] == "attentive":
        images = fixed_validation_images(splits, config, config["num_attention_images"])
        if images is not None:
            attention = cb.AttentionImages(os.path.join(tensorboard_dir, "train"),
                                           embedding_model, images, every=config["eval_every"])
            callbacks.insert(1, attention)
            if start_epoch == 0:
                attention.write(step=-1)  # the untrained model, for comparison

    # model.fit fails under MultiWorkerMirroredStrategy on TF 2.20 (DEVELOPERS.md); the custom
    # loop has fit's signature.
    trainer = model
    if distribute.is_multi_worker(strategy):
        from dgml_tf.training import CustomLoopTrainer

        trainer = CustomLoopTrainer(model, strategy)
    started = time.time()
    cache_dir = output_dir if config["dataset"] not in ("fashion_mnist", "glyphs") else None
    for epoch in range(start_epoch, config["epochs"]):
        # A fresh stream per epoch, seeded from (seed, epoch): an epoch restarted after a crash
        # sees exactly the batches of the uninterrupted run.
        dataset = make_epoch_dataset(config, train_records, splits.arrays, epoch, replicas,
                                     cache_dir)
        trainer.fit(dataset, initial_epoch=epoch, epochs=epoch + 1, steps_per_epoch=steps,
                  callbacks=callbacks, verbose=config["verbose"])
        if guard.tripped:
            state_now = cb.load_training_state(checkpoint_dir)
            raise guard.error(state_now.weights_path if state_now else None)
    seconds = time.time() - started

    if not has_validation or not os.path.isfile(best_path):
        # No validation split: the last epoch is the model.
        cb.save_model_atomically(embedding_model, best_path)
    best_model = keras.saving.load_model(best_path, compile=False)
    test = evaluate_model(best_model, splits, config, "test")
    validation = {}
    if has_validation:
        validation = evaluate_model(best_model, splits, config, "val", compute_nmi=False,
                                    per_group=False)["concatenated"]
    if config["projector_max_points"] > 0:
        write_final_projector(best_model, splits, config,
                              os.path.join(tensorboard_dir, "projector"),
                              config["projector_max_points"])
    summary = build_summary(
        config, test, best=tracker.state() if has_validation else {"metric": None},
        validation=validation,
        training={"epochs": config["epochs"], "steps_per_epoch": steps,
                  "resumed_at_epoch": start_epoch, "seconds_this_process": round(seconds, 1),
                  "train_classes": num_classes, "train_images": len(train_records),
                  "replicas": replicas})
    report = write_summary(output_dir, summary)
    if output_dir != config["output_dir"]:
        shutil.rmtree(output_dir, ignore_errors=True)  # a finished worker's scratch copy
        try:
            os.rmdir(os.path.dirname(output_dir))  # "workers/", once every worker is done
        except OSError:
            pass
    else:
        print(report)
    return summary


def config_from_flags(values: absl_flags.FlagValues = FLAGS) -> Dict[str, Any]:
    """The flag values as a plain dict, with the default output_dir filled in."""
    config = values.flag_values_dict()
    return dgml_flags.normalize_config({name: value for name, value in config.items()
                                        if name in _OWN_FLAGS})


def main(argv: List[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; every option is a --flag.")
    try:
        config = config_from_flags()
        for warning in dgml_flags.check_training_flags(config):
            logging.warning(warning)
    except dgml_flags.FlagValidationError as error:
        print(str(error), file=sys.stderr)
        sys.exit(1)
    # TF reads TF_ENABLE_ONEDNN_OPTS at import: decide before the first TensorFlow import.
    hardware.apply_onednn_default()
    from dgml_tf.callbacks.checkpointing import CheckpointError  # imports TensorFlow
    from dgml_tf.callbacks.nan_guard import NonFiniteLossError

    try:
        train(config)
    except (dgml_flags.FlagValidationError, CheckpointError, NonFiniteLossError) as error:
        print(str(error), file=sys.stderr)
        sys.exit(3 if isinstance(error, NonFiniteLossError) else 1)


def run(argv: Optional[List[str]] = None) -> None:
    """Console entry point (``dgml-train``): resolves bundled flagfiles, then parses flags."""
    try:
        argv = flagfiles.resolve_flagfile_args(argv or sys.argv)
    except flagfiles.UnknownFlagfileError as error:
        print(str(error), file=sys.stderr)
        sys.exit(2)
    app.run(main, argv=argv)


_OWN_FLAGS = frozenset(FLAGS) - _PREDEFINED

if __name__ == "__main__":
    run()
