"""``loki.echo``: logs every entry it receives to minilog's own log, then drops it.

Like Alloy's, it is a debugging sink: one info record per entry with its labels and
timestamp. It owns nothing but the exported receiver.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from minilog.components.base import (
    Component,
    ComponentOptions,
    StableReceiver,
    register,
)
from minilog.labels import format_labels, public_labels
from minilog.model import StreamBatch

__all__ = ["LokiEcho", "LokiEchoArgs"]


@dataclass(frozen=True)
class LokiEchoArgs:
    """``loki.echo "x" {}`` takes no arguments."""


@register
class LokiEcho(Component[LokiEchoArgs]):
    """Logs what reaches it; ``loki.echo "x" {}`` takes no arguments."""

    name = "loki.echo"
    args_class = LokiEchoArgs
    phase = "process"

    @classmethod
    def placeholder_exports(cls, component_id: str) -> Mapping[str, Any]:
        return {"receiver": StableReceiver(component_id)}

    def __init__(self, opts: ComponentOptions, args: LokiEchoArgs) -> None:
        super().__init__(opts, args)
        self._exports = {"receiver": self}

    def exports(self) -> Mapping[str, Any]:
        return self._exports

    async def update(self, args: LokiEchoArgs) -> None:
        self.args = args

    async def send(self, batch: StreamBatch) -> None:
        labels = format_labels(public_labels(batch.labels))
        for entry in batch.entries:
            self.log.info(
                "received log entry",
                extra={
                    "receiver": self.id,
                    "entry": entry.line,
                    "entry_timestamp": entry.timestamp_ns,
                    "labels": labels,
                    "structured_metadata": dict(entry.structured_metadata),
                },
            )
        batch.settle()
