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
