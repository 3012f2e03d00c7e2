"""Training core: the metric-learning model, parameter-group optimizers, distribution.

* :class:`MetricLearningModel` — ``fit``/``evaluate``/``predict`` with a metric loss whose pairs
  span replicas under ``tf.distribute`` (exact single-device gradients on the global batch).
* :func:`build_grouped_optimizer`, :class:`GroupConfig`, :class:`StepSchedule`,
  :class:`GroupedOptimizer`, :class:`CoupledWeightDecayAdam` — per-group learning rates,
  schedules and (coupled or decoupled) weight decay.
* :func:`strategy_from_environment` and :class:`CustomLoopTrainer` (multi-worker training, where
  ``model.fit`` fails on TF 2.20).
* :func:`step_seed`, :func:`set_global_seed` — reproducible, resumable randomness.
* :func:`train` — one run from a run config (what ``python -m dgml_tf.train`` does), and the
  recipe it builds from the config: :func:`build_training_model`,
  :func:`embedding_model_from_config`, :func:`build_embedding_loss`, :func:`group_configs`
  (``dgml_tf.train.recipe``).

``MetricLearningModel``, the optimizers and the seeding run on every Keras backend; the
tf.distribute pieces (``CustomLoopTrainer``, ``strategy_from_environment``) import TensorFlow
when first used.
"""

from dgml_tf._lazy import lazy_exports

# Lazy: ``python -m dgml_tf.train`` imports this package before its CLI decides oneDNN, and
# that decision must come before Keras (and so TensorFlow) is first imported.
_EXPORTS = {
    "CoupledWeightDecayAdam": "dgml_tf.train.grouped_optimizer",
    "GroupedOptimizer": "dgml_tf.train.grouped_optimizer",
    "MetricLearningModel": "dgml_tf.train.metric_model",
    "LOSS_GROUP": "dgml_tf.train.group_names",
    "GroupConfig": "dgml_tf.train.parameter_groups",
    "StepSchedule": "dgml_tf.train.parameter_groups",
    "build_grouped_optimizer": "dgml_tf.train.parameter_groups",
    "set_global_seed": "dgml_tf.train.seeding",
    "step_seed": "dgml_tf.train.seeding",
    "CustomLoopTrainer": "dgml_tf.train.custom_loop",
    "strategy_from_environment": "dgml_tf.train.distribute",
    "build_embedding_loss": "dgml_tf.train.recipe",
    "build_training_model": "dgml_tf.train.recipe",
    "embedding_model_from_config": "dgml_tf.train.recipe",
    "group_configs": "dgml_tf.train.recipe",
    "train": "dgml_tf.train.training",
    # The console script dgml-train (setup.py) is dgml_tf.train:run.
    "run": "dgml_tf.train.cli",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
