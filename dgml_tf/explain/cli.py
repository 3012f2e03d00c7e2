"""``python -m dgml_tf.explain``: where each group of a trained run looks, and how distinct they are.

For a run directory written by ``python -m dgml_tf.train`` (``best.keras`` + ``config.json``):

- ``attention_grid.png``: for each chosen image, the image then one panel per group with that
  group's attention map upsampled to the crop, normalised, coloured and blended over it;
- ``retrieval_<i>.png``: a query and its top-k neighbours in the split (the query itself
  excluded), each row with its per-group maps; green titles share the query's class;
- ``explain.json``: the chosen images, the neighbours, and "distinct groups" statistics on the
  split: mean pairwise attention overlap of the K maps (histogram intersection, in [0, 1]) and
  mean pairwise cosine of the K group embeddings (in [-1, 1]).

Images are either files (``--images=a.png,b.jpg`` or ``--images a.png b.jpg``; they query the
split) or a fixed seeded choice of ``--num_images`` images of the split. Dataset settings default
to the run's ``config.json`` (as in ``dgml_tf.evaluate``). Baseline heads (``single``,
``grouping``) have no attention: no maps are drawn, the group cosine is still reported (for
K >= 2). The report itself: :mod:`dgml_tf.explain.report`.

Example:
    python -m dgml_tf.explain --run_dir=runs/fm --num_images=6 --top_k=5
    python -m dgml_tf.explain --run_dir=runs/cub --data_dir=/data/CUB_200_2011 \\
        --images photo1.jpg photo2.jpg --output_dir=figures/cub
"""

from __future__ import annotations

import json
import sys
from typing import Any, Dict, Optional, Sequence

from absl import flags as absl_flags

from dgml_tf import flags as dgml_flags


def define_flags(values: absl_flags.FlagValues) -> None:
    """The explain CLI's flags (data flags shared with train/evaluate, defaults from config)."""
    absl_flags.DEFINE_string("run_dir", None, "Training run directory (best.keras, config.json).",
                             flag_values=values)
    absl_flags.DEFINE_string("keras_model", None, "Model file; default <run_dir>/best.keras.",
                             flag_values=values)
    absl_flags.DEFINE_list("images", [], "Image files to explain (comma-separated, or listed "
                           "after --images); default: --num_images images of --split.",
                           flag_values=values)
    absl_flags.DEFINE_enum("split", "test", ("test", "val", "train", "gallery"),
                           "Split to draw images, neighbours and statistics from.",
                           flag_values=values)
    absl_flags.DEFINE_integer("num_images", 6, "Images of the split to explain (a fixed choice "
                              "seeded by --seed) when --images is not given.", flag_values=values)
    absl_flags.DEFINE_integer("num_queries", 2, "How many of the explained images get a "
                              "retrieval figure.", flag_values=values)
    absl_flags.DEFINE_integer("top_k", 5, "Neighbours per retrieval figure.", flag_values=values)
    absl_flags.DEFINE_integer("eval_max_per_class", None, "Use the first N images of each class "
                              "of the split only (quick looks; unset: the whole split).",
                              flag_values=values)
    absl_flags.DEFINE_string("output_dir", None, "Where figures and explain.json go; default "
                             "<run_dir>/explain.", flag_values=values)
    dgml_flags.define_data_flags(values)


def explain_from_flags(values: absl_flags.FlagValues, extra_images: Sequence[str] = ()
                       ) -> Dict[str, Any]:
    """Runs :func:`dgml_tf.explain.explain_run` for parsed flags; returns explain.json's content.

    ``extra_images``: image files listed after ``--images`` (the command line's leftovers).
    """
    from dgml_tf.explain.report import explain_run

    return explain_run(values.run_dir, values, keras_model=values.keras_model,
                       output_dir=values.output_dir, split=values.split,
                       image_files=list(values.images) + list(extra_images),
                       num_images=values.num_images, num_queries=values.num_queries,
                       top_k=values.top_k)


def main(argv: Sequence[str], values: absl_flags.FlagValues) -> int:
    """Explains, prints the summary lines; returns the exit status (1: bad input, on stderr)."""
    from dgml_tf.explain.report import format_report

    extra = list(argv[1:])
    if extra and not values.images:
        print(f"Unexpected arguments {extra}; image files go after --images.", file=sys.stderr)
        return 1
    try:
        report = explain_from_flags(values, extra)
    except (ValueError, FileNotFoundError) as error:
        print(str(error), file=sys.stderr)
        return 1
    print(format_report(report))
    print(json.dumps(report["diversity"]))
    return 0


def run(argv: Optional[Sequence[str]] = None) -> None:
    """Console entry point (``python -m dgml_tf.explain``)."""
    from dgml_tf.cli import run_cli

    run_cli(argv, define_flags, main, __doc__, onednn_default=True)


if __name__ == "__main__":
    run()
