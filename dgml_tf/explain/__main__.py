"""``python -m dgml_tf.explain``: see :mod:`dgml_tf.explain.cli`."""

from dgml_tf.explain.cli import run

if __name__ == "__main__":
    run()
