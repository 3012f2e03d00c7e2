"""The gallery routes the explorer page uses: sample items of a retrieval model and their images.

Why a separate concept: TF Serving's contract has no way to fetch a neighbour's image, yet a
person judging a match needs to see it. Images come from the index itself when it was built
with ``--store_images`` (:mod:`dgml_tf.index.image_store`; works for in-memory datasets such
as Fashion-MNIST), else from the files whose paths the index recorded, and then only when it was
built with ``--expose_paths`` (the index's explicit permission to reveal its gallery's files).
Other indexes have listings without images, with the reason, and the page says so.

Routes (mounted by the HTTP app, outside TF Serving's ``/v1/models`` namespace; JSON answers
like every other route, binary values as TF Serving writes them, ``{"b64": ...}``)::

    GET /v1/gallery/<model>[?limit=24]        -> {"model_spec", "num_items", "num_groups",
                                                  "images_available", "reason", "items"}
    GET /v1/gallery/<model>/item?id=<item id> -> {"id", "label", "content_type",
                                                  "image_bytes": {"b64": ...}}

``<model>`` is a retrieval model (``dgml_retrieval``); ``/versions/<v>`` or ``/labels/<l>`` may
follow it as in TF Serving's URLs. :func:`gallery_route` answers a whole request from the path
and query string; it and the functions under it are transport-neutral (they take the serving
snapshot and return a dict), raising :class:`~serving.errors.ServingError`: NOT_FOUND for an
unknown model or id, FAILED_PRECONDITION when the index serves no images, INVALID_ARGUMENT for
a malformed path or query.
"""

from __future__ import annotations

import base64
import os
import re
import stat
import urllib.parse
from typing import Optional

from serving.errors import ServingError, failed_precondition, invalid_argument, not_found
from serving.retrieval_servable import RetrievalServable

_ROUTE = re.compile(
    r"^/v1/gallery/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[0-9]{1,18})|/labels/(?P<label>[^/:]+))?"
    r"(?P<item>/item)?/?$",
    re.IGNORECASE,
)
DEFAULT_LIMIT = 24
MAX_LIMIT = 200
MAX_IMAGE_FILE_BYTES = 16 * 1024 * 1024
# Leading bytes -> content type of the formats the embedder decodes.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


def _retrieval(state, name: str, version: Optional[int], label: Optional[str]) -> RetrievalServable:
    servable = state.resolve(name, version, label)
    if not isinstance(servable, RetrievalServable):
        raise failed_precondition(
            f"Model {name!r} is not a retrieval model, so it has no gallery; use the retrieval "
            "model's name (e.g. dgml_retrieval).")
    return servable


def images_reason(servable: RetrievalServable) -> str:
    """Why the gallery's images cannot be served ("" when they can)."""
    index = servable.index
    if getattr(index, "images", None) is not None:
        return ""
    if not getattr(index, "expose_paths", False):
        return ("the index was built without --store_images or --expose_paths, so its gallery "
                "images are not served; rebuild it with `python -m dgml_tf.index ... "
                "--store_images` to see neighbour images")
    if not any(str(p) for p in index.paths):
        return ("the index records no image files (an in-memory dataset such as Fashion-MNIST); "
                "index an image folder (--image_folder) to see neighbour images")
    return ""


def content_type(data: bytes) -> Optional[str]:
    """The image content type from the leading bytes, or None for anything else.

    Example:
        >>> content_type(b"\\x89PNG\\r\\n\\x1a\\n...")
        'image/png'
    """
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _read_image(path: str, max_bytes: int) -> tuple[bytes, str]:
    """The bytes of a regular image file no larger than ``max_bytes``, or a ServingError."""
    try:
        info = os.stat(path)
    except OSError:
        raise not_found("The gallery image file is missing on the server; rebuild the index.") from None
    if not stat.S_ISREG(info.st_mode):
        raise not_found("The gallery item's path is not a regular file.")
    if info.st_size > max_bytes:
        raise ServingError("RESOURCE_EXHAUSTED", f"The gallery image is {info.st_size} bytes, over "
                           f"the limit of {max_bytes}.")
    with open(path, "rb") as handle:
        data = handle.read(max_bytes + 1)
    kind = content_type(data)
    if kind is None:
        raise failed_precondition("The gallery item's file is not a PNG, JPEG, GIF, BMP or WebP image.")
    return data, kind


