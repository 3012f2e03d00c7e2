"""Builds a :class:`~serving.model_registry.ServingState` from disk: embedder versions, the index,
and the retrieval model pairing them.

The pairing rule: the index records the fingerprint of the embedder SavedModel that built it
(``dgml_tf.export.model_fingerprint``); the retrieval model uses the served embedder version with
that fingerprint, and refuses to start (or to reload) when none matches, because vectors of one
model searched against another model's gallery return confident nonsense.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from dgml_tf.export.tf_serving_layout import SAVED_MODEL_FILE, ModelConfig, available_versions
from dgml_tf.index import IndexModelMismatchError
from dgml_tf.index.publish import current_version_dir
from serving.embedders import Embedder, LocalEmbedder, RemoteEmbedder
from serving.model_registry import ServedModel, ServingState
from serving.retrieval_servable import RetrievalServable
from serving.saved_model_servable import SavedModelServable

LOG = logging.getLogger("serving")


class IndexEmbedderMismatchError(IndexModelMismatchError):
    """The index was built with an embedder version that is not being served."""


class ServingStateLoader:
    """Loads what the flags or the model config file ask for.

    Args:
        configs: the embedder models to serve (empty when ``embedder_url`` is used alone).
        index_dir: a ``dgml_tf.index`` index directory; None serves embedders only.
        retrieval_for: which model's versions the index belongs to.
        retrieval_name: the retrieval model's name in URLs.
        embedder_url: a TF Serving model URL to take embeddings from instead of a local model.
        embedder_base_path: with ``embedder_url``, the remote model's base path on this disk, used
            only to fingerprint the remote version; without it only dimensions are checked.
    """

    def __init__(self, configs: list[ModelConfig], index_dir: Optional[str] = None,
                 retrieval_for: Optional[str] = None, retrieval_name: Optional[str] = None,
                 embedder_url: Optional[str] = None, embedder_base_path: Optional[str] = None):
        if index_dir and not retrieval_for:
            raise ValueError("retrieval_for (the embedder model name) is required with index_dir.")
        if embedder_url and not index_dir:
            raise ValueError("--embedder_url only feeds the retrieval model: pass --index_dir too.")
        self.configs = configs
        self.index_dir = index_dir
        self.retrieval_for = retrieval_for
        self.retrieval_name = retrieval_name or f"{retrieval_for}_retrieval"
        self.embedder_url = embedder_url
        self.embedder_base_path = embedder_base_path
        self._fingerprints: dict = {}

    def build(self, previous: Optional[ServingState]) -> ServingState:
        """Returns ``previous`` itself when nothing changed on disk, else a new snapshot."""
        remote = RemoteEmbedder(self.embedder_url) if self.embedder_url else None
        selected = {c.name: c.select(available_versions(c.base_path)) for c in self.configs}
        key = (
            tuple((c.name, tuple((v, _mtime(Path(c.base_path) / str(v) / SAVED_MODEL_FILE))
                                 for v in selected[c.name])) for c in self.configs),
            _index_key(self.index_dir) if self.index_dir else None,
            remote.version if remote else None,
        )
        if previous is not None and previous.source_key == key:
            return previous

        reusable = {}
        if previous is not None:
            for model in previous.models.values():
                for servable in model.servables.values():
                    if isinstance(servable, SavedModelServable):
                        reusable[(servable.name, servable.version)] = servable
        models = {}
        for config in self.configs:
            servables = {}
            for version in selected[config.name]:
                path = Path(config.base_path) / str(version)
                old = reusable.get((config.name, version))
                if (old is not None and old.path == path
                        and _mtime(path / SAVED_MODEL_FILE) == old.source_mtime_ns):
                    servables[version] = old
                else:
                    LOG.info("loading %s version %d from %s", config.name, version, path)
                    servables[version] = SavedModelServable(config.name, version, path)
            if not servables:
                raise FileNotFoundError(
                    f"No servable version of model {config.name!r} under {config.base_path} "
                    f"(policy {config.policy}); export one with dgml_tf.export.export_for_serving."
                )
            for label, version in config.labels.items():
                if version not in servables:
                    raise ValueError(
                        f"Label {label!r} of model {config.name!r} points to version {version}, "
                        f"which is not served (served: {sorted(servables)})."
                    )
            models[config.name] = ServedModel(config.name, servables, dict(config.labels))

        if self.index_dir:
            embedder, index = self._pair(models, remote)
            retrieval = RetrievalServable(self.retrieval_name, embedder, index)
            models[self.retrieval_name] = ServedModel(self.retrieval_name, {retrieval.version: retrieval})
        return ServingState(models, key)

    def _pair(self, models: dict, remote: Optional[RemoteEmbedder]) -> tuple[Embedder, object]:
        from dgml_tf.index import load_index

        index = load_index(self.index_dir)
        if remote is not None:
            if self.embedder_base_path:
                path = Path(self.embedder_base_path) / str(remote.version)
                if self._fingerprint(path) != index.model_fingerprint:
                    raise IndexEmbedderMismatchError(
                        f"The index at {self.index_dir} was built with embedder fingerprint "
                        f"{index.model_fingerprint}, but the remote embedder {self.embedder_url} "
                        f"serves version {remote.version} ({path}) with fingerprint "
                        f"{self._fingerprint(path)}; rebuild the index with that version."
                    )
            else:
                LOG.warning("cannot fingerprint the remote embedder without --model_base_path; "
                            "only the embedding size is checked against the index")
            return remote, index
        model = models.get(self.retrieval_for)
        if model is None:
            raise ValueError(f"The index belongs to model {self.retrieval_for!r}, which is not served.")
        found = {}
        for version, servable in sorted(model.servables.items(), reverse=True):
            found[version] = self._fingerprint(servable.path)
            if found[version] == index.model_fingerprint:
                return LocalEmbedder(servable), index
        raise IndexEmbedderMismatchError(
            f"The index at {self.index_dir} was built with embedder fingerprint "
            f"{index.model_fingerprint}, which matches none of the served versions of "
            f"{self.retrieval_for!r} ({', '.join(f'v{v}: {fp}' for v, fp in found.items())}). "
            "Rebuild the index with a served version (dgml_tf.index), or serve the version it "
            "was built with."
        )

    def _fingerprint(self, path: Path) -> str:
        from dgml_tf.export.fingerprint import model_fingerprint

        key = (str(path), _mtime(path / SAVED_MODEL_FILE))
        if key not in self._fingerprints:
            self._fingerprints[key] = model_fingerprint(path)
        return self._fingerprints[key]


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return -1


def _index_key(index_dir: str) -> tuple:
    """Identifies the published index version (versions are immutable once published)."""
    version_dir = current_version_dir(index_dir)
    if version_dir is None:  # a bare version directory, or nothing published (load_index says which)
        manifest = Path(index_dir) / "manifest.json"
        return (str(index_dir), _mtime(manifest))
    return (str(version_dir),)
