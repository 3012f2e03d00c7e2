"""The evaluation protocol of a trained run: which split, which images, which metrics, which files.

A run's ``config.json`` says which data it saw (:data:`dgml_tf.run_dir.DATA_KEYS`); the command
line may override those settings (e.g. data moved). :func:`evaluate_run` embeds the split
(In-Shop test: the query set against the gallery; otherwise every image against all the others),
computes Recall@K (the dataset's K list), NMI, MAP@R and R-precision of the concatenated
embedding and of each group alone, and writes ``eval_<split>.json``/``.md`` (and, per class,
``eval_<split>_per_class.json``/``.md``) next to the model. The train CLI calls
:func:`evaluate_model` on its validation and test splits, so both report the same numbers.

Example:
    >>> results = evaluate_model(model, splits, config, "test")  # doctest: +SKIP
    >>> results["concatenated"]["recall@1"]  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from dgml_tf.run_dir import DATA_KEYS, RunDir, eval_file_names

# Settings the evaluation reads besides the data keys (also inherited from the run's config).
EVALUATION_KEYS = ("eval_batch_size", "eval_max_per_class")
# Config keys checked (by dgml_tf.flags.validate_training_flags) before any data is read.
VALIDATED_KEYS = ("dataset", "data_dir", "image_size", "resize_size", "val_classes",
                  "eval_batch_size")
EMBEDDING_KEYS = ("embedding", "group_embeddings")


def merged_config(run_config: Mapping[str, Any], values) -> Dict[str, Any]:
    """The run's config with the data flags given explicitly on this command line applied.

    Args:
        run_config: the run's ``config.json`` ({} when there is none).
        values: parsed ``absl.flags.FlagValues`` holding the data flags
            (``dgml_tf.flags.define_data_flags``) and ``eval_max_per_class``. A flag given on the
            command line wins; a flag's default only fills keys the run config lacks.

    Returns:
        A new dict (``run_config`` is not changed).
    """
    config = dict(run_config)
    for name in DATA_KEYS + EVALUATION_KEYS:
        if values[name].present or name not in config:
            config[name] = values[name].value
    return config


def evaluation_config(run_config: Mapping[str, Any], values) -> Dict[str, Any]:
    """:func:`merged_config`, checked: raises ValueError naming every bad setting."""
    from dgml_tf import flags as dgml_flags

    config = merged_config(run_config, values)
    problems = dgml_flags.validate_training_flags({k: config.get(k) for k in VALIDATED_KEYS})
    if problems:
        raise ValueError("\n".join(problems))
    return config


def locate_run(run_dir: Optional[str], model_path: Optional[str] = None,
               model_flag: str = "--keras_model") -> Tuple[str, Dict[str, Any]]:
    """(model file, run config) of a run directory or a bare model file; loads nothing.

    Args:
        run_dir: a ``python -m dgml_tf.train`` output directory, or None.
        model_path: a ``.keras`` file; default ``<run_dir>/best.keras``.
        model_flag: the flag that names ``model_path`` on this command line (for messages).

    Returns:
        The model path and the run's ``config.json`` ({} without ``run_dir`` or config).

    Raises:
        ValueError: neither is given, or ``run_dir`` is not a directory.
    """
    if not run_dir and not model_path:
        raise ValueError(f"Pass --run_dir=<training output_dir> (or {model_flag}=<file.keras>).")
    run = RunDir(run_dir) if run_dir else None
    if run is not None and not run.exists():
        raise ValueError(f"--run_dir={run_dir!r} is not a directory; pass the --output_dir of a "
                         "training run.")
    return model_path or run.best_model_path, (run.read_config() if run else {})


def load_run(run_dir: Optional[str], model_path: Optional[str] = None,
             model_flag: str = "--keras_model"):
    """(model, run config) of a training run (see :func:`locate_run`).

    Raises:
        FileNotFoundError: the model file does not exist (the message names the fix).
    """
    from dgml_tf.models.saving import load_keras_model

    path, run_config = locate_run(run_dir, model_path, model_flag)
    return load_keras_model(path), run_config


def evaluation_sets(dataset: str, split: str) -> Optional[tuple]:
    """(query split, gallery split) for query-vs-gallery evaluation, or None (self-retrieval)."""
    from dgml_tf import flags as dgml_flags

    if split == "test" and dataset in dgml_flags.QUERY_GALLERY_DATASETS:
        return ("query", "gallery")
    return None


def limit_per_class(records: list, max_per_class: Optional[int]) -> list:
    """The first ``max_per_class`` records of each class, in record order (all if None/0).

    Example:
        >>> import collections
        >>> R = collections.namedtuple("R", "label")
        >>> [r.label for r in limit_per_class([R(0), R(0), R(1), R(0)], 1)]
        [0, 1]
    """
    if not max_per_class:
        return list(records)
    counts: Dict[int, int] = {}
    kept = []
    for record in records:
        if counts.get(record.label, 0) < max_per_class:
            counts[record.label] = counts.get(record.label, 0) + 1
            kept.append(record)
    return kept


def embed_records(model, records: list, arrays, config: Mapping[str, Any],
                  keys: Sequence[str] = EMBEDDING_KEYS) -> Dict[str, Any]:
    """Embeds ``records`` with the run's evaluation transform (resize, centre crop).

    Args:
        model: embedding model with dict outputs.
        records: the records to embed, in order.
        arrays: the ``DatasetSplits.arrays`` the records point into.
        config: image_size, resize_size, eval_batch_size.
        keys: model outputs to keep (missing ones, e.g. "attention" of a baseline head, are
            skipped).

    Returns:
        ``{key: (N, ...) array, "labels": (N,) int64}``.
    """
    import pipelines
    from dgml_tf.evaluate.embedding import embed_dataset

    dataset = pipelines.make_eval_dataset(
        records, arrays, image_size=config["image_size"], resize_size=config["resize_size"],
        batch_size=config["eval_batch_size"])
    return embed_dataset(model, dataset, keys=tuple(keys))


def group_embeddings_of(embedded: Mapping[str, Any]):
    """The (N, K, d) group embeddings of model outputs; a baseline's (N, d) embedding as K=1."""
    import numpy as np

    if "group_embeddings" in embedded:
        return np.asarray(embedded["group_embeddings"])
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
    return {"groups": group_embeddings_of(gallery), "labels": gallery["labels"],
            "query_groups": group_embeddings_of(embedded[0]) if pair else None,
            "query_labels": embedded[0]["labels"] if pair else None}


