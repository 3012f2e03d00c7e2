"""Gallery sources (a dataset split or an image folder), embedding them, and indexing them.

A :class:`GallerySource` gives, for each item, an id, an integer label, a path (or "" for
in-memory images) and its encoded image bytes. Embedding goes through the exported SavedModel's
``serving_default`` signature on those bytes, so the gallery gets exactly the preprocessing
that queries get when served. :func:`index_gallery` embeds a source and publishes an index
version of it (what ``python -m dgml_tf.index`` does).
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Callable, List, Optional, Sequence

import numpy as np

from dgml_tf.index.retrieval_index import build_index
from dgml_tf.index.scann_index import BRUTE_FORCE_BELOW, choose_scann_params

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


@dataclasses.dataclass
class GallerySource:
    """Items to index.

    Attributes:
        ids: stable item identifiers (relative paths or "<split>/<row>").
        labels: int64 class labels (-1 when unknown).
        paths: image file paths ("" for in-memory images).
        read_bytes: ``i -> encoded image bytes`` of item ``i``.
    """

    ids: List[str]
    labels: np.ndarray
    paths: List[str]
    read_bytes: Callable[[int], bytes]

    def __len__(self) -> int:
        return len(self.ids)

    def limit(self, count: Optional[int]) -> "GallerySource":
        """The first ``count`` items (all when None)."""
        if count is None or count >= len(self):
            return self
        return GallerySource(self.ids[:count], self.labels[:count], self.paths[:count], self.read_bytes)


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG bytes of a uint8 (H, W), (H, W, 1) or (H, W, 3) image."""
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"Expected a uint8 image, got {image.dtype}.")
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def gallery_from_dataset(name: str, root: Optional[str] = None, split: str = "test", **options) -> GallerySource:
    """Items of ``split`` of dataset ``name`` read by ``pipelines.load_dataset``.

    In-memory datasets (Fashion-MNIST) are PNG-encoded on the fly (lossless).
    """
    try:
        from pipelines import load_dataset
    except ImportError:  # the package __init__ may not re-export it
        from pipelines.registry import load_dataset

    splits = load_dataset(name, root, val_classes=0, **options)
    records = splits.split(split)
    if not records:
        raise ValueError(f"Dataset {name!r} has no records in split {split!r}.")
    arrays = splits.arrays
    ids = [r.item_id or f"{split}/{i}" for i, r in enumerate(records)]
    labels = np.asarray([r.label for r in records], np.int64)
    if arrays is not None:
        rows = [int(r.source) for r in records]
        return GallerySource(ids, labels, [""] * len(records), lambda i: encode_png(arrays[rows[i]]))
    paths = [str(r.source) for r in records]
    return GallerySource(ids, labels, paths, lambda i: _read_file(paths[i]))


def gallery_from_folder(folder: "str | os.PathLike") -> GallerySource:
    """Every image under ``folder`` (recursively), labelled by its first-level subfolder.

    Class subfolders get labels 0, 1, ... in sorted order; images directly in ``folder`` get -1.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Image folder {folder!r} does not exist.")
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        files.extend(
            os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(IMAGE_EXTENSIONS)
        )
    if not files:
        raise ValueError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) under {folder!r}.")
    ids = [os.path.relpath(p, folder) for p in files]
    classes = sorted({i.split(os.sep)[0] for i in ids if os.sep in i})
    class_of = {c: n for n, c in enumerate(classes)}
    labels = np.asarray([class_of.get(i.split(os.sep)[0], -1) if os.sep in i else -1 for i in ids], np.int64)
    paths = [os.path.abspath(p) for p in files]
    return GallerySource(ids, labels, paths, lambda i: _read_file(paths[i]))


class SavedModelEmbedder:
    """An exported embedder version, loaded once, with its fingerprint and metadata.

    Args:
        saved_model_dir: a version directory written by ``dgml_tf.export.export_for_serving``.

    Example:
        >>> embedder = SavedModelEmbedder("exports/dgml/1")  # doctest: +SKIP
        >>> embedder.embed_bytes([open("cat.jpg", "rb").read()])["embedding"].shape  # doctest: +SKIP
        (1, 510)
    """

    def __init__(self, saved_model_dir: "str | os.PathLike"):
        import tensorflow as tf

        from dgml_tf.export import output_names as names
        from dgml_tf.export.fingerprint import model_fingerprint
        from dgml_tf.export.metadata import read_export_metadata

        self.path = os.path.abspath(os.fspath(saved_model_dir))
        self.fingerprint = model_fingerprint(self.path)
        self.metadata = read_export_metadata(self.path)
        self._tf = tf
        self._names = names
        self._loaded = tf.saved_model.load(self.path)
        self._bytes_fn = self._loaded.signatures[names.SERVING_SIGNATURE]
        self._pixels_fn = self._loaded.signatures[names.PIXELS_SIGNATURE]

    @property
    def loaded(self):
        """The ``tf.saved_model.load`` object (keeps the variables alive)."""
        return self._loaded

    def embed_bytes(self, encoded: Sequence[bytes]) -> dict:
        out = self._bytes_fn(**{self._names.IMAGE_BYTES_INPUT: self._tf.constant(list(encoded))})
        return {k: v.numpy() for k, v in out.items()}

    def embed_pixels(self, images: np.ndarray) -> dict:
        out = self._pixels_fn(**{self._names.PIXELS_INPUT: self._tf.constant(images, self._tf.float32)})
        return {k: v.numpy() for k, v in out.items()}


def embed_gallery(
    embedder: SavedModelEmbedder, source: GallerySource, batch_size: int = 64, progress: bool = True
) -> np.ndarray:
    """Embeddings (N, D) float32 of every gallery item, batched, with a tqdm progress bar."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    chunks = []
    with tqdm(total=len(source), desc="embedding gallery", unit="img", disable=not progress) as bar:
        for start in range(0, len(source), batch_size):
            stop = min(start + batch_size, len(source))
            encoded = [source.read_bytes(i) for i in range(start, stop)]
            chunks.append(embedder.embed_bytes(encoded)["embedding"].astype(np.float32))
            bar.update(stop - start)
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


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
        backend, exact_below: see :func:`dgml_tf.index.build_index`.
        batch_size: images per embedding call.
        progress: show tqdm progress bars.
        expose_paths: let the retrieval model return the gallery's file paths to clients
            (recorded in the manifest); by default clients get empty ``paths``.
        store_images: keep each item's encoded image in the index (streamed; PNG for
            in-memory datasets), so the server's explorer page can show neighbours.
        **scann_overrides: :class:`~dgml_tf.index.ScannParams` fields (``num_leaves``, ...);
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
