"""Per-group optimizer settings (learning rate, schedule, weight decay) and the builder.

The reference (PyTorch Adam with parameter groups) trains four groups differently:

=============  ==========================================  ===============================
group          variables                                   reference setting (CUB)
=============  ==========================================  ===============================
backbone       CNN weights                                 lr 1e-5, L2 3e-3
key_value      key/value 1x1 convs, projection/head dense  lr 1e-5, L2 3e-3
queries        the K group queries                         lr 1e-5, L2 1e-3
loss           loss variables (margin-loss betas)          lr 5e-5, no decay
=============  ==========================================  ===============================

all with the learning rate multiplied by 0.3 after epoch 55. :func:`build_grouped_optimizer`
turns one :class:`GroupConfig` per group into a :class:`GroupedOptimizer`.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence

import keras

from dgml_tf.train.group_names import LOSS_GROUP
from dgml_tf.train.grouped_optimizer import CoupledWeightDecayAdam, GroupedOptimizer

__all__ = ["LOSS_GROUP", "GroupConfig", "StepSchedule", "build_grouped_optimizer"]


@dataclasses.dataclass(frozen=True)
class StepSchedule:
    """Multiply the learning rate by ``factor`` after each boundary epoch.

    Like PyTorch's ``MultiStepLR(milestones=boundaries_epochs, gamma=factor)`` stepped once per
    epoch: with ``boundaries_epochs=(55,)`` epochs 0..54 (0-based) use the base rate and epoch 55
    onwards ``factor`` times it, i.e. optimizer step ``i`` uses the reduced rate once
    ``i >= 55 * steps_per_epoch``.

    Args:
        boundaries_epochs: strictly increasing positive epoch numbers.
        factor: multiplier applied at every boundary (cumulative), in (0, 1] typically.
    """

    boundaries_epochs: Sequence[int] = (55,)
    factor: float = 0.3

    def __post_init__(self):
        epochs = tuple(int(e) for e in self.boundaries_epochs)
        if any(e <= 0 for e in epochs) or any(b <= a for a, b in zip(epochs, epochs[1:])):
            raise ValueError(
                f"boundaries_epochs must be strictly increasing positive epochs, got "
                f"{self.boundaries_epochs}."
            )
        if not self.factor > 0:
            raise ValueError(f"factor must be > 0, got {self.factor}.")
        object.__setattr__(self, "boundaries_epochs", epochs)

    def to_keras(
        self, learning_rate: float, steps_per_epoch: int
    ) -> keras.optimizers.schedules.LearningRateSchedule:
        """The equivalent per-step Keras schedule (``PiecewiseConstantDecay``)."""
        if not self.boundaries_epochs:
            raise ValueError("A StepSchedule without boundaries is a constant rate: use None.")
        # Keras uses values[k] while step <= boundaries[k]; step i must switch at i == E * spe.
        boundaries = [e * steps_per_epoch - 1 for e in self.boundaries_epochs]
        values = [learning_rate * self.factor**k for k in range(len(boundaries) + 1)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


@dataclasses.dataclass(frozen=True)
class GroupConfig:
    """Optimizer settings of one parameter group (Adam family).

    Args:
        learning_rate: base learning rate (> 0).
        weight_decay: decay coefficient (>= 0).
        decoupled: False: coupled L2 added to the gradient (PyTorch ``Adam(weight_decay)``, the
            reference); True: decoupled AdamW decay ``w <- w - lr * weight_decay * w``.
        schedule: optional :class:`StepSchedule`; None keeps the rate constant.
        beta_1, beta_2: Adam moment decay rates.
        epsilon: Adam's epsilon (PyTorch's default 1e-8, not Keras' 1e-7).

    Example:
        >>> GroupConfig(1e-5, weight_decay=3e-3, schedule=StepSchedule((55,), 0.3))
    """

    learning_rate: float
    weight_decay: float = 0.0
    decoupled: bool = False
    schedule: Optional[StepSchedule] = None
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-8

    def __post_init__(self):
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}.")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}.")

    def build_optimizer(self, steps_per_epoch: int, name: str) -> keras.optimizers.Optimizer:
        """Builds this group's Keras optimizer."""
        learning_rate = (
            self.schedule.to_keras(self.learning_rate, steps_per_epoch)
            if self.schedule is not None and self.schedule.boundaries_epochs
            else float(self.learning_rate)
        )
        common = dict(
            learning_rate=learning_rate,
            beta_1=self.beta_1,
            beta_2=self.beta_2,
            epsilon=self.epsilon,
            name=name,
        )
        if self.weight_decay and self.decoupled:
            return keras.optimizers.AdamW(weight_decay=self.weight_decay, **common)
        if self.weight_decay:
            return CoupledWeightDecayAdam(l2=self.weight_decay, **common)
        return keras.optimizers.Adam(**common)