def _concatenated(groups):
    return None if groups is None else groups.reshape(len(groups), -1)


def evaluate_embedded(embedded: Mapping[str, Any], config: Mapping[str, Any],
                      compute_nmi: bool = True, per_group: bool = True
                      ) -> Dict[str, Dict[str, float]]:
    """Metrics of an :func:`embed_split` result: {"concatenated": {...}, "group_k": {...}}."""
    from dgml_tf.evaluate.groups import evaluate_groups
    from dgml_tf.evaluate.recall_ks import recall_ks_for
    from dgml_tf.evaluate.retrieval import evaluate_retrieval

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
    from dgml_tf.evaluate.recall_ks import recall_ks_for
    from dgml_tf.evaluate.retrieval import evaluate_retrieval_per_class

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


def write_per_class(out_dir: str, split: str, rows: Mapping[int, Mapping[str, float]],
                    class_names: Optional[Mapping[int, str]] = None) -> str:
    """Writes ``eval_<split>_per_class.json`` (label -> metrics) and ``.md`` (one row per
    class, named when the dataset has names); returns the markdown text."""
    from dgml_tf.atomic import write_json_atomically, write_text_atomically
    from dgml_tf.results_table import format_table

    names = class_names or {}
    table = format_table({f"{label} {names.get(label, '')}".strip(): row
                          for label, row in rows.items()}, row_header="class")
    text = (f"Per-class retrieval on the {split} split (concatenated embedding; each row "
            f"averages that class's queries):\n\n{table}\n")
    json_name, table_name = eval_file_names(split, per_class=True)
    write_json_atomically(os.path.join(out_dir, json_name),
                          {str(label): dict(row) for label, row in rows.items()})
    write_text_atomically(os.path.join(out_dir, table_name), text)
    return text


def evaluate_run(run_dir: Optional[str], values, *, model_path: Optional[str] = None,
                 split: str = "test", compute_nmi: bool = True, per_class: bool = False
                 ) -> Tuple[str, Optional[str]]:
    """Evaluates a run's model and writes ``eval_<split>[_per_class].json``/``.md``.

    The files go to ``run_dir`` (else next to ``model_path``); ``summary.json`` is untouched.

    Args:
        run_dir: a training run directory (``config.json`` gives the data settings), or None.
        values: parsed flag values with the data flags (see :func:`merged_config`).
        model_path: the ``.keras`` file to evaluate; default ``<run_dir>/best.keras``.
        split: "test" (In-Shop: query vs gallery), "val" or "train".
        compute_nmi: include k-means NMI.
        per_class: also write the per-class table.

    Returns:
        (the summary markdown, the per-class markdown or None).

    Raises:
        ValueError: bad run directory or settings; FileNotFoundError: no model file.
    """
    from dgml_tf.models.saving import load_keras_model
    from dgml_tf.run_dir import load_splits
    from dgml_tf.run_summary import build_summary, write_summary

    model_path, run_config = locate_run(run_dir, model_path)
    config = evaluation_config(run_config, values)
    model = load_keras_model(model_path)
    splits = load_splits(config)
    embedded = embed_split(model, splits, config, split)
    results = evaluate_embedded(embedded, config, compute_nmi=compute_nmi)
    summary = build_summary(config, results, split=split,
                            training={"model": os.path.abspath(model_path)})
    out_dir = run_dir or os.path.dirname(os.path.abspath(model_path))
    json_name, table_name = eval_file_names(split)
    text = write_summary(out_dir, summary, json_name=json_name, table_name=table_name)
    rows = (write_per_class(out_dir, split, evaluate_per_class(embedded, config),
                            splits.class_names) if per_class else None)
    return text, rows
