"""``minilog bench``: log agents measured side by side against a real Loki 3.6.

Throughput, latency, backpressure and faults (Loki stopped, 429s, slow answers, the
agent killed), counted exactly from what Loki holds; a table, ``results.json`` and PNG
plots. Needs the ``bench`` extra for the plots (``pip install 'minilog[bench]'``), a
Docker Engine and a Loki 3.6 (binary or image). See ``benchmarks/README.md``.

The package depends on no other part of minilog but ``minilog.errors``: it talks to
Docker, Loki and the agents over their own interfaces, so any agent can be measured.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """``minilog bench ...``; returns the exit code."""
    from minilog.bench.cli import main as bench_main

    return bench_main(argv)
