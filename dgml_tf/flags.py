"""Command-line flags of the CLIs and their validation, shared by ``train`` and ``evaluate``.

The flags are defined in groups (data, model, training, output) so each CLI defines only what it
uses and no definition is copied between CLIs. Validation is plain Python over a flag-name ->
value mapping and never imports TensorFlow: a bad command fails in well under a second, before
any dataset is read or model built, with a message that names the problem and the fix.

Example:
    >>> from absl import flags as absl_flags
    >>> from dgml_tf import flags
    >>> values = absl_flags.FlagValues()
    >>> flags.define_data_flags(values)
    >>> flags.define_model_flags(values)
    >>> flags.define_training_flags(values)
    >>> _ = values(["train", "--dataset=fashion_mnist", "--num_groups=4", "--embedding_dim=128"])
    >>> flags.validate_training_flags(values.flag_values_dict())
    []
"""

from __future__ import annotations

import os
from typing import List, Mapping, Optional

from absl import flags as absl_flags

from dgml_tf.flag_parsing import define_alias  # noqa: F401 (the CLIs' old flag spellings)

# The name lists come from their registries (each importable without TensorFlow).
from dgml_tf.losses.registry import available_losses
from dgml_tf.models.names import BACKBONES, HEADS, PARAMETER_GROUP_NAMES
from pipelines.augmentations import AUGMENTATION_CHOICES as AUGMENTATIONS
from pipelines.registry import available_datasets

DATASETS = tuple(available_datasets())
# Datasets read from files under --data_dir; the others are generated or shipped in memory.
ON_DISK_DATASETS = ("cub", "cars196", "sop", "inshop")
# Datasets evaluated as query vs gallery instead of each test item against all the others.
QUERY_GALLERY_DATASETS = ("inshop",)
LOSSES = available_losses()
MIXED_PRECISION = ("auto", "none", "mixed_float16", "mixed_bfloat16")
# Flag value -> key of dgml_tf.evaluate.evaluate_retrieval's result.
SELECTION_METRICS = {"map_at_r": "map@r", "recall_at_1": "recall@1"}
NAMED_WEIGHTS = ("imagenet", "torchvision", "none")
# Learning rate of the margin loss' betas: the training recipe gives it to the optimizer's loss
# group (dgml_tf.train.group_names.LOSS_GROUP). The model's groups have --lr_<group>, --wd_<group>.
LOSS_LEARNING_RATE_FLAG = "lr_beta"


class FlagValidationError(ValueError):
    """Raised when flag values cannot work together; the message names each problem and fix."""


def define_data_flags(values: absl_flags.FlagValues = absl_flags.FLAGS) -> None:
    """Flags that choose a dataset and its splits (train and evaluate)."""
    absl_flags.DEFINE_enum("dataset", "fashion_mnist", DATASETS, "Dataset to train/evaluate on.",
                           flag_values=values)
    absl_flags.DEFINE_string("data_dir", None, "Root directory of an on-disk dataset (required for "
                             + ", ".join(ON_DISK_DATASETS) + ").", flag_values=values)
    absl_flags.DEFINE_float("val_classes", None, "Training classes held out as the validation "
                            "split (model selection): a fraction in (0, 1) or a count; 0 means no "
                            "validation (the last epoch is kept). Unset: the reader's default.",
                            flag_values=values)
    absl_flags.DEFINE_integer("image_size", 224, "Side of the square crop fed to the model.",
                              flag_values=values)
    absl_flags.DEFINE_integer("resize_size", 256, "Test-time resize before the centre crop.",
                              flag_values=values)
    absl_flags.DEFINE_integer("eval_batch_size", 64, "Batch size when embedding evaluation splits.",
                              flag_values=values)
    absl_flags.DEFINE_integer("seed", 0, "Seed of data splits, sampling, mining and init.",
                              flag_values=values)


