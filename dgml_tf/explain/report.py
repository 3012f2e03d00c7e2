"""The explain report: where each group of a trained run looks, and how distinct the groups are.

For a model and a split of its dataset, :func:`explain` writes the attention grid, one
retrieval figure per query and ``explain.json`` (the files are described in
:mod:`dgml_tf.explain.cli`, which ``--help`` prints).

Images are either files (they query the whole split) or a fixed seeded choice of images of the
split (they query the split without themselves). Baseline heads (``single``, ``grouping``) have
no attention: no maps are drawn, the group cosine is still reported (for K >= 2).
:func:`explain_run` does all of it for a run directory (``python -m dgml_tf.explain``).

Example:
    >>> report = explain_run("runs/fm", values, output_dir="figures/fm")  # doctest: +SKIP
    >>> print(format_report(report))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

EXPLAIN_JSON = "explain.json"
GRID_PNG = "attention_grid.png"
NO_ATTENTION_MESSAGE = ("This model has no attention maps (baseline head {head!r}: a globally "
                        "pooled vector, not attentive grouping); attention figures and overlap "
                        "are skipped, only the group cosine is reported.")


@dataclasses.dataclass
class SplitEmbedding:
    """Model outputs over a split, in record order.

    Attributes:
        records: the split's records that were embedded.
        embedding: (N, K*d) retrieval embeddings.
        group_embeddings: (N, K, d).
        attention: (N, K, h, w), or None for baseline heads.
    """

    records: list
    embedding: Any
    group_embeddings: Any
    attention: Optional[Any]


def has_attention(model) -> bool:
    """Whether the model's output dict has per-group attention maps (attentive head)."""
    outputs = model.output if isinstance(model.output, dict) else {}
    return "attention" in outputs


def embed_with_attention(model, records: list, arrays, config: Mapping[str, Any]
                         ) -> SplitEmbedding:
    """Embeds ``records`` like :func:`dgml_tf.evaluate.embed_records`, keeping the attention
    maps, the records and the (N, K*d) embedding (evaluation keeps only the group embeddings)."""
    from dgml_tf.evaluate.protocol import embed_records, group_embeddings_of

    out = embed_records(model, records, arrays, config,
                        keys=("embedding", "group_embeddings", "attention"))
    return SplitEmbedding(list(records), out["embedding"], group_embeddings_of(out),
                          out.get("attention"))


def crops_of(records: list, arrays, config: Mapping[str, Any]):
    """The evaluation crops (N, S, S, 3) float32 in [0, 255] of ``records``, in order."""
    import numpy as np

    import pipelines

    dataset = pipelines.make_eval_dataset(
        records, arrays, image_size=config["image_size"], resize_size=config["resize_size"],
        batch_size=max(1, len(records)))
    return np.concatenate([np.asarray(images) for images, _ in dataset])


def load_image_files(paths: Sequence[str], image_size: int, resize_size: int):
    """Decodes image files and applies the evaluation transform (resize, centre crop).

    Returns:
        float32 (N, image_size, image_size, 3) in [0, 255].
    """
    import numpy as np
    import tensorflow as tf

    from pipelines.decoding import read_rgb
    from pipelines.transforms import eval_transform

    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"--images: no such file(s): {', '.join(missing)}.")
    crops = []
    for path in paths:
        try:
            image = read_rgb(tf.constant(path))
        except tf.errors.InvalidArgumentError as err:
            raise ValueError(f"--images: {path} is not a readable image (JPEG/PNG/GIF/BMP/WebP)."
                             ) from err
        crops.append(eval_transform(image, image_size, resize_size).numpy())
    return np.stack(crops).astype(np.float32)


def fixed_choice(num_items: int, count: int, seed: int) -> List[int]:
    """``count`` distinct indices of ``range(num_items)``, a fixed function of ``seed``, sorted."""
    import numpy as np

    if count < 1:
        raise ValueError(f"--num_images={count} must be >= 1.")
    count = min(count, num_items)
    chosen = np.random.default_rng(seed).choice(num_items, size=count, replace=False)
    return sorted(int(i) for i in chosen)


