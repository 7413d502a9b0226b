"""The Loki boundary: the push protocol, both ways.

- ``wire``: PushRequest encode (hand-written hot path and the protobuf reference),
  snappy, decode (pure);
- ``push``: one endpoint's HTTP client (``LokiPusher``), the only code that POSTs;
- ``refusals``: what Loki's 4xx answers say it refused (pure);
- ``receiver``: the push server of ``loki.source.api`` (and ``FakeLoki``), with
  ``pushrequest`` (decoding a request, the memory budget) and ``validation``
  (Loki's checks), both pure.
"""

from __future__ import annotations

__all__: list[str] = []