def define_model_flags(values: absl_flags.FlagValues = absl_flags.FLAGS) -> None:
    """Flags that define the embedding model."""
    absl_flags.DEFINE_enum("backbone", "resnet50", BACKBONES, "CNN backbone.", flag_values=values)
    absl_flags.DEFINE_string("weights", "imagenet", "Backbone initialisation: imagenet, "
                             "torchvision (mobilenet_v2, offline), none, or a weights file path.",
                             flag_values=values)
    absl_flags.DEFINE_enum("head", "attentive", HEADS, "Embedding head: attentive grouping, "
                           "conventional grouping, or a single embedding.", flag_values=values)
    absl_flags.DEFINE_integer("num_groups", 3, "Number of groups K.", flag_values=values)
    absl_flags.DEFINE_integer("embedding_dim", 512, "Embedding size D; each group has D // K dims.",
                              flag_values=values)
    absl_flags.DEFINE_integer("reduction", 8, "Key channel reduction r (keys have C / r channels).",
                              flag_values=values)
    absl_flags.DEFINE_bool("projection", False, "Shared d x d projection after aggregation.",
                           flag_values=values)
    absl_flags.DEFINE_bool("freeze_bn", True, "Freeze BatchNorm statistics of the backbone.",
                           flag_values=values)
    absl_flags.DEFINE_bool("fold_batch_norm", True, "With --freeze_bn, fold each frozen "
                           "BatchNorm into the convolution before it: the same model and "
                           "gradients, a faster step (a run trained before this flag existed "
                           "did not fold).", flag_values=values)
    absl_flags.DEFINE_string("feature_layer", "", "Backbone layer whose feature map feeds the "
                             "head (empty: the last one), e.g. features_14_conv_0_2 for a "
                             "stride-16 torchvision mobilenet_v2 map.", flag_values=values)
    absl_flags.DEFINE_string("train_backbone_from", "", "Freeze the backbone layers before this "
                             "one (empty: fine-tune the whole backbone).", flag_values=values)


def define_training_flags(values: absl_flags.FlagValues = absl_flags.FLAGS) -> None:
    """Flags of the optimisation recipe, sampling, losses and run control."""
    absl_flags.DEFINE_enum("loss", "margin", LOSSES, "Embedding loss (applied per group).",
                           flag_values=values)
    absl_flags.DEFINE_float("lambda_div", 0.02, "Weight of the diversity loss.", flag_values=values)
    absl_flags.DEFINE_float("margin", 0.2, "Margin of the margin loss.", flag_values=values)
    absl_flags.DEFINE_float("beta_init", 1.2, "Initial learnable boundary beta of the margin loss.",
                            flag_values=values)
    absl_flags.DEFINE_integer("epochs", 100, "Training epochs.", flag_values=values)
    absl_flags.DEFINE_integer("steps_per_epoch", None, "Steps per epoch; default: training images "
                              "// batch size.", flag_values=values)
    absl_flags.DEFINE_integer("classes_per_batch", 56, "P: classes per batch.", flag_values=values)
    absl_flags.DEFINE_integer("images_per_class", 2, "K images per class in a batch.",
                              flag_values=values)
    absl_flags.DEFINE_bool("sample_with_replacement", True, "Draw a class's images with "
                           "replacement (as the authors' sampler).", flag_values=values)
    absl_flags.DEFINE_enum("augmentation", "auto", AUGMENTATIONS, "Training augmentation; auto: "
                           "random resized crop + flip for photos, small shifts for 28 px sets.",
                           flag_values=values)
    absl_flags.DEFINE_bool("hflip", True, "Random horizontal flips in the training augmentation "
                           "(--nohflip where a mirror image is another class, e.g. glyphs).",
                           flag_values=values)
    defaults = {"backbone": (1e-5, 0.003), "key_value": (1e-5, 0.003), "queries": (1e-5, 0.001)}
    for group in PARAMETER_GROUP_NAMES:
        lr, wd = defaults[group]
        absl_flags.DEFINE_float(f"lr_{group}", lr, f"Learning rate of the {group} parameters.",
                                flag_values=values)
        absl_flags.DEFINE_float(f"wd_{group}", wd, f"Weight decay of the {group} parameters.",
                                flag_values=values)
    absl_flags.DEFINE_float(LOSS_LEARNING_RATE_FLAG, 5e-5, "Learning rate of the margin loss "
                            "betas (no decay).", flag_values=values)
    absl_flags.DEFINE_bool("decoupled_weight_decay", False, "AdamW-style decoupled decay instead "
                           "of Adam's coupled L2 (the authors' form).", flag_values=values)
    absl_flags.DEFINE_list("lr_decay_epochs", ["55"], "Epochs after which lr is multiplied by "
                           "lr_decay_factor (comma-separated; empty for none).", flag_values=values)
    absl_flags.DEFINE_float("lr_decay_factor", 0.3, "Step decay factor.", flag_values=values)
    absl_flags.DEFINE_enum("mixed_precision", "auto", MIXED_PRECISION, "Keras dtype policy; "
                           "auto: mixed_bfloat16 where the hardware has bf16 arithmetic "
                           "(AVX512_BF16/AMX CPUs, GPUs of compute capability >= 8.0), else "
                           "none (float32). The choice is recorded in config.json (runtime).",
                           flag_values=values)
    absl_flags.DEFINE_bool("deterministic", None, "Bitwise-reproducible TF ops (what makes a "
                           "resumed run equal an uninterrupted one). Unset: on for CPU-only "
                           "training, where it is cheap, off on GPUs.", flag_values=values)
    absl_flags.DEFINE_bool("jit_compile", False, "XLA-compile the train step.", flag_values=values)
    absl_flags.DEFINE_integer("eval_max_per_class", None, "Validate and test on the first N "
                              "images of each class only (quick runs; unset: the full protocol).",
                              flag_values=values)
    absl_flags.DEFINE_integer("eval_every", 1, "Validate every N epochs (and after the last).",
                              flag_values=values)
    absl_flags.DEFINE_enum("selection_metric", "map_at_r", tuple(SELECTION_METRICS),
                           "Validation metric that picks the best checkpoint.", flag_values=values)
    absl_flags.DEFINE_integer("num_replicas", None, "Expected number of replicas (devices x "
                              "workers) for the early batch check; detected after start-up if "
                              "unset.", flag_values=values)


