"""The run directory: what ``python -m dgml_tf.train --output_dir=DIR`` writes, in one place.

Train writes it; evaluate, explain, export and the main job read it. Every path, the stored
config, the model and the dataset splits the run used come from here, so the layout is spelled
once::

    DIR/config.json             every flag value (+ ``runtime``: what this machine decided)
    DIR/checkpoints/            the last two epochs' model + optimizer state (resume)
    DIR/best.keras              embedding model of the best validation epoch
    DIR/model.keras             (older runs / user exports) the final embedding model
    DIR/summary.json, .md       test metrics of best.keras
    DIR/eval_<split>[_per_class].json, .md   what ``dgml_tf.evaluate`` wrote
    DIR/tensorboard/            logs, attention images, the embedding projector
    DIR/set_aside/<time>-<why>/ earlier runs moved aside by ``--noresume`` (never deleted)

Example:
    >>> run = RunDir("runs/fm")
    >>> run.best_model_path
    'runs/fm/best.keras'
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Mapping, Optional, Tuple, Union

CONFIG = "config.json"
BEST_MODEL = "best.keras"
FINAL_MODEL = "model.keras"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
# Model files a run directory may hold, in the order they are preferred.
MODEL_FILES = (BEST_MODEL, FINAL_MODEL)
# Config keys that say which data a run saw: evaluate and explain inherit them from the run.
DATA_KEYS = ("dataset", "data_dir", "val_classes", "image_size", "resize_size", "seed")


def eval_file_names(split: str, per_class: bool = False) -> Tuple[str, str]:
    """``(json, markdown)`` names of what ``dgml_tf.evaluate`` writes for ``split``."""
    stem = f"eval_{split}_per_class" if per_class else f"eval_{split}"
    return f"{stem}.json", f"{stem}.md"


# What a run writes (and --noresume sets aside): its results, not the dataset cache files.
RUN_ARTIFACTS = (CHECKPOINTS, BEST_MODEL, CONFIG, SUMMARY_JSON, SUMMARY_MD, TENSORBOARD,
                 *eval_file_names("test"), *eval_file_names("val"),
                 *eval_file_names("test", True), *eval_file_names("val", True))


def val_classes_argument(value: Union[int, float]) -> Union[int, float]:
    """``--val_classes`` as ``pipelines.load_dataset`` wants it: an int count or a fraction."""
    return int(value) if float(value).is_integer() else float(value)


def load_splits(config: Mapping[str, Any]):
    """The dataset splits a run with ``config`` used (same classes held out, same seed).

    Args:
        config: a run config (``config.json``) or flag values with ``dataset``, ``data_dir``,
            ``val_classes`` (None: the reader's default) and ``seed``.

    Returns:
        ``pipelines.DatasetSplits``.
    """
    import pipelines

    val = config.get("val_classes")
    return pipelines.load_dataset(
        config["dataset"], config.get("data_dir"),
        **({} if val is None else {"val_classes": val_classes_argument(val)}),
        seed=int(config.get("seed") or 0))


@dataclasses.dataclass(frozen=True)
class RunDir:
    """A training run's output directory.

    Args:
        path: the ``--output_dir`` of ``python -m dgml_tf.train`` (it need not exist yet).
    """

    path: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", os.fspath(self.path))

    def join(self, *names: str) -> str:
        return os.path.join(self.path, *names)

    @property
    def config_path(self) -> str:
        return self.join(CONFIG)

    @property
    def best_model_path(self) -> str:
        return self.join(BEST_MODEL)

    @property
    def checkpoint_dir(self) -> str:
        return self.join(CHECKPOINTS)

    @property
    def tensorboard_dir(self) -> str:
        return self.join(TENSORBOARD)

    @property
    def summary_path(self) -> str:
        return self.join(SUMMARY_JSON)

    def eval_paths(self, split: str, per_class: bool = False) -> Tuple[str, str]:
        """``(json, markdown)`` paths of what ``dgml_tf.evaluate`` writes for ``split``."""
        return tuple(self.join(n) for n in eval_file_names(split, per_class))

    def exists(self) -> bool:
        return os.path.isdir(self.path)

    def require(self, flag: str = "--run_dir") -> "RunDir":
        """Returns self, or raises naming ``flag`` when the directory does not exist."""
        if not self.exists():
            raise FileNotFoundError(f"{flag}={self.path!r} is not a directory; pass the "
                                    "--output_dir of a training run.")
        return self

    def has_config(self) -> bool:
        return os.path.isfile(self.config_path)

    def read_config(self) -> Dict[str, Any]:
        """The run's ``config.json``; ``{}`` when the run has none (e.g. a bare model dir)."""
        if not self.has_config():
            return {}
        with open(self.config_path, encoding="utf-8") as handle:
            return json.load(handle)

    def model_path(self, required: bool = True) -> Optional[str]:
        """The run's servable model: ``best.keras``, else ``model.keras``."""
        for name in MODEL_FILES:
            path = self.join(name)
            if os.path.isfile(path):
                return path
        if not required:
            return None
        raise FileNotFoundError(
            f"--run_dir {self.path!r} has neither {' nor '.join(MODEL_FILES)}. Point --run_dir "
            "at a dgml_tf.train output directory, or pass --keras_model=<file.keras>.")

    def load_model(self):
        """The run's embedding model (see :meth:`model_path`)."""
        from dgml_tf.models.saving import load_keras_model

        return load_keras_model(self.model_path())

    def load_splits(self, overrides: Optional[Mapping[str, Any]] = None):
        """The splits this run used (its config, with ``overrides`` on top)."""
        return load_splits({**self.read_config(), **dict(overrides or {})})
