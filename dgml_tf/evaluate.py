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
on, hidden in the mean otherwise).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List, Mapping, Optional

from absl import app
from absl import flags as absl_flags

from dgml_tf import flags as dgml_flags

FLAGS = absl_flags.FLAGS
BEST_MODEL = "best.keras"
SPLITS = ("test", "val", "train")


def define_flags(values: absl_flags.FlagValues = FLAGS) -> None:
    """The evaluate CLI's flags (data flags shared with train, defaults from config.json)."""
    absl_flags.DEFINE_string("run_dir", None, "Training run directory (with best.keras and "
                             "config.json).", flag_values=values)
    absl_flags.DEFINE_enum("split", "test", SPLITS, "Split to evaluate (In-Shop test: query vs "
                           "gallery).", flag_values=values)
    absl_flags.DEFINE_string("model", None, "Model file; default <run_dir>/best.keras.",
                             flag_values=values)
    absl_flags.DEFINE_integer("eval_max_per_class", None, "Evaluate on the first N images of "
                              "each class only (quick checks; unset for the full protocol).",
                              flag_values=values)
    absl_flags.DEFINE_bool("nmi", True, "Also compute k-means NMI (slow for big test sets).",
                           flag_values=values)
    absl_flags.DEFINE_bool("per_class", False, "Also write eval_<split>_per_class.json/.md: "
                           "Recall@K, MAP@R and R-precision of each class's queries.",
                           flag_values=values)
    dgml_flags.define_data_flags(values)


# Data flags whose value comes from config.json unless given on the command line.
INHERITED = ("dataset", "data_dir", "val_classes", "image_size", "resize_size", "seed")


def merged_config(run_config: Mapping[str, Any], values: absl_flags.FlagValues) -> Dict[str, Any]:
    """The run's config with the data flags given explicitly on this command line applied."""
    config = dict(run_config)
    for name in INHERITED + ("eval_batch_size", "eval_max_per_class"):
        if values[name].present or name not in config:
            config[name] = values[name].value
    return config


def evaluation_sets(dataset: str, split: str) -> Optional[tuple]:
    """(query split, gallery split) for query-vs-gallery evaluation, or None (self-retrieval)."""
    if split == "test" and dataset in dgml_flags.QUERY_GALLERY_DATASETS:
        return ("query", "gallery")
    return None


def limit_per_class(records: list, max_per_class: Optional[int]) -> list:
    """The first ``max_per_class`` records of each class, in record order (all if None/0)."""
    if not max_per_class:
        return list(records)
    counts: Dict[int, int] = {}
    kept = []
    for record in records:
        if counts.get(record.label, 0) < max_per_class:
            counts[record.label] = counts.get(record.label, 0) + 1
            kept.append(record)
    return kept


def embed_records(model, records: list, arrays, config: Mapping[str, Any]) -> Dict[str, Any]:
    """Embeds ``records`` with the run's evaluation transform (resize, centre crop)."""
    import pipelines
    from dgml_tf.callbacks.validation import embed_dataset

    dataset = pipelines.make_eval_dataset(
        records, arrays, image_size=config["image_size"], resize_size=config["resize_size"],
        batch_size=config["eval_batch_size"])
    return embed_dataset(model, dataset)


def _groups(embedded: Mapping[str, Any]):
    import numpy as np

    if "group_embeddings" in embedded:
        return embedded["group_embeddings"]
    return np.asarray(embedded["embedding"])[:, None, :]


def embed_split(model, splits, config: Mapping[str, Any], split: str = "test") -> dict:
    """Embeds ``split`` for evaluation: {"groups", "labels", "query_groups", "query_labels"}
    (the query entries are None for self-retrieval; In-Shop test is query vs gallery).

    ``groups`` are the (N, K, d) unit group embeddings; flattening them gives the concatenated
    embedding. ``config`` as for :func:`evaluate_model`.
    """
    limit = config.get("eval_max_per_class")
    pair = evaluation_sets(config["dataset"], split)
    embedded = []
    for name in pair or (split,):
        records = limit_per_class(splits.split(name), limit)
        if pair is None and len({r.label for r in records}) < 2:
            raise ValueError(f"The {split} split has {len({r.label for r in records})} "
                             "class(es); retrieval needs >= 2 (check --val_classes).")
        embedded.append(embed_records(model, records, splits.arrays, config))
    gallery = embedded[-1]
    return {"groups": _groups(gallery), "labels": gallery["labels"],
            "query_groups": _groups(embedded[0]) if pair else None,
            "query_labels": embedded[0]["labels"] if pair else None}


def _concatenated(groups):
    return None if groups is None else groups.reshape(len(groups), -1)


def evaluate_embedded(embedded: Mapping[str, Any], config: Mapping[str, Any],
                      compute_nmi: bool = True, per_group: bool = True
                      ) -> Dict[str, Dict[str, float]]:
    """Metrics of an :func:`embed_split` result: {"concatenated": {...}, "group_k": {...}}."""
    from dgml_tf.evaluation import evaluate_groups, evaluate_retrieval, recall_ks_for

    options = dict(recall_ks=recall_ks_for(config["dataset"]), compute_nmi=compute_nmi,
                   seed=int(config.get("seed") or 0))
    if not per_group:
        return {"concatenated": evaluate_retrieval(
            _concatenated(embedded["groups"]), embedded["labels"],
            _concatenated(embedded["query_groups"]), embedded["query_labels"], **options)}
    return evaluate_groups(embedded["groups"], embedded["labels"], embedded["query_groups"],
                           embedded["query_labels"], **options)


