"""TF Serving's model layout ``<base>/<model_name>/<version>/`` and its ``models.config``.

The one home of what exporting and serving both know about TF Serving's files:

- versions: TF Serving polls ``<base>/<model_name>`` and loads integer-named subdirectories;
  anything else (our ``.tmp-*`` staging directories) is ignored. A version is staged next to its
  final place and renamed into it: ``rename`` is atomic on one filesystem and fails if the
  target exists, so a server never sees a half-written version and an existing version is never
  overwritten. :func:`existing_versions` lists version directories, :func:`available_versions`
  the complete ones (holding ``saved_model.pb``) a server may load.
- ``models.config``: a ``ModelServerConfig`` text proto, parsed with TF Serving's own proto into
  :class:`ModelConfig` (what a server serves) and written from :class:`ModelVersions` (what an
  export base directory holds) with version policy ``latest { num_versions: 2 }`` (the new
  version and the one before it stay loaded, so a canary can be compared and rolled back) and
  ``version_labels`` such as ``stable``/``canary``. TF Serving only assigns a label to a loaded
  version; when a label names a version outside the two latest, the policy becomes
  ``specific { versions: ... }`` listing the labelled versions plus the latest one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import re
import shutil
from typing import Dict, Iterator, List, Optional

from dgml_tf.atomic import fsync_directory, fsync_tree

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SAVED_MODEL_FILE = "saved_model.pb"
MODELS_CONFIG = "models.config"
CONTAINER_MODELS_DIR = "/models"
LATEST_VERSIONS_SERVED = 2


class VersionExistsError(FileExistsError):
    """The requested model version directory already exists."""


def check_model_name(model_name: str) -> str:
    """Model names become directory names and TF Serving URL parts: keep them plain."""
    if not isinstance(model_name, str) or not _NAME.match(model_name):
        raise ValueError(
            f"Invalid model_name {model_name!r}: use letters, digits, '_', '-' and '.', starting "
            "with a letter or digit (it becomes a directory and a /v1/models/<name> URL part)."
        )
    return model_name


def existing_versions(model_dir: "str | os.PathLike", complete: bool = False) -> List[int]:
    """Sorted integer versions under ``model_dir`` (staging and other entries ignored).

    Args:
        model_dir: ``<base>/<model_name>``; a missing directory has no versions.
        complete: only versions holding ``saved_model.pb`` (what a server can load).

    Example:
        >>> existing_versions("exports/dgml")  # doctest: +SKIP
        [1, 2, 3]
    """
    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir):
        return []

    def is_version(path: str) -> bool:
        return os.path.isfile(os.path.join(path, SAVED_MODEL_FILE)) if complete else os.path.isdir(path)

    return sorted(
        int(entry) for entry in os.listdir(model_dir)
        if entry.isdigit() and is_version(os.path.join(model_dir, entry))
    )


def available_versions(base_path: "str | os.PathLike") -> List[int]:
    """Integer-named subdirectories of ``base_path`` holding a ``saved_model.pb``, ascending.

    A version directory still being written (no ``saved_model.pb`` yet) is not a version, which
    is also what keeps a half-exported model from being picked up by a reload.

    Raises:
        FileNotFoundError: ``base_path`` does not exist.
    """
    if not os.path.isdir(base_path):
        raise FileNotFoundError(
            f"Model base path {pathlib.Path(base_path)} does not exist; pass "
            "--model_base_path=<dir holding <version>/saved_model.pb> (the directory "
            "export_for_serving wrote)."
        )
    return existing_versions(base_path, complete=True)


def latest_version_dir(model_dir: "str | os.PathLike") -> pathlib.Path:
    """``<model_dir>/<highest version>``.

    Raises:
        FileNotFoundError: no version directory under ``model_dir``.
    """
    versions = existing_versions(model_dir)
    if not versions:
        raise FileNotFoundError(f"No exported version under {model_dir}.")
    return pathlib.Path(model_dir) / str(versions[-1])


def resolve_version(model_dir: "str | os.PathLike", version: Optional[int]) -> int:
    """``version`` checked to be a new positive integer, or (None) the latest version + 1."""
    versions = existing_versions(model_dir)
    if version is None:
        return (versions[-1] + 1) if versions else 1
    if isinstance(version, bool) or not isinstance(version, int) or version <= 0:
        raise ValueError(f"version must be a positive integer or None, got {version!r}.")
    if version in versions:
        raise VersionExistsError(
            f"Version {version} already exists at {os.path.join(os.fspath(model_dir), str(version))}"
            f"; versions are never overwritten. Omit --version to use {versions[-1] + 1}, or "
            "delete that directory yourself if you really mean to replace it."
        )
    return version


@contextlib.contextmanager
def staged_version_dir(model_dir: "str | os.PathLike", version: int) -> Iterator[pathlib.Path]:
    """Yields a staging directory that becomes ``<model_dir>/<version>`` on success.

    On an exception the staging directory is removed and nothing appears under ``version``.
    """
    model_dir = pathlib.Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    final = model_dir / str(version)
    staging = model_dir / f".tmp-{version}-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        yield staging
        if final.exists():
            raise VersionExistsError(
                f"Version directory {final} appeared while exporting; not overwriting it."
            )
        fsync_tree(os.fspath(staging))  # on disk before TF Serving can see the version
        os.rename(staging, final)
        fsync_directory(os.fspath(model_dir))
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _model_server_config_pb2():
    try:
        from tensorflow_serving.config import model_server_config_pb2
    except ImportError as error:
        raise ImportError(
            "Reading or writing TF Serving's models.config needs tensorflow-serving-api: "
            "pip install 'dgml-tf[serving]' (tensorflow-serving-api==2.20.0)."
        ) from error
    return model_server_config_pb2


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One served model, as a ``models.config`` entry (or the server's flags) describe it.

    Attributes:
        name: model name in URLs.
        base_path: directory holding ``<integer version>/saved_model.pb``.
        policy: ``"latest"``, ``"all"`` or ``"specific"``.
        num_versions: how many latest versions (policy ``latest``).
        versions: the versions to serve (policy ``specific``).
        labels: ``{label: version}``.
    """

    name: str
    base_path: str
    policy: str = "latest"
    num_versions: int = 1
    versions: tuple = ()
    labels: dict = dataclasses.field(default_factory=dict)

    def select(self, available: List[int]) -> List[int]:
        """The versions to serve among those on disk, ascending."""
        available = sorted(available)
        if self.policy == "all":
            return available
        if self.policy == "specific":
            return [v for v in available if v in set(self.versions)]
        return available[-self.num_versions:] if self.num_versions > 0 else []


