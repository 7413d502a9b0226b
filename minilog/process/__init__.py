"""``loki.process``: Alloy's processing stages over stream batches, pure and batch-wise.

``build_pipeline([(name, args), ...], registry=...)`` compiles stage blocks (Alloy's
argument names and defaults; ``StageError`` when invalid); ``Pipeline.process(batch,
now_ns)`` returns one batch per final label set, owning the delivery reference;
``flush_expired``/``flush_all`` send held multiline blocks. See ``Pipeline``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from minilog.errors import StageError
from minilog.process.build import STAGE_NAMES, Pipeline, StageSpec, build_pipeline

if TYPE_CHECKING:
    from minilog.process.schemas import STAGE_BLOCKS, STAGE_SCHEMAS, decode_stages

__all__ = [
    "STAGE_BLOCKS",
    "STAGE_NAMES",
    "STAGE_SCHEMAS",
    "Pipeline",
    "StageError",
    "StageSpec",
    "build_pipeline",
    "decode_stages",
]


def __getattr__(name: str) -> Any:
    # The schemas need the config package; import it only when asked for, so that the
    # stages work (and are tested) without it.
    if name in ("STAGE_BLOCKS", "STAGE_SCHEMAS", "decode_stages"):
        from minilog.process import schemas

        return getattr(schemas, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
