"""A real PostgreSQL cluster for tests: initdb + pg_ctl in a temporary directory, any
free 127.0.0.1 port, removed afterwards.

PostgreSQL refuses to run as root, so when the tests run as root (CI containers)
the cluster belongs to the ``postgres`` user and every command runs through
``runuser``.  Its directory is made with :func:`tempfile.mkdtemp` under the system
temporary directory rather than pytest's ``tmp_path`` (``/tmp/pytest-of-root`` is
closed to other users).  Missing binaries skip locally and fail under CI
(:func:`tests.conftest.require`).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import require
from tests.support import free_port

SUPERUSER = "postgres"


def find_bindir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are: PATH first, then Debian's
    /usr/lib/postgresql/<version>/bin (the newest)."""
    on_path = [shutil.which(name) for name in ("initdb", "pg_ctl", "psql")]
    if all(on_path):
        return Path(os.path.realpath(str(on_path[0]))).parent
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    return Path(found[-1]).parent if found else None


def require_postgres() -> Path:
    """The binaries' directory, or skip (fail under CI)."""
    bindir = find_bindir()
    require(bindir is not None and (bindir / "pg_ctl").exists(), "PostgreSQL (initdb, pg_ctl)")
    assert bindir is not None
    return bindir


def _as_owner() -> list[str]:
    """The prefix that runs a command as the cluster's owner."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    require(runuser is not None, "runuser (to run PostgreSQL as the postgres user)")
    return [str(runuser), "-u", SUPERUSER, "--"]


class PostgresServer:
    """One PostgreSQL cluster; ``restart()`` keeps its port and data."""

    def __init__(self, *, fsync: bool = True) -> None:
        self.bindir = require_postgres()
        self.prefix = _as_owner()
        self.root = Path(tempfile.mkdtemp(prefix="lockerbus-pg-"))
        if self.prefix:
            owner = pwd.getpwnam(SUPERUSER)
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self.data = self.root / "data"
        self.port = free_port()
        self.fsync = fsync
        self._databases: set[str] = set()

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*self.prefix, *args], capture_output=True, check=check, cwd=self.root, timeout=60
        )

    def init(self) -> None:
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            SUPERUSER,
            "--no-sync",
            "-E",
            "UTF8",
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            f"-c fsync={'on' if self.fsync else 'off'} -c max_connections=200"
        )
        done = self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "postgres.log"),
            "-w",
            "-t",
            "30",
            "start",
            check=False,
        )
        if done.returncode != 0:
            log = (self.root / "postgres.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"pg_ctl start failed: {done.stderr.decode()}\n{log}")

    def stop(self, mode: str = "fast") -> None:
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False
        )

    def restart(self) -> None:
        self.stop()
        self.start()

    def pids(self) -> list[int]:
        """The postmaster and its children (this cluster's processes only)."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == postmaster:
                    children.append(int(stat.parent.name))
        return [postmaster, *children]

    def freeze(self) -> list[int]:
        """SIGSTOP every process of this cluster: up, but answering nothing."""
        frozen = self.pids()
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        return frozen

    def thaw(self, frozen: list[int]) -> None:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` through psql; returns its unaligned output."""
        done = subprocess.run(
            [
                str(self.bindir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self.url(database),
                "-c",
                sql,
            ],
            capture_output=True,
            check=False,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.decode()}")
        return done.stdout.decode().strip()

    def database(self, name: str) -> str:
        """The URL of database ``name`` (made short and safe), created the first time."""
        db = "t_" + hashlib.sha1(name.encode()).hexdigest()[:20]
        if db not in self._databases:
            self.psql(f'CREATE DATABASE "{db}"')
            self._databases.add(db)
        return self.url(db)


@contextlib.contextmanager
def running(*, fsync: bool = True) -> Iterator[PostgresServer]:
    """A started cluster, removed afterwards whatever happens."""
    server = PostgresServer(fsync=fsync)
    try:
        server.init()
        deadline = time.monotonic() + 5
        while True:
            try:
                server.start()
                break
            except RuntimeError:
                if time.monotonic() > deadline:  # the free port was taken meanwhile
                    raise
                server.port = free_port()
        yield server
    finally:
        server.remove()


_shared: PostgresServer | None = None


def shared() -> PostgresServer:
    """The session's shared cluster (started by the ``postgres_shared`` fixture)."""
    assert _shared is not None, "request the postgres_shared fixture first"
    return _shared


@contextlib.contextmanager
def shared_server() -> Iterator[PostgresServer]:
    """Start the session's shared cluster (no fsync: its tests do not crash the machine)."""
    global _shared
    with running(fsync=False) as server:
        _shared = server
        try:
            yield server
        finally:
            _shared = None