def _parse_model_server_config(text: str, source: "str | os.PathLike"):
    """``text`` as a ``ModelServerConfig`` message; ValueError naming ``source`` if it is not one."""
    from google.protobuf import text_format

    message = _model_server_config_pb2().ModelServerConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as error:
        raise ValueError(f"{source}: not a valid ModelServerConfig text proto: {error}") from None
    return message


def parse_model_config_file(path: "str | os.PathLike") -> List[ModelConfig]:
    """Reads a ``model_config_list`` text proto into :class:`ModelConfig` objects.

    Raises:
        ValueError: not a ``ModelServerConfig``, no model, a model without name or base path,
            a platform other than ``tensorflow``, or a name used twice.

    Example:
        >>> [c.name for c in parse_model_config_file("exports/models.config")]  # doctest: +SKIP
        ['dgml', 'dgml_retrieval']
    """
    message = _parse_model_server_config(pathlib.Path(path).read_text(encoding="utf-8"), path)
    if not message.HasField("model_config_list") or not message.model_config_list.config:
        raise ValueError(f"{path}: expected 'model_config_list {{ config {{ ... }} }}' with at least one model.")
    configs = []
    for entry in message.model_config_list.config:
        if not entry.name or not entry.base_path:
            raise ValueError(f"{path}: every config needs both 'name' and 'base_path'.")
        if entry.model_platform not in ("", "tensorflow"):
            raise ValueError(f"{path}: model {entry.name!r} has platform {entry.model_platform!r}; only 'tensorflow' is served.")
        policy = entry.model_version_policy
        kind = policy.WhichOneof("policy_choice") or "latest"
        num_versions = (policy.latest.num_versions or 1) if kind == "latest" else 1
        configs.append(ModelConfig(
            name=entry.name,
            base_path=entry.base_path,
            policy=kind,
            num_versions=num_versions,
            versions=tuple(policy.specific.versions) if kind == "specific" else (),
            labels=dict(entry.version_labels),
        ))
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: model names must be unique, got {names}.")
    return configs


def read_model_labels(config_path: "str | os.PathLike") -> Dict[str, Dict[str, int]]:
    """``{model_name: {label: version}}`` from an existing ``models.config`` (empty if absent)."""
    config_path = os.fspath(config_path)
    if not os.path.isfile(config_path):
        return {}
    with open(config_path, encoding="utf-8") as f:
        config = _parse_model_server_config(f.read(), config_path)
    return {c.name: dict(c.version_labels) for c in config.model_config_list.config}


@dataclasses.dataclass
class ModelVersions:
    """The versions of one model on disk and its labels: what a ``models.config`` entry is written from.

    Attributes:
        name: the model name (``/v1/models/<name>``), also its directory under ``base_dir``.
        versions: the integer versions present on disk.
        labels: version labels, ``{"stable": 3, "canary": 4}``.
    """

    name: str
    versions: List[int]
    labels: Dict[str, int] = dataclasses.field(default_factory=dict)

    def served_versions(self) -> Optional[List[int]]:
        """None for ``latest {2}``; the explicit list when a label needs an older version."""
        latest = self.versions[-LATEST_VERSIONS_SERVED:]
        if all(v in latest for v in self.labels.values()):
            return None
        return sorted(set(self.labels.values()) | set(self.versions[-1:]))


def model_server_config_text(models: List[ModelVersions], models_dir: str = CONTAINER_MODELS_DIR) -> str:
    """The ``models.config`` text proto for ``models`` (validated by a round trip).

    Example:
        >>> print(model_server_config_text([ModelVersions("dgml", [1, 2])]))  # doctest: +SKIP
    """
    from google.protobuf import text_format

    pb2 = _model_server_config_pb2()
    config = pb2.ModelServerConfig()
    for model in models:
        for label, version in model.labels.items():
            if version not in model.versions:
                raise ValueError(
                    f"Label {label}={version} of model {model.name!r} names a version that does "
                    f"not exist (have {model.versions}); export it first or fix --labels."
                )
        entry = config.model_config_list.config.add(
            name=model.name, base_path=f"{models_dir.rstrip('/')}/{model.name}",
            model_platform="tensorflow",
        )
        served = model.served_versions()
        if served is None:
            entry.model_version_policy.latest.num_versions = LATEST_VERSIONS_SERVED
        else:
            entry.model_version_policy.specific.versions.extend(served)
        for label, version in sorted(model.labels.items()):
            entry.version_labels[label] = version
    text = text_format.MessageToString(config)
    text_format.Parse(text, pb2.ModelServerConfig())
    return text
