"""Build a retrieval index of a gallery with an exported embedder (CLI + one library call).

CLI::

    python -m dgml_tf.index --saved_model=exports/dgml/3 --dataset=fashion_mnist --split=test \\
        --index_dir=indexes/fmnist [--backend=auto|scann|exact] [--retrieval_base_dir=exports]

    python -m dgml_tf.index --saved_model=exports/dgml/3 --image_folder=photos/ --index_dir=...

Embeds every gallery image through the export's ``serving_default`` (image bytes, in-graph
preprocessing), builds the index (exact below ``--exact_below`` items, ScaNN above, per ScaNN's
guidance), measures ScaNN's recall@10 against exact search with held-out queries, and
publishes the version atomically (see :mod:`dgml_tf.indexing.publish`). With
``--retrieval_base_dir`` it also writes the exact top-k retrieval SavedModel
``<model_name>_retrieval/<version>`` (and with ``--scann_savedmodel`` the ScaNN-op one) and
refreshes ``models.config`` there. Gallery file paths reach clients of the retrieval model only
with ``--expose_paths``.
"""

from __future__ import annotations

from typing import Optional, Sequence

from dgml_tf.indexing.gallery import (
    GallerySource,
    SavedModelEmbedder,
    embed_gallery,
    gallery_from_dataset,
    gallery_from_folder,
)
from dgml_tf.indexing.retrieval_index import build_index, load_index
from dgml_tf.indexing.scann_index import BRUTE_FORCE_BELOW, choose_scann_params


def index_gallery(
    saved_model_dir: str,
    source: GallerySource,
    index_dir: str,
    backend: str = "auto",
    exact_below: int = BRUTE_FORCE_BELOW,
    batch_size: int = 64,
    progress: bool = True,
    expose_paths: bool = False,
    store_images: bool = False,
    **scann_overrides,
) -> str:
    """Embeds ``source`` with the export at ``saved_model_dir`` and publishes an index version.

    Args:
        saved_model_dir: an embedder version directory (``dgml_tf.export``).
        source: the gallery (:func:`gallery_from_dataset` / :func:`gallery_from_folder`).
        index_dir: the index directory.
        backend, exact_below: see :func:`dgml_tf.indexing.build_index`.
        batch_size: images per embedding call.
        progress: show tqdm progress bars.
        expose_paths: let the retrieval model return the gallery's file paths to clients
            (recorded in the manifest); by default clients get empty ``paths``.
        store_images: keep each item's encoded image in the index (streamed; PNG for
            in-memory datasets), so the server's explorer page can show neighbours.
        **scann_overrides: :class:`~dgml_tf.indexing.ScannParams` fields (``num_leaves``, ...);
            ``partition=True/False`` forces or forbids the tree.

    Returns:
        The published version directory.
    """
    embedder = SavedModelEmbedder(saved_model_dir)
    embeddings = embed_gallery(embedder, source, batch_size=batch_size, progress=progress)
    partition = scann_overrides.pop("partition", None)
    params = None
    if backend == "scann" or (backend == "auto" and len(source) >= exact_below):
        params = choose_scann_params(len(source), partition=partition, **scann_overrides)
    return build_index(
        index_dir,
        embeddings,
        embedder.fingerprint,
        ids=source.ids,
        labels=source.labels,
        paths=source.paths,
        num_groups=int(embedder.metadata["num_groups"]),
        backend=backend,
        exact_below=exact_below,
        scann_params=params,
        model_dir=embedder.path,
        expose_paths=expose_paths,
        images=(source.read_bytes(i) for i in range(len(source))) if store_images else None,
        extra={"image_size": embedder.metadata.get("image_size"),
               "model_name": embedder.metadata.get("model_name"),
               "model_version": embedder.metadata.get("version")},
    )


