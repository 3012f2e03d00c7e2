"""The bar a trained embedding has to beat: cosine retrieval on raw pixels, side by side.

The main job (``python -m dgml_tf.main``) reports its model next to this baseline: the same
retrieval protocol (:func:`evaluate_retrieval`) on the flattened test images, so any gain is
what training added.

Example:
    >>> import pipelines  # doctest: +SKIP
    >>> splits = pipelines.load_dataset("fashion_mnist")  # doctest: +SKIP
    >>> overall, per_class = raw_pixel_baseline(splits)  # doctest: +SKIP
    >>> print(format_comparison_table({"raw pixels (cosine)": overall}))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Mapping, Tuple

# (metric key of evaluate_retrieval, column header) of the comparison table.
COMPARISON_COLUMNS = (("recall@1", "R@1"), ("recall@2", "R@2"), ("recall@4", "R@4"),
                      ("recall@8", "R@8"), ("map@r", "MAP@R"), ("r_precision", "RP"),
                      ("nmi", "NMI"))


def raw_pixel_baseline(splits) -> Tuple[dict, dict]:
    """Cosine nearest neighbours on the raw pixels of the test split.

    Args:
        splits: ``pipelines.DatasetSplits`` of an in-memory dataset (``splits.arrays`` holds
            the images; each test record's ``source`` indexes it).

    Returns:
        ``(overall, per_class)``: :func:`evaluate_retrieval` at Recall@1, 2, 4, 8 with NMI, and
        :func:`evaluate_retrieval_per_class` at Recall@1 (label -> metrics).
    """
    import numpy as np

    from dgml_tf.evaluate.retrieval import evaluate_retrieval, evaluate_retrieval_per_class

    rows = np.asarray([r.source for r in splits.test])
    pixels = splits.arrays[rows].reshape(len(rows), -1).astype(np.float32)
    labels = np.asarray([r.label for r in splits.test])
    return (evaluate_retrieval(pixels, labels, recall_ks=(1, 2, 4, 8), compute_nmi=True),
            evaluate_retrieval_per_class(pixels, labels, recall_ks=(1,)))


def format_comparison_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    """Embeddings side by side (one row each) in percent with one decimal; "n/a" if missing.

    Example:
        >>> print(format_comparison_table({"pixels": {"recall@1": 0.5}}))
        | embedding | R@1 | R@2 | R@4 | R@8 | MAP@R | RP | NMI |
        |---|---|---|---|---|---|---|---|
        | pixels | 50.0 | n/a | n/a | n/a | n/a | n/a | n/a |
    """
    lines = ["| embedding | " + " | ".join(k for _, k in COMPARISON_COLUMNS) + " |",
             "|---|" + "---|" * len(COMPARISON_COLUMNS)]
    for name, values in rows.items():
        cells = [f"{100 * values[k]:.1f}" if k in values else "n/a" for k, _ in COMPARISON_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_per_class_comparison(trained: Mapping[str, Mapping[str, float]],
                                baseline: Mapping[int, Mapping[str, float]],
                                names: Mapping[int, str]) -> str:
    """Per test class: R@1 and MAP@R of the baseline next to the trained embedding's.

    Args:
        trained: label (as a string, as in ``eval_test_per_class.json``) -> metrics.
        baseline: label -> metrics (:func:`raw_pixel_baseline`'s second result); its labels
            give the rows, in its order.
        names: label -> class name.

    Example:
        >>> print(format_per_class_comparison({"5": {"recall@1": 0.9}},
        ...                                   {5: {"recall@1": 0.7, "map@r": 0.05}}, {5: "Sandal"}))
        | class | R@1 raw | R@1 trained | MAP@R raw | MAP@R trained |
        |---|---|---|---|---|
        | 5 Sandal | 70.0 | 90.0 | 5.0 | n/a |
    """
    lines = ["| class | R@1 raw | R@1 trained | MAP@R raw | MAP@R trained |",
             "|---|---|---|---|---|"]
    for label, raw in baseline.items():
        row = trained.get(str(label), {})
        cells = [f"{100 * values[k]:.1f}" if k in values else "n/a"
                 for k in ("recall@1", "map@r") for values in (raw, row)]
        lines.append(f"| {label} {names.get(label, '')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
