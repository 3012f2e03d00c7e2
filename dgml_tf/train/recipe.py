"""The training recipe of a run config: model, loss, optimizer groups and the epoch's batches.

A run config is the flag values of ``python -m dgml_tf.train`` as a dict (``config.json``, or
``dgml_tf.flags.training_config_from_args``). Everything here is a function of that config, so
the CLI, the benchmarks and the tests build exactly the same model from the same flags.

Example:
    >>> from dgml_tf import flags
    >>> config = flags.training_config_from_args(["--flagfile=cub.flags", "--weights=none"])
    >>> embedding_model, model = build_training_model(config, num_classes=100,
    ...                                               steps_per_epoch=50)  # doctest: +SKIP

Nothing heavy is imported at module level (importing this module does not import TensorFlow).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from dgml_tf.train.group_names import LOSS_GROUP


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of epoch ``epoch``'s training stream: a fixed function of (seed, epoch)."""
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + 1) % (2**31 - 1)


def contiguous_labels(records: list) -> list:
    """Training records relabelled 0..C-1 (the margin loss keeps one beta per training class)."""
    from pipelines.records import Record

    classes = {label: i for i, label in enumerate(sorted({r.label for r in records}))}
    return [Record(r.source, classes[r.label], r.item_id) for r in records]


def default_steps_per_epoch(config: Mapping[str, Any], num_train: int) -> int:
    """Training images // global batch (at least 1): ``--steps_per_epoch`` when unset."""
    return max(1, num_train // (config["classes_per_batch"] * config["images_per_class"]))


def group_configs(config: Mapping[str, Any]) -> dict:
    """Optimizer settings of the parameter groups from the lr_*/wd_* flags.

    The model's groups (``dgml_tf.models.names.PARAMETER_GROUP_NAMES``) take ``--lr_<group>``
    and ``--wd_<group>``; the loss group (the margin betas, :data:`LOSS_GROUP`) takes
    ``dgml_tf.flags.LOSS_LEARNING_RATE_FLAG`` (``--lr_beta``) and no weight decay.

    Returns:
        Group name -> :class:`dgml_tf.train.GroupConfig`, all with the step decay of
        ``--lr_decay_epochs`` / ``--lr_decay_factor``.
    """
    from dgml_tf import flags as dgml_flags
    from dgml_tf.models.names import PARAMETER_GROUP_NAMES
    from dgml_tf.train.parameter_groups import GroupConfig, StepSchedule

    boundaries = dgml_flags.decay_epochs(config)
    schedule = StepSchedule(tuple(boundaries), config["lr_decay_factor"]) if boundaries else None

    def group(lr, wd):
        return GroupConfig(lr, wd, decoupled=config["decoupled_weight_decay"], schedule=schedule)

    groups = {name: group(config[f"lr_{name}"], config[f"wd_{name}"])
              for name in PARAMETER_GROUP_NAMES}
    groups[LOSS_GROUP] = group(config[dgml_flags.LOSS_LEARNING_RATE_FLAG], 0.0)
    return groups


def embedding_model_from_config(config: Mapping[str, Any]):
    """The embedding model the flags describe (:func:`dgml_tf.models.build_embedding_model`)."""
    from dgml_tf.models import build_embedding_model

    weights = None if config["weights"] == "none" else config["weights"]
    return build_embedding_model(
        backbone=config["backbone"], input_shape=(config["image_size"], config["image_size"], 3),
        weights=weights, head=config["head"], num_groups=config["num_groups"],
        embedding_dim=config["embedding_dim"], reduction=config["reduction"],
        freeze_batch_norm=config["freeze_bn"], projection=config["projection"],
        fold_batch_norm=config.get("fold_batch_norm", False),
        feature_layer=config.get("feature_layer") or None,
        trainable_from=config.get("train_backbone_from") or None)


def build_embedding_loss(config: Mapping[str, Any], num_classes: int):
    """The per-group embedding loss ``--loss`` names (:func:`dgml_tf.losses.get_loss`)."""
    from dgml_tf.losses.registry import get_loss

    k = 1 if config["head"] == "single" else config["num_groups"]
    return get_loss(config["loss"], num_classes=num_classes, num_groups=k,
                    margin=config["margin"], initial_beta=config["beta_init"],
                    seed=config["seed"])


def build_training_model(config: Mapping[str, Any], num_classes: int, steps_per_epoch: int):
    """(embedding model, compiled MetricLearningModel), built in the current strategy scope.

    Args:
        config: the run config.
        num_classes: training classes (the margin loss has one beta per class).
        steps_per_epoch: optimizer steps per epoch (places the lr decay boundaries).
    """
    from dgml_tf.train.metric_model import MetricLearningModel
    from dgml_tf.train.parameter_groups import build_grouped_optimizer

    embedding_model = embedding_model_from_config(config)
    model = MetricLearningModel(embedding_model, build_embedding_loss(config, num_classes),
                                diversity_weight=config["lambda_div"], seed=int(config["seed"]))
    optimizer = build_grouped_optimizer(model, group_configs(config), steps_per_epoch)
    model.compile(optimizer=optimizer, jit_compile=config["jit_compile"])
    return embedding_model, model


def make_epoch_dataset(config: Mapping[str, Any], train_records: list, arrays, epoch: int,
                       num_replicas: int, cache_dir: Optional[str]):
    """The training batches of one epoch, seeded from (seed, epoch)."""
    import pipelines
    from pipelines.augmentations import resolve_augmentation

    crops = resolve_augmentation(config["augmentation"], config["image_size"])
    return pipelines.make_train_dataset(
        train_records, arrays, batch_classes=config["classes_per_batch"],
        images_per_class=config["images_per_class"], image_size=config["image_size"],
        resize_size=config["resize_size"], seed=epoch_seed(config["seed"], epoch),
        augment=crops is not None, replace=config["sample_with_replacement"],
        num_replicas=num_replicas, cache_dir=cache_dir, flip=config.get("hflip", True),
        **(crops or {}))
