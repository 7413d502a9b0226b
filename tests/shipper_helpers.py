"""Shared helpers of the shipper and logging-handler tests: fast retries, a
``FakeLoki`` on a loop of its own (for code that blocks the test thread)."""

from __future__ import annotations

import asyncio
import threading

from minilog.testing import FakeLoki

__all__ = ["FAST", "ThreadedLoki", "base_url"]

FAST = {"batch_wait": 0.02, "min_backoff_period": 0.001, "max_backoff_period": 0.005}


class ThreadedLoki:
    """A FakeLoki on its own loop in a thread, for code that blocks the test thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.stub = self.call(self._make())

    async def _make(self) -> FakeLoki:
        stub = FakeLoki()
        await stub.start()
        return stub

    def call(self, coro: object) -> FakeLoki:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)  # type: ignore[arg-type]

    def hang(self) -> None:
        self.loop.call_soon_threadsafe(self.stub.faults.hang)

    def resume(self) -> None:
        self.loop.call_soon_threadsafe(self.stub.faults.clear)

    def wait_for_requests(self, n: int) -> None:
        asyncio.run_coroutine_threadsafe(
            self.stub.wait_for_requests(n), self.loop
        ).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.stub.aclose(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def base_url(stub: FakeLoki) -> str:
    return f"http://127.0.0.1:{stub.port}"
