"""The name of the optimizer's fourth parameter group, in one place.

The margin loss' per-class betas are trained as their own parameter group, named ``"loss"``
(the embedding loss' variables): ``MetricLearningModel.parameter_groups()`` returns it, the
optimizer keys its rate by it (``learning_rate_loss`` in the logs), and the training recipe
maps the ``--lr_beta`` flag onto it. No Keras import: flag validation uses it before TensorFlow
may be imported.
"""

#: Group of the embedding loss' own variables (the margin loss' betas).
LOSS_GROUP = "loss"
