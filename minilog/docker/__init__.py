"""The Docker boundary: everything ``discovery.docker`` and ``loki.source.docker`` do.

- ``client``: the async Engine API client, the only code that speaks to dockerd;
- ``frames``: log streams to entries (multiplexed frames, TTY, 16 KiB rejoin; pure);
- ``discovery``: containers and networks to ``__meta_docker_*`` targets;
- ``targets``: one target per container (fingerprint, dedupe; pure);
- ``positions``: the positions file;
- ``tailer``: one container's tailer; ``source``: the supervisor of tailers;
- ``metrics``: ``loki_source_docker_*`` and minilog's own series.

The json-file tailers are woken by ``minilog.fswatch`` (shared with
``loki.source.file``, owned by neither).
"""

from __future__ import annotations

__all__: list[str] = []
