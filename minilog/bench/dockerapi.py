"""The few Docker Engine API calls the harness makes, over the socket, with aiohttp.

Owns the Docker boundary of ``minilog bench`` (and nothing of the agent's own Docker
client, so the harness measures any agent with code of its own): ping, image lookup,
create/start/kill/remove of containers, inspect, listing by label, and the last lines
of a container's log. ``DOCKER_HOST``: ``unix://PATH`` or ``tcp://HOST:PORT`` (no TLS).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from minilog.errors import BenchError

__all__ = ["DEFAULT_DOCKER_HOST", "DockerAPI"]

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
_API = "/v1.41"  # Docker 20.10 and later


def _exists(path: str) -> bool:
    return os.path.exists(path)


class DockerAPI:
    """An Engine API client; ``aclose()`` when done."""

    def __init__(self, host: str | None = None) -> None:
        self.host = host or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST
        if self.host.startswith("unix://"):
            self.socket_path = self.host[len("unix://") :]
            self._base = "http://docker" + _API
        elif self.host.startswith("tcp://"):
            self.socket_path = ""
            self._base = "http://" + self.host[len("tcp://") :] + _API
        else:
            raise BenchError(f"DOCKER_HOST={self.host}: only unix:// and tcp:// work")
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector: aiohttp.BaseConnector
            if self.socket_path:
                connector = aiohttp.UnixConnector(path=self.socket_path)
            else:
                connector = aiohttp.TCPConnector()
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=120, connect=10),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        ok: Sequence[int] = (200, 201, 204, 304),
    ) -> tuple[int, bytes]:
        data = None if body is None else orjson.dumps(body)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            async with self._client().request(
                method, self._base + path, params=params, data=data, headers=headers
            ) as resp:
                raw = await resp.read()
                if resp.status not in ok:
                    message = raw.decode(errors="replace").strip()
                    raise BenchError(
                        f"Docker Engine: {method} {path} answered {resp.status}: "
                        + message
                    )
                return resp.status, raw
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise BenchError(
                f"Docker Engine at {self.host} not reachable: {exc}"
            ) from exc

    async def ping(self) -> None:
        """Raises BenchError (the reason) when the Engine does not answer."""
        if self.socket_path and not _exists(self.socket_path):
            raise BenchError(f"Docker Engine socket {self.socket_path} does not exist")
        await self._call("GET", "/_ping")

    async def image_exists(self, image: str) -> bool:
        status, _ = await self._call(
            "GET", f"/images/{quote(image, safe='')}/json", ok=(200, 404)
        )
        return status == 200

    async def create(
        self,
        image: str,
        cmd: Sequence[str] | None,
        *,
        labels: Mapping[str, str],
        name: str | None = None,
        network_mode: str = "none",
        binds: Sequence[str] = (),
        env: Sequence[str] = (),
        user: str | None = None,
        pid_mode: str | None = None,
    ) -> str:
        """Create a container (json-file logging, the daemon's default); its ID."""
        body: dict[str, Any] = {
            "Image": image,
            "Labels": dict(labels),
            "Env": list(env),
            "HostConfig": {
                "NetworkMode": network_mode,
                "Binds": list(binds),
                "LogConfig": {"Type": "json-file", "Config": {}},
            },
        }
        if cmd is not None:
            body["Cmd"] = list(cmd)
        if user is not None:
            body["User"] = user
        if pid_mode is not None:
            body["HostConfig"]["PidMode"] = pid_mode
        params = {"name": name} if name else None
        _, raw = await self._call(
            "POST", "/containers/create", params=params, body=body
        )
        return str(orjson.loads(raw)["Id"])

    async def start(self, cid: str) -> None:
        await self._call("POST", f"/containers/{cid}/start")

    async def kill(self, cid: str, signal: str = "KILL") -> None:
        await self._call(
            "POST", f"/containers/{cid}/kill", params={"signal": signal}, ok=(204, 409)
        )

    async def stop(self, cid: str, timeout_s: int = 30) -> None:
        await self._call(
            "POST", f"/containers/{cid}/stop", params={"t": str(timeout_s)}
        )

    async def remove(self, cid: str) -> None:
        await self._call(
            "DELETE",
            f"/containers/{cid}",
            params={"force": "1", "v": "1"},
            ok=(204, 404, 409),
        )

    async def inspect(self, cid: str) -> dict[str, Any]:
        _, raw = await self._call("GET", f"/containers/{cid}/json")
        data: dict[str, Any] = orjson.loads(raw)
        return data

    async def list_ids(self, label: str) -> list[str]:
        """IDs of every container, running or not, with ``label`` (``k`` or ``k=v``)."""
        filters = orjson.dumps({"label": [label]}).decode()
        _, raw = await self._call(
            "GET", "/containers/json", params={"all": "1", "filters": filters}
        )
        return [str(c["Id"]) for c in orjson.loads(raw)]

    async def last_lines(self, cid: str, n: int) -> list[bytes]:
        """The last ``n`` stdout/stderr lines of a (non-TTY) container."""
        _, raw = await self._call(
            "GET",
            f"/containers/{cid}/logs",
            params={"stdout": "1", "stderr": "1", "tail": str(n)},
        )
        out: list[bytes] = []
        pos = 0
        while pos + 8 <= len(raw):
            (size,) = struct.unpack(">I", raw[pos + 4 : pos + 8])
            out.extend(raw[pos + 8 : pos + 8 + size].splitlines())
            pos += 8 + size
        return out
