"""Gallery images for the explorer page: the index's image store and ``serving.gallery_api``.

In process, on a real exported embedder and real indexes. Expectations: the original encoded
bytes (stored and read back byte for byte), the labels given to the index, and the permission
rules of the module docstring (stored images, else exposed files, else nothing).
"""

import base64

import numpy as np
import pytest

from dgml_tf.index import IndexFormatError, build_index, load_index
from dgml_tf.index.gallery import SavedModelEmbedder, gallery_from_folder
from dgml_tf.index.image_store import IMAGES_FILE, OFFSETS_FILE
from serving.embedders import LocalEmbedder
from serving.errors import ServingError
from serving.gallery_api import gallery_route
from serving.model_registry import ServedModel, ServingState
from serving.retrieval_servable import RetrievalServable
from serving.saved_model_servable import SavedModelServable
from serving.synthetic_gallery import export_tiny_embedder, synthetic_gallery

LABELS = [0, 1, 2, 0, 1, 2, 0]


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    root = tmp_path_factory.mktemp("gallery")
    path = export_tiny_embedder(root / "models", "dgml", 1, seed=4)
    images = synthetic_gallery(LABELS)
    vectors = SavedModelEmbedder(path).embed_bytes(images)["embedding"]
    return {"root": root, "path": path, "images": images, "vectors": vectors,
            "fingerprint": SavedModelEmbedder(path).fingerprint,
            "local": LocalEmbedder(SavedModelServable("dgml", 1, path))}


def _state(embedder, index_dir):
    retrieval = RetrievalServable("dgml_retrieval", embedder["local"], load_index(index_dir))
    return ServingState({"dgml_retrieval": ServedModel("dgml_retrieval", {1: retrieval}),
                         "dgml": ServedModel("dgml", {1: embedder["local"].servable})})


def _build(embedder, name, **options):
    index_dir = embedder["root"] / name
    build_index(index_dir, embedder["vectors"], embedder["fingerprint"],
                ids=[f"item/{i}" for i in range(len(LABELS))], labels=LABELS, num_groups=3,
                backend="exact", **options)
    return index_dir


def test_stored_images_are_served_byte_for_byte(embedder):
    # An in-memory gallery (no paths): only the stored images make it showable.
    index_dir = _build(embedder, "stored", images=iter(embedder["images"]))
    state = _state(embedder, index_dir)
    listing = gallery_route(state, "/v1/gallery/dgml_retrieval", b"limit=3")
    assert listing["images_available"] and listing["reason"] == ""
    # One item per label first (spread over the classes), in label order.
    assert listing["items"] == [{"id": "item/0", "label": 0}, {"id": "item/1", "label": 1},
                                {"id": "item/2", "label": 2}]
    assert len(gallery_route(state, "/v1/gallery/dgml_retrieval", b"")["items"]) == len(LABELS)
    for i, original in enumerate(embedder["images"]):
        item = gallery_route(state, "/v1/gallery/dgml_retrieval/versions/1/item", f"id=item/{i}".encode())
        assert item["label"] == LABELS[i] and item["content_type"] == "image/png"
        assert base64.b64decode(item["image_bytes"]["b64"]) == original
    with pytest.raises(ServingError) as caught:
        gallery_route(state, "/v1/gallery/dgml_retrieval/item", b"id=item/99")
    assert caught.value.code == "NOT_FOUND"


def test_without_permission_nothing_is_served(embedder, tmp_path):
    folder = tmp_path / "photos" / "a"
    folder.mkdir(parents=True)
    for i, data in enumerate(embedder["images"]):
        (folder / f"{i}.png").write_bytes(data)
    paths = gallery_from_folder(tmp_path / "photos").paths
    state = _state(embedder, _build(embedder, "private", paths=paths))
    listing = gallery_route(state, "/v1/gallery/dgml_retrieval", b"")
    assert listing["items"] == [] and not listing["images_available"]
    assert "--store_images" in listing["reason"]
    with pytest.raises(ServingError) as caught:
        gallery_route(state, "/v1/gallery/dgml_retrieval/item", b"id=item/1")
    assert caught.value.code == "FAILED_PRECONDITION"
    # The same files with --expose_paths are served (and only image files).
    state = _state(embedder, _build(embedder, "exposed", paths=paths, expose_paths=True))
    item = gallery_route(state, "/v1/gallery/dgml_retrieval/item", b"id=item/2")
    assert base64.b64decode(item["image_bytes"]["b64"]) == embedder["images"][2]
    (folder / "2.png").write_bytes(b"#!/bin/sh\necho not an image\n")
    with pytest.raises(ServingError) as caught:
        gallery_route(state, "/v1/gallery/dgml_retrieval/item", b"id=item/2")
    assert caught.value.code == "FAILED_PRECONDITION"


def test_malformed_gallery_requests(embedder):
    state = _state(embedder, _build(embedder, "requests", images=embedder["images"]))
    for path, query, code in (("/v1/gallery/dgml", b"", "FAILED_PRECONDITION"),
                              ("/v1/gallery/nope", b"", "NOT_FOUND"),
                              ("/v1/gallery/dgml_retrieval", b"limit=0", "INVALID_ARGUMENT"),
                              ("/v1/gallery/dgml_retrieval", b"limit=201", "INVALID_ARGUMENT"),
                              ("/v1/gallery/dgml_retrieval", b"limit=1e9", "INVALID_ARGUMENT"),
                              ("/v1/gallery/dgml_retrieval/item", b"", "INVALID_ARGUMENT"),
                              ("/v1/gallery/dgml_retrieval/item", b"id=a&id=b", "INVALID_ARGUMENT"),
                              ("/v1/gallery/dgml_retrieval/versions/x", b"", "INVALID_ARGUMENT"),
                              ("/v1/gallery/dgml_retrieval/versions/7", b"", "NOT_FOUND"),
                              ("/v1/gallery/dgml_retrieval/other", b"", "INVALID_ARGUMENT")):
        with pytest.raises(ServingError) as caught:
            gallery_route(state, path, query)
        assert caught.value.code == code, (path, query, caught.value.message)


def test_image_store_counts_and_corruption_are_checked(embedder):
    with pytest.raises(ValueError, match="different number"):
        _build(embedder, "short", images=embedder["images"][:-1])
    index_dir = _build(embedder, "corrupt", images=embedder["images"])
    version = load_index(index_dir).version_dir
    assert load_index(index_dir).images.get(3) == embedder["images"][3]
    offsets = np.load(f"{version}/{OFFSETS_FILE}")
    with open(f"{version}/{IMAGES_FILE}", "ab") as handle:  # a truncated or grown file is refused
        handle.write(b"x")
    with pytest.raises(IndexFormatError, match="rebuild"):
        load_index(index_dir)
    assert offsets[-1] == sum(len(i) for i in embedder["images"])
