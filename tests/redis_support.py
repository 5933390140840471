"""A real redis-server for tests: own process, free 127.0.0.1 port, no persistence
unless a test asks for it, stopped afterwards."""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

import redis

from tests.conftest import require_binary
from tests.support import free_port


class RedisServer:
    """One redis-server process; ``restart()`` keeps the port (and, with ``aof``, the data)."""

    def __init__(
        self,
        directory: Path,
        *,
        aof: bool = False,
        host: str = "127.0.0.1",
        wrap: list[str] | None = None,
        extra: list[str] | None = None,
    ) -> None:
        self.binary = require_binary("redis-server")
        self.directory = directory
        self.aof = aof
        self.host = host  # where it listens; tests/netns.py runs it in a namespace (``wrap``)
        self.wrap = wrap or []
        self.extra = extra or []  # more redis-server options (``--maxmemory`` ...)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, socket_timeout=5)

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.aof
            else ["--appendonly", "no"]
        )
        self.process = subprocess.Popen(
            [
                *self.wrap,
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "0.0.0.0" if self.wrap else self.host,
                "--protected-mode",
                "no" if self.wrap else "yes",
                "--save",
                "",
                *persistence,
                "--dir",
                str(self.directory),
                "--logfile",
                str(self.directory / "redis.log"),
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with self.client() as c:
                    c.ping()
                    if not c.info("persistence").get("loading"):
                        return
            except redis.ConnectionError:
                pass
            if self.process.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited: {log}")
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer within 10 s")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: no shutdown save, connections drop at once."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            self.process = None


_shared: RedisServer | None = None


def shared_url() -> str:
    """The URL of the session's shared redis-server (started by the ``redis_shared`` fixture)."""
    assert _shared is not None, "request the redis_shared fixture first"
    return _shared.url


@contextlib.contextmanager
def shared_server(directory: Path):  # type: ignore[no-untyped-def]
    global _shared
    server = RedisServer(directory)
    server.start()
    _shared = server
    try:
        yield server
    finally:
        _shared = None
        server.stop()
