"""Alloy components minilog supports: one adapter module per component type.

Importing this package registers every type in ``COMPONENT_TYPES``, keyed by Alloy
name; the runtime (``agent.runtime``) builds components from it. The types the seed
config does not use are imported when a config first names them.
"""

from __future__ import annotations

from minilog.components import (
    discovery_docker,
    discovery_relabel,
    loki_source_docker,
    loki_write,
)
from minilog.components.base import (
    COMPONENT_TYPES,
    Component,
    ComponentOptions,
    ComponentRegistry,
    Fanout,
    Health,
    StableReceiver,
    component_type,
)

for _name, _module in (
    ("local.file", "local_file"),
    ("loki.echo", "loki_echo"),
    ("loki.process", "loki_process"),
    ("loki.relabel", "loki_relabel"),
    ("loki.source.api", "loki_source_api"),
    ("loki.source.file", "loki_source_file"),
    ("local.file_match", "local_file_match"),
):
    COMPONENT_TYPES.register_lazy(_name, f"minilog.components.{_module}")

__all__ = [
    "COMPONENT_TYPES",
    "Component",
    "ComponentOptions",
    "ComponentRegistry",
    "Fanout",
    "Health",
    "StableReceiver",
    "component_type",
    "discovery_docker",
    "discovery_relabel",
    "loki_source_docker",
    "loki_write",
]
