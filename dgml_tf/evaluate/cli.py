"""``python -m dgml_tf.evaluate``: retrieval metrics of a trained run's ``best.keras``.

Embeds a split (In-Shop: the query set against the gallery; other datasets: every test image
against all the others) and reports Recall@K (the dataset's K list), NMI, MAP@R and
R-Precision for the concatenated embedding and for each group alone. Dataset settings default to
the run's ``config.json``; ``--dataset``/``--data_dir`` override them (e.g. data moved).

Example:
    python -m dgml_tf.evaluate --run_dir=runs/cub --split=test
    python -m dgml_tf.evaluate --run_dir=runs/fm --split=val --data_dir=/data/fashion-mnist

Writes ``<run_dir>/eval_<split>.json`` and ``eval_<split>.md`` and prints the table;
``--per_class`` adds ``eval_<split>_per_class.json``/``.md`` (which classes the embedding fails
on, hidden in the mean otherwise). The protocol itself: :mod:`dgml_tf.evaluate.protocol`.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from absl import flags as absl_flags

from dgml_tf import flags as dgml_flags

SPLITS = ("test", "val", "train")


def define_flags(values: absl_flags.FlagValues) -> None:
    """The evaluate CLI's flags (data flags shared with train, defaults from config.json)."""
    absl_flags.DEFINE_string("run_dir", None, "Training run directory (with best.keras and "
                             "config.json).", flag_values=values)
    absl_flags.DEFINE_enum("split", "test", SPLITS, "Split to evaluate (In-Shop test: query vs "
                           "gallery).", flag_values=values)
    absl_flags.DEFINE_string("keras_model", None, "Model file; default <run_dir>/best.keras.",
                             flag_values=values)
    dgml_flags.define_alias("model", "keras_model", values)  # the old spelling, one release
    absl_flags.DEFINE_integer("eval_max_per_class", None, "Evaluate on the first N images of "
                              "each class only (quick checks; unset for the full protocol).",
                              flag_values=values)
    absl_flags.DEFINE_bool("nmi", True, "Also compute k-means NMI (slow for big test sets).",
                           flag_values=values)
    absl_flags.DEFINE_bool("per_class", False, "Also write eval_<split>_per_class.json/.md: "
                           "Recall@K, MAP@R and R-precision of each class's queries.",
                           flag_values=values)
    dgml_flags.define_data_flags(values)


def main(argv: Sequence[str], values: absl_flags.FlagValues) -> int:
    """Evaluates, prints the tables; returns the exit status (1: bad input, named on stderr)."""
    from dgml_tf.evaluate.protocol import evaluate_run

    if len(argv) > 1:
        print(f"Unexpected arguments {list(argv[1:])}; every option is a --flag.",
              file=sys.stderr)
        return 1
    try:
        text, per_class = evaluate_run(values.run_dir, values, model_path=values.keras_model,
                                       split=values.split, compute_nmi=values.nmi,
                                       per_class=values.per_class)
    except (ValueError, FileNotFoundError) as error:
        print(str(error), file=sys.stderr)
        return 1
    print(text)
    if per_class is not None:
        print(per_class)
    return 0


def run(argv: Optional[Sequence[str]] = None) -> None:
    """Console entry point (``dgml-evaluate``)."""
    from dgml_tf.cli import run_cli

    run_cli(argv, define_flags, main, __doc__, onednn_default=True)


if __name__ == "__main__":
    run()