def evaluate_per_class(embedded: Mapping[str, Any], config: Mapping[str, Any]
                       ) -> Dict[int, Dict[str, float]]:
    """Recall@K, MAP@R and R-precision of the concatenated embedding per query class."""
    from dgml_tf.evaluation import evaluate_retrieval_per_class, recall_ks_for

    return evaluate_retrieval_per_class(
        _concatenated(embedded["groups"]), embedded["labels"],
        _concatenated(embedded["query_groups"]), embedded["query_labels"],
        recall_ks=recall_ks_for(config["dataset"]))


def evaluate_model(model, splits, config: Mapping[str, Any], split: str = "test",
                   compute_nmi: bool = True, per_group: bool = True
                   ) -> Dict[str, Dict[str, float]]:
    """Metrics of ``model`` on ``split``: {"concatenated": {...}, "group_k": {...}}.

    Args:
        model: embedding model with dict outputs ("embedding", "group_embeddings").
        splits: ``pipelines.DatasetSplits``.
        config: dataset, image_size, resize_size, eval_batch_size, seed and optionally
            eval_max_per_class (evaluate on the first N images of each class only).
        split: "test" (In-Shop: query vs gallery), "val" or "train".
        compute_nmi: include k-means NMI.
        per_group: also evaluate each group alone (else only "concatenated").
    """
    return evaluate_embedded(embed_split(model, splits, config, split), config,
                             compute_nmi=compute_nmi, per_group=per_group)


def load_model(path: str):
    """Loads a saved embedding model (``.keras``), naming the fix when it is missing."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No model at {path}: train first (python -m dgml_tf.train "
                                "--output_dir=...) or pass --model=<file.keras>.")
    import keras

    import dgml_tf.layers  # noqa: F401  (registers the custom layers for deserialisation)
    try:
        import dgml_tf.models  # noqa: F401
    except ImportError:
        pass
    return keras.saving.load_model(path, compile=False)


def load_run_config(run_dir: str) -> Dict[str, Any]:
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def main(argv: List[str]) -> None:
    del argv
    if not FLAGS.run_dir and not FLAGS.model:
        raise app.UsageError("Pass --run_dir=<training output_dir> (or --model=<file.keras>).")
    if FLAGS.run_dir and not os.path.isdir(FLAGS.run_dir):
        raise app.UsageError(f"--run_dir={FLAGS.run_dir!r} is not a directory.")
    run_config = load_run_config(FLAGS.run_dir) if FLAGS.run_dir else {}
    config = merged_config(run_config, FLAGS)
    problems = [e for e in dgml_flags.validate_training_flags(
        {k: config.get(k) for k in ("dataset", "data_dir", "image_size", "resize_size",
                                    "val_classes", "eval_batch_size")})]
    if problems:
        raise app.UsageError("\n".join(problems))
    model_path = FLAGS.model or os.path.join(FLAGS.run_dir, BEST_MODEL)

    import pipelines
    from dgml_tf.run_summary import build_summary, write_summary

    model = load_model(model_path)
    val = config.get("val_classes")
    splits = pipelines.load_dataset(config["dataset"], config.get("data_dir"),
                                    **({} if val is None else {"val_classes": _count(val)}),
                                    seed=int(config.get("seed") or 0))
    embedded = embed_split(model, splits, config, FLAGS.split)
    results = evaluate_embedded(embedded, config, compute_nmi=FLAGS.nmi)
    summary = build_summary(config, results, split=FLAGS.split,
                            training={"model": os.path.abspath(model_path)})
    out_dir = FLAGS.run_dir or os.path.dirname(os.path.abspath(model_path))
    text = write_summary(out_dir, summary, json_name=f"eval_{FLAGS.split}.json",
                         table_name=f"eval_{FLAGS.split}.md")
    print(text)
    if FLAGS.per_class:
        print(write_per_class(out_dir, FLAGS.split, evaluate_per_class(embedded, config),
                              splits.class_names))


def write_per_class(out_dir: str, split: str, rows: Mapping[int, Mapping[str, float]],
                    class_names: Optional[Mapping[int, str]] = None) -> str:
    """Writes ``eval_<split>_per_class.json`` (label -> metrics) and ``.md`` (one row per
    class, named when the dataset has names); returns the markdown text."""
    from dgml_tf.callbacks.atomic import write_json_atomically, write_text_atomically
    from dgml_tf.evaluation import format_table

    names = class_names or {}
    table = format_table({f"{label} {names.get(label, '')}".strip(): row
                          for label, row in rows.items()}, row_header="class")
    text = (f"Per-class retrieval on the {split} split (concatenated embedding; each row "
            f"averages that class's queries):\n\n{table}\n")
    write_json_atomically(os.path.join(out_dir, f"eval_{split}_per_class.json"),
                          {str(label): dict(row) for label, row in rows.items()})
    write_text_atomically(os.path.join(out_dir, f"eval_{split}_per_class.md"), text)
    return text


def _count(value: float):
    """--val_classes as load_dataset wants it: an int count or a float fraction."""
    return int(value) if float(value).is_integer() else float(value)


def run(argv: Optional[List[str]] = None) -> None:
    """Console entry point (``dgml-evaluate``)."""
    from dgml_tf import hardware

    # The training CLI's oneDNN default (before TF loads): the same kernels, the same metrics.
    hardware.apply_onednn_default()
    define_flags()
    app.run(main, argv=argv or sys.argv)


if __name__ == "__main__":
    run()
