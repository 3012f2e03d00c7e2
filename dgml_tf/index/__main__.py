"""``python -m dgml_tf.index``: see :mod:`dgml_tf.index.cli`."""

from dgml_tf.index.cli import run

if __name__ == "__main__":
    run()