def gallery_listing(state, name: str, version: Optional[int] = None, label: Optional[str] = None,
                    limit: int = DEFAULT_LIMIT) -> dict:
    """Sample items of the retrieval model's gallery, spread over its labels.

    Args:
        state: the serving snapshot (``registry.state``).
        name, version, label: the retrieval model, as in TF Serving URLs.
        limit: how many items (1..200); the sample takes each label's first item in turn, so a
            small sample shows many classes.

    Returns:
        ``{"model_spec": {"name", "version"}, "num_items", "num_groups", "images_available",
        "reason", "items": [{"id", "label"}]}``; ``items`` lists only items whose image can be
        served (empty, with ``reason``, when none can).

    Example:
        >>> gallery_listing(registry.state, "dgml_retrieval", limit=4)["items"]  # doctest: +SKIP
        [{'id': 'item/0', 'label': 0}, {'id': 'item/2', 'label': 1}, ...]
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise invalid_argument(f"'limit' must be an integer in [1, {MAX_LIMIT}], got {limit!r}.")
    servable = _retrieval(state, name, version, label)
    index = servable.index
    reason = images_reason(servable)
    items = []
    if not reason:
        by_label: dict[int, list[int]] = {}
        for i, item_label in enumerate(index.labels.tolist()):
            if len(by_label.setdefault(int(item_label), [])) < limit:
                by_label[int(item_label)].append(i)
        order = [group[rank] for rank in range(limit) for _, group in sorted(by_label.items())
                 if rank < len(group)]
        stored = getattr(index, "images", None) is not None
        # Bounded: at most a few candidates per wanted item are checked on disk.
        for i in order[: 4 * limit]:
            path = str(index.paths[i])
            if stored or (path and os.path.isfile(path)):
                items.append({"id": str(index.ids[i]), "label": int(index.labels[i])})
            if len(items) == limit:
                break
        if not items:
            reason = "none of the sampled gallery files exist on the server; rebuild the index"
    return {
        "model_spec": {"name": servable.name, "version": str(servable.version)},
        "num_items": len(index),
        "num_groups": int(index.num_groups),
        "images_available": not reason,
        "reason": reason,
        "items": items,
    }


def gallery_route(state, path: str, query_string: bytes | str = b"") -> dict:
    """Answers ``GET /v1/gallery/...`` (see the module docstring) from the raw path and query.

    Example:
        >>> gallery_route(registry.state, "/v1/gallery/dgml_retrieval", b"limit=4")  # doctest: +SKIP
    """
    match = _ROUTE.match(path)
    if match is None:
        raise invalid_argument(f"Malformed request: GET {path[:200]}; use /v1/gallery/<model> or "
                               "/v1/gallery/<model>/item?id=<id>.")
    if isinstance(query_string, bytes):
        query_string = query_string.decode("latin-1")
    try:
        query = urllib.parse.parse_qs(query_string, strict_parsing=bool(query_string),
                                      max_num_fields=8)
    except ValueError:
        raise invalid_argument("Malformed query string.") from None
    version = int(match["version"]) if match["version"] else None
    if match["item"]:
        ids = query.get("id", [])
        if len(ids) != 1:
            raise invalid_argument("Pass exactly one ?id=<gallery item id>.")
        return gallery_item(state, match["name"], ids[0], version, match["label"])
    limit_text = query.get("limit", [str(DEFAULT_LIMIT)])[-1]
    if not limit_text.isdigit() or len(limit_text) > 6:
        raise invalid_argument(f"'limit' must be an integer in [1, {MAX_LIMIT}], got {limit_text[:20]!r}.")
    return gallery_listing(state, match["name"], version, match["label"], int(limit_text))


def gallery_item(state, name: str, item_id: str, version: Optional[int] = None,
                 label: Optional[str] = None, max_bytes: int = MAX_IMAGE_FILE_BYTES) -> dict:
    """Gallery item ``item_id`` with its encoded image.

    Returns:
        ``{"id", "label", "content_type", "image_bytes": {"b64": ...}}``.

    Raises:
        ServingError: NOT_FOUND (unknown id, missing file), FAILED_PRECONDITION (the index
            serves no images), INVALID_ARGUMENT (no id).

    Example:
        >>> gallery_item(registry.state, "dgml_retrieval", "item/3")["content_type"]  # doctest: +SKIP
        'image/png'
    """
    if not isinstance(item_id, str) or not item_id or len(item_id) > 4096:
        raise invalid_argument("Pass the gallery item's id as ?id=<id> (as returned in 'ids').")
    servable = _retrieval(state, name, version, label)
    reason = images_reason(servable)
    if reason:
        raise failed_precondition(f"Gallery images are not served: {reason}.")
    position = _position(servable).get(item_id)
    if position is None:
        raise not_found(f"No gallery item with id {item_id!r} in {servable.name} version "
                        f"{servable.version}.")
    store = getattr(servable.index, "images", None)
    if store is not None:
        if store.size(position) > max_bytes:
            raise ServingError("RESOURCE_EXHAUSTED", f"The gallery image is {store.size(position)} "
                               f"bytes, over the limit of {max_bytes}.")
        data = store.get(position)
        kind = content_type(data)
        if kind is None:
            raise failed_precondition("The stored gallery image is not a PNG, JPEG, GIF, BMP or WebP.")
    else:
        path = str(servable.index.paths[position])
        if not path:
            raise not_found(f"Gallery item {item_id!r} has no image file.")
        data, kind = _read_image(path, max_bytes)
    return {"id": item_id, "label": int(servable.index.labels[position]), "content_type": kind,
            "image_bytes": {"b64": base64.b64encode(data).decode("ascii")}}


def _position(servable: RetrievalServable) -> dict:
    # Built once per servable (a snapshot's servables are immutable).
    cached = getattr(servable, "_gallery_positions", None)
    if cached is None:
        cached = {str(item): i for i, item in enumerate(servable.index.ids)}
        servable._gallery_positions = cached
    return cached
