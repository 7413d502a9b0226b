"""Alloy components minilog supports: one adapter module per component type.

Importing this package registers every type in ``COMPONENT_TYPES`` (keyed by Alloy
name); the runtime (``pipeline.py``) builds components from it.
"""

from __future__ import annotations

from minilog.components import (
    discovery_docker,
    discovery_relabel,
    loki_echo,
    loki_process,
    loki_relabel,
    loki_source_api,
    loki_source_docker,
    loki_write,
)
from minilog.components.base import (
    COMPONENT_TYPES,
    Component,
    ComponentOptions,
    Fanout,
    Health,
    StableReceiver,
    component_type,
)

__all__ = [
    "COMPONENT_TYPES",
    "Component",
    "ComponentOptions",
    "Fanout",
    "Health",
    "StableReceiver",
    "component_type",
    "discovery_docker",
    "discovery_relabel",
    "loki_echo",
    "loki_process",
    "loki_relabel",
    "loki_source_api",
    "loki_source_docker",
    "loki_write",
]