def define_output_flags(values: absl_flags.FlagValues = absl_flags.FLAGS) -> None:
    """Flags of the run directory and its logs."""
    absl_flags.DEFINE_string("output_dir", None, "Run directory (checkpoints, best.keras, logs).",
                             flag_values=values)
    absl_flags.DEFINE_bool("resume", True, "Continue from the run directory's last checkpoint if "
                           "there is one; --noresume starts over.", flag_values=values)
    absl_flags.DEFINE_integer("num_attention_images", 4, "Validation images whose attention maps "
                              "go to TensorBoard (0: none).", flag_values=values)
    absl_flags.DEFINE_integer("projector_max_points", 2000, "Test embeddings written to the "
                              "TensorBoard projector (0: none).", flag_values=values)
    absl_flags.DEFINE_integer("verbose", 1, "Keras progress: 0 silent, 1 bar, 2 one line/epoch.",
                              flag_values=values)


def group_dim(embedding_dim: int, num_groups: int) -> int:
    """Per-group dimension d = D // K (the retrieval embedding has K * d dims)."""
    return embedding_dim // num_groups


def check_weights(weights: str, backbone: str) -> Optional[str]:
    """Returns an error for a --weights value that cannot load for --backbone, else None."""
    if weights in NAMED_WEIGHTS:
        if weights == "torchvision" and backbone != "mobilenet_v2":
            return (f"--weights=torchvision exists only for --backbone=mobilenet_v2 (got "
                    f"--backbone={backbone}); use --weights=imagenet, none or a weights file.")
        if weights == "imagenet" and backbone == "small_cnn":
            return ("--backbone=small_cnn has no ImageNet weights; use --weights=none.")
        return None
    if not os.path.exists(weights):
        return (f"--weights={weights!r} is neither one of {', '.join(NAMED_WEIGHTS)} nor an "
                "existing file; give a valid path or a named initialisation.")
    return None


def validate_training_flags(values: Mapping[str, object],
                            num_replicas: Optional[int] = None) -> List[str]:
    """All problems of a training configuration, as messages naming the fix (empty if none).

    Args:
        values: flag name -> value (``FLAGS.flag_values_dict()``).
        num_replicas: replicas the global batch is split over; defaults to ``--num_replicas``.
            Checked again once the distribution strategy exists.

    Returns:
        A list of error messages; warnings are available from :func:`training_warnings`.
    """
    replicas = num_replicas if num_replicas is not None else values.get("num_replicas")
    return [*_model_errors(values), *_data_errors(values), *_batch_errors(values, replicas),
            *_size_and_schedule_errors(values), *_optimizer_errors(values)]


