"""``python -m dgml_tf.train``: see :mod:`dgml_tf.train.cli`."""

from dgml_tf.train.cli import run

if __name__ == "__main__":
    run()
