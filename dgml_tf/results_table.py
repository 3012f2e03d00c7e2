"""Human-readable tables of evaluation results (markdown, percentages).

Below both of its users: ``dgml_tf.evaluate`` (which exports :func:`format_table`) and
``dgml_tf.run_summary`` (the summary a training run writes), so neither imports the other.
"""

from __future__ import annotations

from typing import Mapping

_COUNTS = ("num_queries", "num_queries_without_relevant")


def _metric_order(name: str):
    if name.startswith("recall@"):
        return (0, int(name.split("@", 1)[1]), name)
    order = {"map@r": 1, "r_precision": 2, "nmi": 3}
    return (order.get(name, 4 if name not in _COUNTS else 5), 0, name)


def format_table(results: Mapping, row_header: str = "embedding") -> str:
    """Formats :func:`evaluate_retrieval` or :func:`evaluate_groups` results as a text table.

    Fractions are shown as percentages with two decimals, counts as integers. A nested mapping
    (one row per embedding: "concatenated", "group_0", ...; or per class) becomes one row each,
    under a first column named ``row_header``.

    Example:
        >>> print(format_table({"recall@1": 0.5, "num_queries": 4}))
        | recall@1 | num_queries |
        |---|---|
        | 50.00 | 4 |
    """
    if not isinstance(results, Mapping) or not results:
        raise ValueError("results must be a non-empty dict from evaluate_retrieval or "
                         "evaluate_groups.")
    nested = all(isinstance(v, Mapping) for v in results.values())
    rows = dict(results) if nested else {None: results}
    columns = sorted({name for row in rows.values() for name in row}, key=_metric_order)

    def cell(name, value):
        if value is None:
            return "-"
        if name in _COUNTS:
            return str(int(value))
        return f"{100.0 * float(value):.2f}"

    header = ([row_header] if nested else []) + columns
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row_name, row in rows.items():
        cells = ([str(row_name)] if nested else []) + [cell(c, row.get(c)) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