def _model_errors(values: Mapping[str, object]) -> List[str]:
    """Problems of --num_groups, --embedding_dim, --head and --reduction."""
    errors: List[str] = []
    get = values.get
    k, dim = get("num_groups"), get("embedding_dim")
    if k is not None and k < 1:
        errors.append(f"--num_groups={k} must be >= 1 (the paper uses 3).")
    elif k is not None and dim is not None:
        if dim < k:
            errors.append(f"--embedding_dim={dim} is smaller than --num_groups={k}: each group "
                          f"would have D // K = {group_dim(dim, k)} dims. Use --embedding_dim >= "
                          f"{2 * k} (e.g. 512 with K=3 gives 170 per group).")
        elif group_dim(dim, k) < 2:
            errors.append(f"--embedding_dim={dim} with --num_groups={k} gives D // K = "
                          f"{group_dim(dim, k)} dim per group; unit vectors of 1 dim are only "
                          f"+-1. Use --embedding_dim >= {2 * k}.")
    if get("head") == "single" and k not in (None, 1):
        errors.append(f"--head=single has exactly one embedding, but --num_groups={k}; pass "
                      "--num_groups=1 (or choose --head=attentive/grouping).")
    if get("reduction") is not None and get("reduction") < 1:
        errors.append(f"--reduction={get('reduction')} must be >= 1 (the paper uses 8).")
    return errors


def _data_errors(values: Mapping[str, object]) -> List[str]:
    """Problems of --dataset with --data_dir."""
    dataset, data_dir = values.get("dataset"), values.get("data_dir")
    if dataset in ON_DISK_DATASETS:
        if not data_dir:
            return [f"--dataset={dataset} is read from disk: pass --data_dir=<directory "
                    f"holding the extracted {dataset} files>."]
        if not os.path.isdir(data_dir):
            return [f"--data_dir={data_dir!r} does not exist or is not a directory; point "
                    f"it at the extracted {dataset} dataset."]
    elif data_dir and not os.path.isdir(data_dir):
        return [f"--data_dir={data_dir!r} does not exist; create it or leave it unset."]
    return []


def _batch_errors(values: Mapping[str, object], replicas: Optional[int]) -> List[str]:
    """Problems of the P x K batch and its split over ``replicas``."""
    errors: List[str] = []
    p, m = values.get("classes_per_batch"), values.get("images_per_class")
    if p is not None and p < 2:
        errors.append(f"--classes_per_batch={p}: a batch needs >= 2 classes to have negatives.")
    if m is not None and m < 2:
        errors.append(f"--images_per_class={m}: a batch needs >= 2 images per class to have "
                      "positives.")
    if replicas is not None and p and m and p >= 1 and m >= 1:
        if replicas < 1:
            errors.append(f"--num_replicas={replicas} must be >= 1.")
        elif (p * m) % replicas:
            errors.append(f"The global batch --classes_per_batch x --images_per_class = {p} x {m} "
                          f"= {p * m} is not divisible by the {replicas} replicas; pick "
                          f"classes_per_batch so that P x K is a multiple of {replicas} (e.g. "
                          f"--classes_per_batch={_round_up_batch(p, m, replicas)}).")
    return errors


def _size_and_schedule_errors(values: Mapping[str, object]) -> List[str]:
    """Problems of the image sizes, the epoch/evaluation counts and --val_classes."""
    errors: List[str] = []
    get = values.get
    size, resize = get("image_size"), get("resize_size")
    if size is not None and size < 8:
        errors.append(f"--image_size={size} is too small; use >= 8 (224 for ResNet50).")
    if size is not None and resize is not None and resize < size:
        errors.append(f"--resize_size={resize} is smaller than --image_size={size}; the centre "
                      f"crop needs resize_size >= image_size (e.g. {round(size * 256 / 224)}).")
    for name in ("epochs", "eval_every", "eval_batch_size", "eval_max_per_class"):
        if get(name) is not None and get(name) < 1:
            errors.append(f"--{name}={get(name)} must be >= 1.")
    if get("steps_per_epoch") is not None and get("steps_per_epoch") < 1:
        errors.append(f"--steps_per_epoch={get('steps_per_epoch')} must be >= 1 (or unset).")
    val = get("val_classes")
    if val is not None and (val < 0 or (val >= 1 and not float(val).is_integer())):
        errors.append(f"--val_classes={val} must be 0 (no validation), a fraction in (0, 1) or "
                      "a whole number of classes.")
    return errors


