"""``python -m dgml_tf.evaluate``: see :mod:`dgml_tf.evaluate.cli`."""

from dgml_tf.evaluate.cli import run

if __name__ == "__main__":
    run()
