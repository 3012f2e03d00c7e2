"""Config files for the stock ``tensorflow/serving`` model server, and the compose file running it.

Files written into the export ``base_dir`` (mounted at ``/models`` in the container):

- ``models.config``: a ``ModelServerConfig`` text proto listing every model under ``base_dir``
  (each ``<name>/<integer versions>``); its policies and labels are
  :mod:`dgml_tf.export.tf_serving_layout`'s.
- ``batching_parameters.txt``: a ``BatchingParameters`` text proto (``--enable_batching``).
- ``monitoring.config``: a ``MonitoringConfig`` text proto exposing Prometheus metrics at
  ``/monitoring/prometheus/metrics`` on the REST port.

Every text is parsed back into its message class before it is written, so a file on disk always
parses for the model server. ``serving/docker-compose.yml`` is :func:`docker_compose_text`.
"""

from __future__ import annotations

import os
from typing import Dict, List, Mapping, Optional

from google.protobuf import text_format

from dgml_tf.atomic import write_text_atomically
from dgml_tf.export.metadata import read_export_metadata
from dgml_tf.export.serving_protos import batching_parameters_class, monitoring_config_class
from dgml_tf.export.tf_serving_layout import (
    CONTAINER_MODELS_DIR,
    MODELS_CONFIG,
    ModelVersions,
    existing_versions,
    model_server_config_text,
    read_model_labels,
)

BATCHING_CONFIG = "batching_parameters.txt"
MONITORING_CONFIG = "monitoring.config"
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
DEFAULT_TF_SERVING_IMAGE = "tensorflow/serving:latest"


def parse_labels(specs: "List[str] | str | None") -> Dict[str, int]:
    """Parses ``["stable=3", "canary=4"]`` (or ``"stable=3,canary=4"``) into ``{label: version}``."""
    if not specs:
        return {}
    if isinstance(specs, str):
        specs = specs.split(",")
    labels = {}
    for spec in specs:
        label, sep, version = spec.strip().partition("=")
        if not sep or not label or not version.strip().isdigit() or int(version) <= 0:
            raise ValueError(
                f"Bad version label {spec!r}: expected LABEL=VERSION with a positive integer "
                "version, e.g. --labels=stable=3,canary=4."
            )
        labels[label.strip()] = int(version)
    return labels


def batching_parameters_text(
    max_batch_size: int = 32,
    batch_timeout_micros: int = 2000,
    max_enqueued_batches: int = 100,
    num_batch_threads: int = 2,
) -> str:
    """A ``BatchingParameters`` text proto; defaults suit a small CPU host (threads ~ cores)."""
    for name, value in (("max_batch_size", max_batch_size), ("num_batch_threads", num_batch_threads),
                        ("max_enqueued_batches", max_enqueued_batches)):
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}.")
    if int(batch_timeout_micros) < 0:
        raise ValueError(f"batch_timeout_micros must be >= 0, got {batch_timeout_micros}.")
    message = batching_parameters_class()()
    message.max_batch_size.value = int(max_batch_size)
    message.batch_timeout_micros.value = int(batch_timeout_micros)
    message.max_enqueued_batches.value = int(max_enqueued_batches)
    message.num_batch_threads.value = int(num_batch_threads)
    # The bytes input is a [-1] string vector: nothing to pad, so padding stays off.
    text = text_format.MessageToString(message)
    text_format.Parse(text, batching_parameters_class()())
    return text


def monitoring_config_text(path: str = PROMETHEUS_PATH) -> str:
    """A ``MonitoringConfig`` text proto enabling Prometheus metrics at ``path``."""
    message = monitoring_config_class()()
    message.prometheus_config.enable = True
    message.prometheus_config.path = path
    text = text_format.MessageToString(message)
    text_format.Parse(text, monitoring_config_class()())
    return text


def discover_models(base_dir: "str | os.PathLike") -> Dict[str, List[int]]:
    """``{model_name: versions}`` for every directory under ``base_dir`` holding integer versions.

    Models whose latest export needs custom ops (``requires_custom_ops`` in its
    ``dgml_export.json``) are skipped: the stock server would fail to load them.
    """
    base_dir = os.fspath(base_dir)
    found = {}
    for entry in sorted(os.listdir(base_dir)) if os.path.isdir(base_dir) else []:
        versions = existing_versions(os.path.join(base_dir, entry))
        if versions and not entry.startswith(".") and not _needs_custom_ops(
            os.path.join(base_dir, entry, str(versions[-1]))
        ):
            found[entry] = versions
    return found