def _optimizer_errors(values: Mapping[str, object]) -> List[str]:
    """Problems of the per-group rates and decays, --lambda_div, the decay and --weights."""
    errors: List[str] = []
    get = values.get
    for lr_flag, wd_flag in [*((f"lr_{g}", f"wd_{g}") for g in PARAMETER_GROUP_NAMES),
                             (LOSS_LEARNING_RATE_FLAG, None)]:
        lr = get(lr_flag)
        if lr is not None and not lr > 0:
            errors.append(f"--{lr_flag}={lr} must be > 0.")
        wd = get(wd_flag) if wd_flag else None
        if wd is not None and wd < 0:
            errors.append(f"--{wd_flag}={wd} must be >= 0.")
    if get("lambda_div") is not None and get("lambda_div") < 0:
        errors.append(f"--lambda_div={get('lambda_div')} must be >= 0.")
    factor = get("lr_decay_factor")
    if factor is not None and not 0 < factor <= 1:
        errors.append(f"--lr_decay_factor={factor} must be in (0, 1].")
    try:
        decay_epochs(values)
    except FlagValidationError as error:
        errors.append(str(error))
    weights, backbone = get("weights"), get("backbone")
    if weights is not None and backbone is not None:
        problem = check_weights(weights, backbone)
        if problem:
            errors.append(problem)
    return errors


def training_warnings(values: Mapping[str, object]) -> List[str]:
    """Advisory messages: valid settings that are likely unintended or slow."""
    warnings: List[str] = []
    k, dim = values.get("num_groups"), values.get("embedding_dim")
    if k and dim and k >= 1 and dim >= k and dim % k:
        warnings.append(f"--embedding_dim={dim} is not divisible by --num_groups={k}: each group "
                        f"gets D // K = {dim // k} dims, so the embedding has {k * (dim // k)} "
                        "dims (the paper's 512 / 3 -> 510 behaves the same way).")
    if values.get("val_classes") == 1:
        warnings.append("--val_classes=1: a validation split of one class ranks every item as "
                        "relevant, so its metrics are always 100% and cannot select a model; use "
                        ">= 2 classes or 0.")
    from dgml_tf import hardware

    if values.get("mixed_precision") == "mixed_bfloat16" and not hardware.cpu_has_bf16():
        warnings.append("--mixed_precision=mixed_bfloat16 is slow without bfloat16 hardware "
                        "(CPUs without AMX/AVX512-BF16, most GPUs before Ampere); use none or "
                        "mixed_float16 there.")
    return warnings


def decay_epochs(values: Mapping[str, object]) -> List[int]:
    """The --lr_decay_epochs as sorted positive integers (raises FlagValidationError)."""
    raw = values.get("lr_decay_epochs") or []
    try:
        epochs = sorted(int(str(e).strip()) for e in raw if str(e).strip())
    except ValueError:
        raise FlagValidationError(f"--lr_decay_epochs={','.join(map(str, raw))} must be "
                                  "comma-separated integers (e.g. 55 or 100,150).") from None
    if any(e < 1 for e in epochs):
        raise FlagValidationError(f"--lr_decay_epochs={epochs} must be >= 1.")
    return epochs


def check_training_flags(values: Mapping[str, object],
                         num_replicas: Optional[int] = None) -> List[str]:
    """Raises FlagValidationError listing every problem; returns the warnings otherwise."""
    errors = validate_training_flags(values, num_replicas)
    if errors:
        raise FlagValidationError("Invalid flags:\n  - " + "\n  - ".join(errors))
    return training_warnings(values)


def _round_up_batch(p: int, m: int, replicas: int) -> int:
    candidate = p
    while (candidate * m) % replicas:
        candidate += 1
    return candidate


