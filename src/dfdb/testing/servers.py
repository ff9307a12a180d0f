"""Local database servers on loopback for development and tests.

The same code serves the test fixtures and ``dfdb server run BACKEND``: each
backend registers a factory in :data:`SERVERS` that starts its server (or a
cluster of ``members``) on free loopback ports with data in a temporary folder.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Self

__all__ = ["SERVERS", "LocalServer", "ServerUnavailable", "free_port", "require_servers", "run_foreground"]


class ServerUnavailable(RuntimeError):
    """The server's binary is missing or it did not become ready."""


def require_servers() -> bool:
    """Whether a missing server must fail tests instead of skipping them (``DFDB_REQUIRE_SERVERS=1``)."""
    return os.environ.get("DFDB_REQUIRE_SERVERS", "") not in ("", "0")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LocalServer(ABC):
    """A server (or cluster) on loopback, with its data in a temporary folder."""

    binary: str = ""

    def __init__(self, members: int = 1) -> None:
        self.members = members
        self.workdir = Path(tempfile.mkdtemp(prefix="dfdb-server-"))
        self.processes: list[subprocess.Popen[bytes] | None] = []

    @classmethod
    def available(cls) -> bool:
        """Whether the server's binary is installed."""
        return shutil.which(cls.binary) is not None

    @property
    @abstractmethod
    def url(self) -> str:
        """The dfdb URL of the running server or cluster."""

    @abstractmethod
    def start(self) -> None:
        """Start every member and wait until ready.

        Raises:
            ServerUnavailable: missing binary or not ready in time.
        """

    def _stop_process(self, proc: subprocess.Popen[bytes] | None, grace: float = 5.0) -> None:
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        """Stop every member and delete the data folder."""
        for proc in self.processes:
            self._stop_process(proc)
        self.processes = []
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


SERVERS: dict[str, Callable[[int], LocalServer]] = {}
"""Backend name -> factory taking the number of members."""


def run_foreground(factory: Callable[[int], LocalServer], members: int) -> int:
    """Run a server until interrupted, printing its URL (``dfdb server run``)."""
    server = factory(members)
    try:
        server.start()
    except ServerUnavailable as exc:
        print(f"dfdb: {exc}")
        return 1
    try:
        print(f"serving on {server.url} (data in {server.workdir}); Ctrl-C stops", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


def _wait_ready(check: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerUnavailable(f"{what} exited with status {proc.returncode} while starting")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise ServerUnavailable(f"{what} was not ready within {within:g}s")


class RedisServer(LocalServer):
    """``redis-server`` on a free loopback port.

    Args:
        members: must be 1 (replication is not set up here).
        appendonly: keep an append-only file (``appendfsync always``) so that a
            restart after ``kill -9`` keeps every acknowledged write.
    """

    binary = "redis-server"

    def __init__(self, members: int = 1, *, appendonly: bool = True) -> None:
        if members != 1:
            raise ServerUnavailable("redis: only single servers are supported (--members 1)")
        super().__init__(members)
        self.appendonly = appendonly
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")

    def start(self) -> None:
        binary = shutil.which(self.binary)
        if binary is None:
            raise ServerUnavailable("redis-server is not installed (scripts/install-servers.sh redis)")
        args = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
            "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
            "--protected-mode", "no", "--daemonize", "no", "--logfile", str(self.workdir / "redis.log"),
        ]  # fmt: skip
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.processes = [proc]
        _wait_ready(self._ping, proc, f"redis-server on port {self.port}")

    def kill(self) -> None:
        """``kill -9`` the server (its data folder stays)."""
        for proc in self.processes:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()

    def restart(self) -> None:
        """Start the server again on the same port with the same data folder."""
        self.kill()
        self.start()


SERVERS["redis"] = lambda members: RedisServer(members)
