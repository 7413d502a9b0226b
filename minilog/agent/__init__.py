"""The agent that replaces Grafana Alloy: ``minilog run``.

- ``graph``: config -> checked component graph (what ``minilog validate`` runs);
- ``runtime``: ``Agent``, which builds components from the graph and owns every task;
- ``server``: the agent's HTTP endpoints and UI;
- ``logsetup``: the agent's own log (format, level, repeated-line limit).
"""

from __future__ import annotations

__all__: list[str] = []
