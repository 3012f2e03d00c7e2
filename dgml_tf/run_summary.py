"""The summary of a training run: ``summary.json`` (machine-readable) and ``summary.md`` (a table).

Written by the train CLI at the end of a run and by the evaluate CLI, so a run directory always
describes itself: what was trained (the flag values, also in ``config.json``), which epoch was
selected on the validation split and why, and the test metrics of the concatenated embedding
and of each group alone.

Example:
    >>> summary = build_summary(config={"dataset": "cub"}, test={"concatenated": {"recall@1": .6}},
    ...                         best={"metric": "map@r", "value": .3, "epoch": 41})
    >>> print(format_summary(summary).splitlines()[0])
    # Run summary: cub
"""

from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional

from dgml_tf.atomic import write_json_atomically, write_text_atomically
from dgml_tf.results_table import format_table
from dgml_tf.run_dir import CONFIG, SUMMARY_JSON, SUMMARY_MD


def build_summary(config: Mapping[str, Any], test: Mapping[str, Any],
                  best: Optional[Mapping[str, Any]] = None,
                  validation: Optional[Mapping[str, Any]] = None,
                  training: Optional[Mapping[str, Any]] = None,
                  split: str = "test") -> Dict[str, Any]:
    """Assembles the summary record.

    Args:
        config: flag values of the run.
        test: ``evaluate_groups`` output ({"concatenated": {...}, "group_k": {...}}) on ``split``.
        best: the selection: {"metric", "value", "epoch" (0-based)}.
        validation: validation metrics of the selected model.
        training: facts about training (epochs run, seconds, steps, resumed_from, ...).
        split: name of the evaluated split.
    """
    return {"dataset": config.get("dataset"), "split": split, "config": dict(config),
            "best": dict(best or {}), "validation": dict(validation or {}),
            "training": dict(training or {}), "metrics": {k: dict(v) for k, v in test.items()}}


def format_summary(summary: Mapping[str, Any]) -> str:
    """A markdown report of :func:`build_summary` output."""
    lines = [f"# Run summary: {summary.get('dataset')}", ""]
    best = summary.get("best") or {}
    if best.get("epoch") is not None and best.get("value") is not None:
        lines.append(f"Selected epoch {best['epoch'] + 1} by validation {best['metric']} = "
                     f"{100 * best['value']:.2f}.")
    elif best:
        lines.append("No validation split: the model after the last epoch is used.")
    training = summary.get("training") or {}
    if training:
        lines.append("Training: " + ", ".join(f"{k}={v}" for k, v in sorted(training.items())))
    lines += ["", f"## {summary.get('split', 'test')} metrics (percent)", "",
              format_table(summary["metrics"]), ""]
    return "\n".join(lines)


def write_summary(output_dir: str, summary: Mapping[str, Any],
                  json_name: str = SUMMARY_JSON, table_name: str = SUMMARY_MD) -> str:
    """Writes ``summary.json`` and ``summary.md`` atomically; returns the markdown text."""
    text = format_summary(summary)
    write_json_atomically(os.path.join(output_dir, json_name), dict(summary))
    write_text_atomically(os.path.join(output_dir, table_name), text)
    return text


def write_config(output_dir: str, config: Mapping[str, Any]) -> str:
    """Writes every flag value to ``config.json``; returns its path."""
    path = os.path.join(output_dir, CONFIG)
    write_json_atomically(path, dict(config))
    return path
