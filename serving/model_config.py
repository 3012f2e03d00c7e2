"""Which models and versions to serve: ``--model_config_file`` (TF Serving's text proto) or flags.

The file is parsed with TF Serving's own ``ModelServerConfig`` proto, so one file works for this
server and for a real ``tensorflow_model_server``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One served model.

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

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve among those on disk, ascending."""
        available = sorted(available)
        if self.policy == "all":
            return available
        if self.policy == "specific":
            return [v for v in available if v in set(self.versions)]
        return available[-self.num_versions:] if self.num_versions > 0 else []


def available_versions(base_path: str | Path) -> list[int]:
    """Integer-named subdirectories of ``base_path`` holding a ``saved_model.pb``, ascending.

    A version directory still being written (no ``saved_model.pb`` yet) is not a version, which
    is also what keeps a half-exported model from being picked up by a reload.
    """
    base = Path(base_path)
    if not base.is_dir():
        raise FileNotFoundError(
            f"Model base path {base} does not exist; pass --model_base_path=<dir holding "
            "<version>/saved_model.pb> (the directory export_for_serving wrote)."
        )
    return sorted(
        int(p.name) for p in base.iterdir()
        if p.name.isdigit() and (p / "saved_model.pb").is_file()
    )


def parse_model_config_file(path: str | Path) -> list[ModelConfig]:
    """Reads a ``model_config_list`` text proto into :class:`ModelConfig` objects."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    text = Path(path).read_text(encoding="utf-8")
    message = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as error:
        raise ValueError(f"{path}: not a valid ModelServerConfig text proto: {error}") from None
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
