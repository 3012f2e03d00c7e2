"""Input pipelines: dataset readers (one module per dataset) and tf.data pipelines.

``load_dataset(name, root, val_classes, seed)`` reads a dataset's own archive layout into
:class:`pipelines.records.DatasetSplits`; ``make_train_dataset`` / ``make_eval_dataset`` turn
records into (images, labels) batches of float32 RGB in [0, 255] (the model normalises).
"""

from pipelines.errors import DatasetLayoutError, UnknownDatasetError
from pipelines.records import DatasetSplits, Record, SkippedFile, labels_of
from pipelines.registry import available_datasets, load_dataset, register_dataset
from pipelines.validation_split import carve_validation

__all__ = [
    "DatasetLayoutError",
    "DatasetSplits",
    "Record",
    "SkippedFile",
    "UnknownDatasetError",
    "available_datasets",
    "build_train_pipeline",
    "carve_validation",
    "check_image_files",
    "decode_to_array",
    "labels_of",
    "load_dataset",
    "make_eval_dataset",
    "make_train_dataset",
    "register_dataset",
    "ClassBalancedSampler",
]

_TF_EXPORTS = {
    "build_train_pipeline": "pipelines.image_pipeline",
    "make_train_dataset": "pipelines.image_pipeline",
    "make_eval_dataset": "pipelines.image_pipeline",
    "decode_to_array": "pipelines.image_pipeline",
    "check_image_files": "pipelines.image_check",
    "ClassBalancedSampler": "pipelines.sampling",
}


def __getattr__(name):
    # The readers need only NumPy; TensorFlow (~8 s to import) loads when a pipeline is asked for.
    if name in _TF_EXPORTS:
        import importlib

        return getattr(importlib.import_module(_TF_EXPORTS[name]), name)
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
