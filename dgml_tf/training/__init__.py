"""Training core: the metric-learning model, parameter-group optimizers, distribution.

* :class:`MetricLearningModel` — ``fit``/``evaluate``/``predict`` with a metric loss whose pairs
  span replicas under ``tf.distribute`` (exact single-device gradients on the global batch).
* :func:`build_grouped_optimizer`, :class:`GroupConfig`, :class:`StepSchedule`,
  :class:`GroupedOptimizer`, :class:`CoupledWeightDecayAdam` — per-group learning rates,
  schedules and (coupled or decoupled) weight decay.
* :func:`strategy_from_environment` and :class:`CustomLoopTrainer` (multi-worker training, where
  ``model.fit`` fails on TF 2.20).
* :func:`step_seed`, :func:`set_global_seed` — reproducible, resumable randomness.

``MetricLearningModel``, the optimizers and the seeding run on every Keras backend; the
tf.distribute pieces (``CustomLoopTrainer``, ``strategy_from_environment``) import TensorFlow
when first used.
"""

from dgml_tf.training.grouped_optimizer import CoupledWeightDecayAdam, GroupedOptimizer
from dgml_tf.training.metric_model import MetricLearningModel
from dgml_tf.training.parameter_groups import (
    LOSS_GROUP,
    GroupConfig,
    StepSchedule,
    build_grouped_optimizer,
)
from dgml_tf.training.seeding import set_global_seed, step_seed

_TENSORFLOW_ONLY = {
    "CustomLoopTrainer": "dgml_tf.training.custom_loop",
    "strategy_from_environment": "dgml_tf.training.distribute",
}


def __getattr__(name: str):
    # Lazy: these need TensorFlow, the rest of the package does not (PEP 562).
    if name in _TENSORFLOW_ONLY:
        import importlib

        return getattr(importlib.import_module(_TENSORFLOW_ONLY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "LOSS_GROUP",
    "CoupledWeightDecayAdam",
    "CustomLoopTrainer",
    "GroupConfig",
    "GroupedOptimizer",
    "MetricLearningModel",
    "StepSchedule",
    "build_grouped_optimizer",
    "set_global_seed",
    "step_seed",
    "strategy_from_environment",
]
