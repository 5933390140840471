"""Network namespaces for partition tests: Redis, instance A and instance B each in
a namespace of their own, joined by veth pairs, so one instance's link to Redis can
be cut while everything else keeps running.

Addresses are only on those links (198.18.0.0/23, the benchmarking range)::

    A 198.18.0.1 ── 198.18.0.2 R 198.18.0.6 ── 198.18.0.5 B      (Redis links)
    A 198.18.1.2 ── 198.18.1.1 host            198.18.1.5 ── 198.18.1.6 B
    R 198.18.1.10 ── 198.18.1.9 host                         (test and admin links)

The test process stays in the host namespace and reaches every process over
its own link; only A and B talk to Redis over the links that get cut.
``cut`` takes Redis's end of A's link down: A's own interface stays up with
its route, so its packets are dropped silently, as in a real partition.
``unreachable``/``blackhole`` add a route in A instead: the fast-failing
variants.  Everything is removed at the end, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import require
from tests.processes import ServerProcess
from tests.redis_support import RedisServer


def available() -> bool:
    """Root, and an ``ip`` that can make namespaces here."""
    return os.geteuid() == 0 and shutil.which("ip") is not None and _can_make_namespaces()


def _can_make_namespaces() -> bool:
    name = f"lbprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode == 0
    if made:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return made


def require_netns() -> None:
    """Skip (fail under CI) when network namespaces cannot be made here."""
    require(available(), "root and `ip netns`")


def ip(*args: str) -> None:
    """Run ``ip args``; raise with its stderr on failure."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@dataclass
class Partition:
    """The three namespaces and their links; see the module docstring."""

    tag: str = field(default_factory=lambda: f"lb{os.getpid() % 100000}")
    redis_a: str = "198.18.0.2"  # Redis's address on A's link
    redis_b: str = "198.18.0.6"
    host_a: str = "198.18.1.2"  # where A and B serve, seen from the host
    host_b: str = "198.18.1.6"
    host_r: str = "198.18.1.10"
    made: list[str] = field(default_factory=list)
    host_links: list[str] = field(default_factory=list)

    def ns(self, which: str) -> str:
        return f"{self.tag}{which}"

    def wrap(self, which: str) -> list[str]:
        """The command prefix running a process in namespace ``which`` (a, b or r)."""
        return ["ip", "netns", "exec", self.ns(which)]

    def build(self) -> Partition:
        for which in "abr":
            ip("netns", "add", self.ns(which))
            self.made.append(self.ns(which))
            ip("-n", self.ns(which), "link", "set", "lo", "up")
        self._pair("a", "ra", "198.18.0.1", "198.18.0.2", "r")
        self._pair("b", "rb", "198.18.0.5", "198.18.0.6", "r")
        self._pair("a", "ha", self.host_a, "198.18.1.1", None)
        self._pair("b", "hb", self.host_b, "198.18.1.5", None)
        self._pair("r", "hr", self.host_r, "198.18.1.9", None)
        return self

    def _pair(self, left: str, name: str, left_ip: str, right_ip: str, right: str | None) -> None:
        """A veth ``{tag}{name}`` in ``left`` and its peer ``{tag}{name}p`` in ``right``
        (None: the host), each with a /30 address."""
        here, peer = f"{self.tag}{name}", f"{self.tag}{name}p"
        ip("link", "add", here, "type", "veth", "peer", "name", peer)
        if right is None:
            self.host_links.append(peer)
        else:
            ip("link", "set", peer, "netns", self.ns(right))
        ip("link", "set", here, "netns", self.ns(left))
        ip("-n", self.ns(left), "addr", "add", f"{left_ip}/30", "dev", here)
        ip("-n", self.ns(left), "link", "set", here, "up")
        where = [] if right is None else ["-n", self.ns(right)]
        ip(*where, "addr", "add", f"{right_ip}/30", "dev", peer)
        ip(*where, "link", "set", peer, "up")

    # -- cutting A's link to Redis ---------------------------------------------

    def cut(self) -> None:
        """Silent partition: Redis's end of A's link goes down; A's packets vanish."""
        ip("-n", self.ns("r"), "link", "set", f"{self.tag}rap", "down")

    def heal(self) -> None:
        ip("-n", self.ns("r"), "link", "set", f"{self.tag}rap", "up")

    def down(self) -> None:
        """A's own end of its link goes down: its route to Redis goes with it."""
        ip("-n", self.ns("a"), "link", "set", f"{self.tag}ra", "down")

    def up(self) -> None:
        ip("-n", self.ns("a"), "link", "set", f"{self.tag}ra", "up")

    def route(self, kind: str) -> None:
        """Fast-failing partition: an ``unreachable`` or ``blackhole`` route to Redis in A."""
        ip("-n", self.ns("a"), "route", "add", kind, f"{self.redis_a}/32")

    def unroute(self, kind: str) -> None:
        ip("-n", self.ns("a"), "route", "del", kind, f"{self.redis_a}/32")

    # -- processes ---------------------------------------------------------------

    def redis(self, directory: Path, **options: object) -> RedisServer:
        """A redis-server in R, reached by the test over R's host link."""
        return RedisServer(directory, host=self.host_r, wrap=self.wrap("r"), **options)  # type: ignore[arg-type]

    def instance(self, which: str, redis: RedisServer, log_path: Path) -> ServerProcess:
        """Lockerbus in namespace ``which`` (a or b), on Redis over its own link."""
        address = self.redis_a if which == "a" else self.redis_b
        url = f"redis://{address}:{redis.port}/0"
        env = {"LOCKERBUS_MESSAGE_QUEUE": url, "LOCKERBUS_LOG_LEVEL": "INFO"}
        return ServerProcess(
            store=url,
            log_path=log_path,
            env=env,
            host=self.host_a if which == "a" else self.host_b,
            wrap=self.wrap(which),
        )

    def remove(self) -> None:
        """Delete the namespaces (their veths go with them) and any host-side leftovers."""
        for name in self.made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        for link in self.host_links:
            subprocess.run(["ip", "link", "del", link], capture_output=True)
        self.made.clear()


@contextlib.contextmanager
def partition() -> Iterator[Partition]:
    """Build the namespaces; always remove them afterwards."""
    require_netns()
    net = Partition()
    try:
        yield net.build()
    finally:
        net.remove()