def diversity_statistics(split: SplitEmbedding) -> Dict[str, Any]:
    """The "distinct groups" statistics of a split: group cosine and attention overlap.

    Returns:
        {"group_cosine": float or None (K < 2), "attention_overlap": float or None (no maps),
         "num_groups": K, "num_images": N}.
    """
    from dgml_tf.explain import attention_overlap, group_cosine

    k = int(split.group_embeddings.shape[1])
    return {"group_cosine": group_cosine(split.group_embeddings) if k >= 2 else None,
            "attention_overlap": (attention_overlap(split.attention)
                                  if split.attention is not None and k >= 2 else None),
            "num_groups": k, "num_images": int(len(split.records))}


def model_diversity(model, splits, config: Mapping[str, Any], split: str = "test",
                    max_per_class: Optional[int] = None) -> Dict[str, Any]:
    """:func:`diversity_statistics` of ``model`` on a split of ``splits`` (DatasetSplits)."""
    from dgml_tf.evaluate.protocol import limit_per_class

    records = limit_per_class(splits.split(split), max_per_class)
    if not records:
        raise ValueError(f"The {split} split is empty; choose another --split.")
    return diversity_statistics(embed_with_attention(model, records, splits.arrays, config))


def _record_entry(record, score: Optional[float] = None) -> Dict[str, Any]:
    entry = {"item_id": record.item_id, "label": int(record.label)}
    if score is not None:
        entry["score"] = float(score)
    return entry


