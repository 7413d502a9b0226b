"""The file boundary: everything ``local.file_match`` and ``loki.source.file`` do.

- ``glob``: ``__path__`` doublestar patterns (pure);
- ``match``: globs to files on disk;
- ``lines``: a file's bytes to lines, ``encoding`` and partial last lines (pure);
- ``positions``: the positions file of ``loki.source.file``;
- ``tailer``: one file's tailer; ``source``: the supervisor of tailers;
- ``metrics``: ``loki_source_file_*`` and minilog's own series.

The tailers are woken by ``minilog.fswatch`` (shared with the json-file path of
``loki.source.docker``, owned by neither).
"""

from __future__ import annotations

__all__: list[str] = []
