"""Generated from ``proto/push.proto`` by ``scripts/gen-proto``; never edit by hand."""

__all__: list[str] = []
