"""``python -m dgml_tf.index``: index a gallery with an exported embedder (library: :mod:`dgml_tf.index`).

CLI::

    python -m dgml_tf.index --saved_model=exports/dgml/3 --dataset=fashion_mnist --split=test \\
        --index_dir=indexes/fmnist [--backend=auto|scann|exact] [--retrieval_base_dir=exports]

    python -m dgml_tf.index --saved_model=exports/dgml/3 --image_folder=photos/ --index_dir=...

Embeds every gallery image through the export's ``serving_default`` (image bytes, in-graph
preprocessing), builds the index (exact below ``--exact_below`` items, ScaNN above, per ScaNN's
guidance), measures ScaNN's recall@10 against exact search with held-out queries, and
publishes the version atomically (see :mod:`dgml_tf.index.publish`). With
``--retrieval_base_dir`` it also writes the exact top-k retrieval SavedModel
``<model_name>_retrieval/<version>`` (and with ``--scann_savedmodel`` the ScaNN-op one) and
refreshes ``models.config`` there. Gallery file paths reach clients of the retrieval model only
with ``--expose_paths``.
"""

from __future__ import annotations

from typing import Optional, Sequence

from dgml_tf.index.gallery import gallery_from_dataset, gallery_from_folder, index_gallery
from dgml_tf.index.retrieval_index import load_index
from dgml_tf.index.scann_index import BRUTE_FORCE_BELOW


def _define_flags(flag_values) -> None:
    """Defines this CLI's flags in ``flag_values`` (its own FlagValues: no clash with other CLIs)."""
    import functools

    from absl import flags

    from dgml_tf.flag_parsing import define_alias

    define_boolean = functools.partial(flags.DEFINE_boolean, flag_values=flag_values)
    define_enum = functools.partial(flags.DEFINE_enum, flag_values=flag_values)
    define_integer = functools.partial(flags.DEFINE_integer, flag_values=flag_values)
    define_string = functools.partial(flags.DEFINE_string, flag_values=flag_values)
    define_string("saved_model", None, "Embedder version directory written by dgml_tf.export.")
    define_string("dataset", None, "Dataset name for pipelines.load_dataset (e.g. fashion_mnist).")
    define_string("data_dir", None, "Dataset root folder (None: the reader's default).")
    define_alias("data_root", "data_dir", flag_values)  # the old spelling, one release
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
        source = gallery_from_dataset(FLAGS.dataset, FLAGS.data_dir, FLAGS.split)
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
        from dgml_tf.index.retrieval_savedmodel import export_retrieval_models

        name = FLAGS.model_name or index.manifest["extra"].get("model_name") or "dgml"
        written = export_retrieval_models(index, FLAGS.retrieval_base_dir, name, FLAGS.saved_model,
                                          k=FLAGS.k, scann=FLAGS.scann_savedmodel)
        print(f"retrieval SavedModel: {written['exact']}")
        if "scann" in written:
            print(f"ScaNN retrieval SavedModel: {written['scann']}")
    return 0


def run(argv: Optional[Sequence[str]] = None) -> None:
    """Console entry point (``dgml-index``)."""
    from dgml_tf.cli import run_cli

    run_cli(argv, _define_flags, main, __doc__)


if __name__ == "__main__":
    run()