# Flags that may differ between a run and its continuation: they change logging, evaluation
# batching or where files live, not what is trained.
# ``deterministic`` changes reduction order, not the recipe; ``runtime`` holds what the machine
# decided (oneDNN, the resolved precision), compared through the effective precision below.
# What a run config written before a flag existed trained with, where that differs from the
# flag's default: runs before --fold_batch_norm kept Conv2D and BatchNorm apart (their
# checkpoints hold those layers' weights).
LEGACY_FLAG_VALUES = {"fold_batch_norm": False}

RESUME_INSENSITIVE_FLAGS = frozenset({
    "verbose", "resume", "output_dir", "data_dir", "eval_batch_size", "num_attention_images",
    "projector_max_points", "deterministic", "runtime",
})


def effective_mixed_precision(config: Mapping[str, object]) -> object:
    """The policy a run config trains (or trained) with: the recorded runtime decision, else
    ``--mixed_precision`` resolved for this machine's CPU (a run from before ``auto`` existed
    stored ``none``, which ``auto`` equals on a machine without bf16)."""
    from dgml_tf import hardware

    runtime = config.get("runtime")
    if isinstance(runtime, Mapping) and runtime.get("mixed_precision"):
        return runtime["mixed_precision"]
    value = config.get("mixed_precision")
    return hardware.resolve_mixed_precision(value) if isinstance(value, str) else value


def normalize_config(config: Mapping[str, object]) -> dict:
    """train.py's run config from raw flag values: sorted keys, the decay epochs as a list and
    the default output_dir filled in (``runs/<dataset>``)."""
    config = {name: config[name] for name in sorted(config)}
    config["lr_decay_epochs"] = decay_epochs(config)
    config["output_dir"] = config["output_dir"] or os.path.join("runs", str(config["dataset"]))
    return config


def _training_flag_values() -> absl_flags.FlagValues:
    values = absl_flags.FlagValues()
    for define in (define_data_flags, define_model_flags, define_training_flags,
                   define_output_flags):
        define(values)
    return values


def training_config_from_args(argv: List[str]) -> dict:
    """The run config ``python -m dgml_tf.train *argv`` would use (flagfiles resolved by bare
    name), parsed into fresh FlagValues without importing TensorFlow."""
    from dgml_tf import flagfiles

    values = _training_flag_values()
    values(flagfiles.resolve_flagfile_args(["train", *argv]))
    return normalize_config(values.flag_values_dict())


def changed_training_flags(stored: Mapping[str, object], config: Mapping[str, object]) -> List[str]:
    """``--flag: old -> new`` for every flag that changes what a run trains (JSON-normalised,
    so a stored config.json compares equal to the live config it was written from)."""
    import json

    values = _training_flag_values()
    # A run written before a flag existed ran with that flag's default, or with the behaviour
    # of its time where the flag changed it (LEGACY_FLAG_VALUES).
    stored = {**{name: values[name].default for name in values}, **LEGACY_FLAG_VALUES,
              **dict(stored)}
    old, new = (json.loads(json.dumps(dict(c), default=str)) for c in (stored, config))
    for c in (old, new):  # folding only changes a model whose BatchNorms are frozen
        c["fold_batch_norm"] = bool(c.get("fold_batch_norm")) and bool(c.get("freeze_bn"))
    changed = [f"--{name}: {old.get(name)!r} -> {new.get(name)!r}"
               for name in sorted(set(old) | set(new))
               if name not in RESUME_INSENSITIVE_FLAGS | {"mixed_precision"}
               and old.get(name) != new.get(name)]
    before, after = effective_mixed_precision(old), effective_mixed_precision(new)
    recorded = all(isinstance(c.get("runtime"), Mapping) for c in (old, new))
    # Same flag value and one side without this machine's decision (the main job compares
    # before TensorFlow can see the GPUs): the same run.
    same_flag = old.get("mixed_precision") == new.get("mixed_precision") and not recorded
    if before != after and not same_flag:
        changed.append(f"--mixed_precision: {old.get('mixed_precision')!r} ({before}) -> "
                       f"{new.get('mixed_precision')!r} ({after})")
    return sorted(changed)
