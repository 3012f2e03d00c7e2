"""``python -m dgml_tf.export``: see :mod:`dgml_tf.export.cli`."""

from dgml_tf.export.cli import run

if __name__ == "__main__":
    run()