def _needs_custom_ops(version_dir: str) -> bool:
    """True for exports the stock server cannot load (e.g. ScaNN-op retrieval models)."""
    try:
        return bool(read_export_metadata(version_dir).get("requires_custom_ops"))
    except FileNotFoundError:
        return False


def write_serving_configs(
    base_dir: "str | os.PathLike",
    labels: Optional[Mapping[str, Mapping[str, int]]] = None,
    models_dir: str = CONTAINER_MODELS_DIR,
) -> Dict[str, str]:
    """(Re)writes ``models.config``, ``batching_parameters.txt``, ``monitoring.config``.

    Args:
        base_dir: the export base directory (every model under it is listed).
        labels: ``{model_name: {label: version}}`` to set; labels of other models already in
            ``models.config`` are kept.
        models_dir: where ``base_dir`` is mounted for the server (``/models`` in the container).

    Returns:
        ``{file name: path}`` of the written files.
    """
    base_dir = os.fspath(base_dir)
    os.makedirs(base_dir, exist_ok=True)
    config_path = os.path.join(base_dir, MODELS_CONFIG)
    all_labels = read_model_labels(config_path)
    for name, model_labels in (labels or {}).items():
        all_labels[name] = dict(model_labels)
    models = [
        ModelVersions(name, versions, {k: v for k, v in all_labels.get(name, {}).items()})
        for name, versions in discover_models(base_dir).items()
    ]
    unknown = set((labels or {})) - {m.name for m in models}
    if unknown:
        raise ValueError(f"Labels given for models with no version under {base_dir}: {sorted(unknown)}.")
    texts = {
        MODELS_CONFIG: model_server_config_text(models, models_dir),
        BATCHING_CONFIG: batching_parameters_text(),
        MONITORING_CONFIG: monitoring_config_text(),
    }
    written = {}
    for name, text in texts.items():
        path = os.path.join(base_dir, name)
        # The server polls models.config: replace it atomically so it never reads half a file.
        write_text_atomically(path, text)
        written[name] = path
    return written


def docker_compose_text(image: str = DEFAULT_TF_SERVING_IMAGE) -> str:
    """The compose file that serves an export base directory with the official image."""
    return f"""\
# Generated by dgml_tf.export.serving_configs.docker_compose_text(); regenerate, don't edit.
# Serves every model exported under $DGML_EXPORT_DIR (the --base_dir of `python -m dgml_tf.export`,
# which also wrote models.config, batching_parameters.txt and monitoring.config there):
#   DGML_EXPORT_DIR=$PWD/exports docker compose -f serving/docker-compose.yml up
# gRPC on :8500, REST on :8501 (POST /v1/models/<name>:predict, /v1/models/<name>/labels/stable),
# Prometheus metrics on :8501{PROMETHEUS_PATH}.
services:
  tf-serving:
    image: ${{TF_SERVING_IMAGE:-{image}}}
    entrypoint: ["tensorflow_model_server"]
    command:
      - --port=8500
      - --rest_api_port=8501
      - --model_config_file={CONTAINER_MODELS_DIR}/{MODELS_CONFIG}
      - --model_config_file_poll_wait_seconds=60
      - --file_system_poll_wait_seconds=30
      - --enable_batching=true
      - --batching_parameters_file={CONTAINER_MODELS_DIR}/{BATCHING_CONFIG}
      - --monitoring_config_file={CONTAINER_MODELS_DIR}/{MONITORING_CONFIG}
      - --allow_version_labels_for_unavailable_models=true
    ports:
      - "8500:8500"
      - "8501:8501"
    volumes:
      - ${{DGML_EXPORT_DIR:?set DGML_EXPORT_DIR to the export base_dir}}:{CONTAINER_MODELS_DIR}:ro
    restart: unless-stopped
"""


def write_templates(directory: "str | os.PathLike") -> List[str]:
    """Writes example configs (model ``dgml`` and ``dgml_retrieval``) into ``directory``."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    texts = {
        MODELS_CONFIG: model_server_config_text(
            [ModelVersions("dgml", [1, 2], {"stable": 1, "canary": 2}),
             ModelVersions("dgml_retrieval", [1])]
        ),
        BATCHING_CONFIG: batching_parameters_text(),
        MONITORING_CONFIG: monitoring_config_text(),
    }
    paths = []
    for name, text in texts.items():
        path = os.path.join(directory, name)
        write_text_atomically(path, text)
        paths.append(path)
    return paths