def _define_flags(flag_values) -> None:
    """Defines this CLI's flags in ``flag_values`` (its own FlagValues: no clash with other CLIs)."""
    import functools

    from absl import flags

    define_boolean = functools.partial(flags.DEFINE_boolean, flag_values=flag_values)
    define_enum = functools.partial(flags.DEFINE_enum, flag_values=flag_values)
    define_integer = functools.partial(flags.DEFINE_integer, flag_values=flag_values)
    define_string = functools.partial(flags.DEFINE_string, flag_values=flag_values)
    define_string("saved_model", None, "Embedder version directory written by dgml_tf.export.")
    define_string("dataset", None, "Dataset name for pipelines.load_dataset (e.g. fashion_mnist).")
    define_string("data_root", None, "Dataset root folder (None: the reader's default).")
    define_string("split", "test", "Split to index: test, gallery, train, val, query.")
    define_string("image_folder", None, "Index every image under this folder instead "
                        "(labels from first-level subfolders).")
    define_string("index_dir", None, "Index directory (versions + CURRENT pointer).")
    define_enum("backend", "auto", ["auto", "scann", "exact"], "Search backend.")
    define_integer("exact_below", BRUTE_FORCE_BELOW, "auto: exact search below this size.")
    define_integer("num_leaves", None, "ScaNN tree leaves (default ~sqrt(N) from 100k items).")
    define_integer("num_leaves_to_search", None, "ScaNN leaves searched (default 5%, >= 8).")
    define_integer("reorder_k", None, "ScaNN candidates rescored exactly (default 100).")
    define_integer("batch_size", 64, "Images per embedding batch.")
    define_integer("limit", None, "Index only the first N items (smoke tests).")
    define_string("retrieval_base_dir", None, "Also export <model_name>_retrieval SavedModels here.")
    define_string("model_name", None, "Model name for the retrieval SavedModel (default: the "
                        "embedder's).")
    define_integer("k", 10, "Neighbours returned by the retrieval SavedModels.")
    define_boolean("scann_savedmodel", False, "Also export the ScaNN-op retrieval SavedModel.")
    define_boolean("expose_paths", False, "Let the retrieval model return the gallery images' "
                   "server-side file paths to clients (default: empty 'paths').")
    define_boolean("store_images", False, "Keep each gallery item's encoded image in the index "
                   "(the explorer page shows neighbours from it; PNG for in-memory datasets).")


def main(argv: Sequence[str], FLAGS) -> int:  # noqa: N803 (absl's naming)
    """Runs the CLI with parsed ``FLAGS``; ``argv`` are the non-flag arguments."""
    if len(argv) > 1:
        raise SystemExit(f"Unexpected arguments {argv[1:]}; all options are --flags.")
    if not FLAGS.saved_model or not FLAGS.index_dir:
        raise SystemExit("--saved_model and --index_dir are required.")
    if bool(FLAGS.dataset) == bool(FLAGS.image_folder):
        raise SystemExit("Pass exactly one of --dataset=<name> or --image_folder=<dir>.")
    if FLAGS.dataset:
        source = gallery_from_dataset(FLAGS.dataset, FLAGS.data_root, FLAGS.split)
    else:
        source = gallery_from_folder(FLAGS.image_folder)
    source = source.limit(FLAGS.limit)
    overrides = {name: getattr(FLAGS, name) for name in ("num_leaves", "num_leaves_to_search", "reorder_k")
                 if getattr(FLAGS, name) is not None}
    if FLAGS.num_leaves is not None:
        overrides["partition"] = True
        overrides.setdefault("training_sample_size", min(len(source), 250_000))
    version_dir = index_gallery(FLAGS.saved_model, source, FLAGS.index_dir, backend=FLAGS.backend,
                                exact_below=FLAGS.exact_below, batch_size=FLAGS.batch_size,
                                expose_paths=FLAGS.expose_paths, store_images=FLAGS.store_images,
                                **overrides)
    index = load_index(FLAGS.index_dir)
    print(f"index: {version_dir}  items={len(index)} backend={index.backend} "
          f"recall@10={index.manifest['recall_at_10']}")
    if FLAGS.retrieval_base_dir:
        from dgml_tf.exporting.serving_configs import write_serving_configs
        from dgml_tf.indexing.retrieval_savedmodel import (
            export_exact_retrieval_savedmodel,
            export_scann_retrieval_savedmodel,
        )

        name = FLAGS.model_name or index.manifest["extra"].get("model_name") or "dgml"
        path = export_exact_retrieval_savedmodel(index, FLAGS.retrieval_base_dir, name,
                                                 embedder_dir=FLAGS.saved_model, k=FLAGS.k)
        print(f"retrieval SavedModel: {path}")
        if FLAGS.scann_savedmodel:
            print(f"ScaNN retrieval SavedModel: "
                  f"{export_scann_retrieval_savedmodel(index, FLAGS.retrieval_base_dir, name, k=FLAGS.k)}")
        write_serving_configs(FLAGS.retrieval_base_dir)
    return 0


def run(argv: Optional[Sequence[str]] = None) -> None:
    """Console entry point (``dgml-index``)."""
    from dgml_tf.cli import run_cli

    run_cli(argv, _define_flags, main, __doc__)


if __name__ == "__main__":
    run()