def build_grouped_optimizer(
    model,
    groups: Mapping[str, GroupConfig],
    steps_per_epoch: int,
    variable_groups: Optional[Mapping[str, list]] = None,
    name: str = "grouped_optimizer",
) -> GroupedOptimizer:
    """Builds a :class:`GroupedOptimizer` with one Adam-family optimizer per parameter group.

    Args:
        model: a :class:`dgml_tf.train.MetricLearningModel` (its ``parameter_groups()`` names
            "backbone", "key_value", "queries" and "loss") or any object with a
            ``parameter_groups()`` method; ignored when ``variable_groups`` is given.
        groups: mapping group name -> :class:`GroupConfig`. Every group that has trainable
            variables needs a config; configs for groups that exist but are empty (e.g.
            "queries" with a baseline head) are allowed.
        steps_per_epoch: optimizer steps per epoch, to place the schedule boundaries.
        variable_groups: optional explicit mapping group name -> variables.
        name: optimizer name.

    Returns:
        The optimizer; pass it to ``model.compile(optimizer=...)`` (under the strategy scope).

    Raises:
        ValueError: for an unknown group name, a group with variables but no config, a trainable
            variable in no group, or a non-positive ``steps_per_epoch``.

    Example:
        >>> optimizer = build_grouped_optimizer(model, {
        ...     "backbone": GroupConfig(1e-5, 3e-3, schedule=StepSchedule((55,), 0.3)),
        ...     "key_value": GroupConfig(1e-5, 3e-3, schedule=StepSchedule((55,), 0.3)),
        ...     "queries": GroupConfig(1e-5, 1e-3, schedule=StepSchedule((55,), 0.3)),
        ...     "loss": GroupConfig(5e-5, 0.0, schedule=StepSchedule((55,), 0.3)),
        ... }, steps_per_epoch=100)
        >>> model.compile(optimizer=optimizer)
    """
    if not isinstance(steps_per_epoch, int) or steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be a positive int, got {steps_per_epoch!r}.")
    if variable_groups is None:
        if not hasattr(model, "parameter_groups"):
            raise ValueError(
                "build_grouped_optimizer needs a MetricLearningModel (with parameter_groups()) "
                "or an explicit variable_groups={group: [variables]}."
            )
        variable_groups = model.parameter_groups()
    variable_groups = {group: list(variables) for group, variables in variable_groups.items()}
    for group, config in groups.items():
        if group not in variable_groups:
            raise ValueError(
                f"Unknown parameter group {group!r}; this model has groups "
                f"{sorted(variable_groups)}."
            )
        if not isinstance(config, GroupConfig):
            raise ValueError(f"groups[{group!r}] must be a GroupConfig, got {config!r}.")
    missing = sorted(g for g, v in variable_groups.items() if v and g not in groups)
    if missing:
        raise ValueError(
            f"Parameter group(s) {missing} have trainable variables but no GroupConfig; "
            f"add them to `groups` (given: {sorted(groups)})."
        )
    trainable = getattr(model, "trainable_variables", None) if model is not None else None
    if trainable is not None:
        grouped = {id(v) for variables in variable_groups.values() for v in variables}
        orphans = [v.path for v in trainable if id(v) not in grouped]
        if orphans:
            raise ValueError(
                f"Trainable variables in no parameter group: {orphans}. Extend the model's "
                "parameter_groups() or pass variable_groups."
            )
    optimizer = GroupedOptimizer(
        {group: config.build_optimizer(steps_per_epoch, group) for group, config in groups.items()},
        name=name,
    )
    optimizer.assign({g: v for g, v in variable_groups.items() if v})
    return optimizer