def explain(model, splits, config: Mapping[str, Any], output_dir: str, *, split: str = "test",
            image_files: Sequence[str] = (), num_images: int = 6, num_queries: int = 2,
            top_k: int = 5, max_per_class: Optional[int] = None,
            metadata: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Writes the attention figures and ``explain.json``; returns the explain.json content.

    Args:
        model: embedding model (``dgml_tf.models.build_embedding_model`` outputs).
        splits: ``pipelines.DatasetSplits`` holding ``split``.
        config: image_size, resize_size, eval_batch_size, seed, head (the run's config).
        output_dir: where the PNGs and explain.json go.
        split: the split images, neighbours and statistics come from.
        image_files: image files to explain (query the split); empty: a seeded choice of
            ``num_images`` images of the split.
        num_queries: explained images that get a retrieval figure.
        top_k: neighbours per retrieval figure.
        max_per_class: keep only the first N images of each class of the split.
        metadata: extra entries for explain.json (e.g. the run directory).
    """
    import numpy as np

    from dgml_tf.evaluate.protocol import limit_per_class
    from dgml_tf.evaluate import nearest_neighbours
    from dgml_tf.explain import group_attention_grid, retrieval_figure

    if top_k < 1:
        raise ValueError(f"--top_k={top_k} must be >= 1.")
    if num_queries < 0:
        raise ValueError(f"--num_queries={num_queries} must be >= 0.")
    records = limit_per_class(splits.split(split), max_per_class)
    if len(records) < 2:
        raise ValueError(f"The {split} split has {len(records)} image(s); retrieval needs >= 2 "
                         "(choose another --split, e.g. --split=gallery for In-Shop, or check "
                         "--val_classes).")
    os.makedirs(output_dir, exist_ok=True)
    gallery = embed_with_attention(model, records, splits.arrays, config)
    attentive = gallery.attention is not None
    report: Dict[str, Any] = {**dict(metadata or {}), "split": split, "head": config.get("head"),
                              "has_attention": attentive,
                              "diversity": diversity_statistics(gallery), "figures": {}}
    if not attentive:
        report["message"] = NO_ATTENTION_MESSAGE.format(head=config.get("head", "unknown"))

    if image_files:
        images = load_image_files(image_files, config["image_size"], config["resize_size"])
        outputs = model(images, training=False)
        query_embedding = np.asarray(outputs["embedding"])
        query_attention = np.asarray(outputs["attention"]) if attentive else None
        titles = [os.path.basename(p) for p in image_files]
        report["images"] = [{"file": os.path.abspath(p)} for p in image_files]
        query_index, query_labels = None, [None] * len(images)
    else:
        query_index = fixed_choice(len(records), num_images, int(config.get("seed") or 0))
        images = crops_of([records[i] for i in query_index], splits.arrays, config)
        query_embedding = gallery.embedding[query_index]
        query_attention = gallery.attention[query_index] if attentive else None
        titles = [f"label {records[i].label}" for i in query_index]
        report["images"] = [_record_entry(records[i]) for i in query_index]
        query_labels = [int(records[i].label) for i in query_index]

    if attentive:
        report["figures"]["attention_grid"] = group_attention_grid(
            images, query_attention, os.path.join(output_dir, GRID_PNG), row_titles=titles)

    # Split items search the split with themselves excluded; external files search all of it.
    retrievals = []
    for q in range(min(num_queries, len(images))):
        if query_index is None:
            idx, scores = nearest_neighbours(query_embedding[q:q + 1], gallery.embedding,
                                             k=top_k)
            idx, scores = idx[0], scores[0]
        else:
            idx, scores = _neighbours_excluding(gallery.embedding, query_index[q], top_k)
        neighbours = [records[i] for i in idx]
        entry = {"query": report["images"][q],
                 "neighbours": [_record_entry(r, s)
                                for r, s in zip(neighbours, scores, strict=True)]}
        if attentive:
            entry["figure"] = retrieval_figure(
                images[q], query_attention[q], crops_of(neighbours, splits.arrays, config),
                gallery.attention[idx], os.path.join(output_dir, f"retrieval_{q}.png"),
                query_label=query_labels[q], neighbour_labels=[int(r.label) for r in neighbours],
                scores=[float(s) for s in scores])
        retrievals.append(entry)
    report["retrieval"] = retrievals
    report["top_k"] = int(top_k)
    from dgml_tf.atomic import write_json_atomically

    write_json_atomically(os.path.join(output_dir, EXPLAIN_JSON), report)
    return report


def _neighbours_excluding(embeddings, query: int, k: int):
    """Top-k neighbours of split item ``query`` among the others (itself excluded)."""
    import numpy as np

    from dgml_tf.evaluate import nearest_neighbours

    others = np.delete(np.arange(len(embeddings)), query)
    idx, scores = nearest_neighbours(embeddings[query:query + 1], embeddings[others], k=k)
    return others[idx[0]], scores[0]


def format_report(report: Mapping[str, Any]) -> str:
    """A few human-readable lines for the terminal."""
    div = report["diversity"]
    lines = [f"Split {report['split']}: {div['num_images']} images, K={div['num_groups']} groups."]
    if report.get("message"):
        lines.append(report["message"])

    def fmt(value):
        return "n/a" if value is None else f"{value:.4f}"

    lines.append(f"Mean pairwise group cosine:      {fmt(div['group_cosine'])}  (in [-1, 1]; "
                 "lower = more distinct groups)")
    lines.append(f"Mean pairwise attention overlap: {fmt(div['attention_overlap'])}  (in [0, 1]; "
                 "1 = identical maps)")
    for name, path in report["figures"].items():
        lines.append(f"{name}: {path}")
    for entry in report["retrieval"]:
        if "figure" in entry:
            lines.append(f"retrieval: {entry['figure']}")
    return "\n".join(lines)


def explain_run(run_dir: Optional[str], values, *, keras_model: Optional[str] = None,
                output_dir: Optional[str] = None, split: str = "test",
                image_files: Sequence[str] = (), num_images: int = 6, num_queries: int = 2,
                top_k: int = 5) -> Dict[str, Any]:
    """:func:`explain` for a training run; returns the explain.json content.

    Args:
        run_dir: a training run directory (``config.json`` gives the data settings), or None.
        values: parsed flag values with the data flags and ``eval_max_per_class`` (see
            :func:`dgml_tf.evaluate.merged_config`).
        keras_model: the ``.keras`` file; default ``<run_dir>/best.keras``.
        output_dir: default ``<run_dir>/explain`` (or ``explain/`` next to ``keras_model``).
        split, image_files, num_images, num_queries, top_k: as for :func:`explain`.

    Raises:
        ValueError: bad run directory, settings or images; FileNotFoundError: missing files.
    """
    from dgml_tf.evaluate.protocol import evaluation_config, load_run
    from dgml_tf.run_dir import load_splits

    model, run_config = load_run(run_dir, keras_model, model_flag="--keras_model")
    config = evaluation_config(run_config, values)
    config.setdefault("head", "attentive" if has_attention(model) else "unknown")
    splits = load_splits(config)
    output_dir = output_dir or os.path.join(
        run_dir or os.path.dirname(os.path.abspath(keras_model)), "explain")
    return explain(model, splits, config, output_dir, split=split, image_files=image_files,
                   num_images=num_images, num_queries=num_queries, top_k=top_k,
                   max_per_class=config.get("eval_max_per_class"),
                   metadata={"run_dir": run_dir, "model": keras_model or "best.keras"})
