"""Whether connections were refused during a scenario: the server's own count of the
connections it turned away, and the host's TCP counters (a full accept queue, a reset
answering a connect)."""

from __future__ import annotations

import contextlib
import socket
from typing import Any

from dfdb.servers import LocalServer, RedisServer, ZooKeeperServer

__all__ = ["Refusals"]


def _kernel() -> dict[str, int]:
    """The host's TCP counters that say a connect was not accepted (every process's)."""
    out: dict[str, int] = {}
    for path, prefix, keys in (
        ("/proc/net/netstat", "TcpExt:", ("ListenOverflows", "ListenDrops")),
        ("/proc/net/snmp", "Tcp:", ("AttemptFails",)),
    ):
        try:
            with open(path) as f:
                rows = [line.split() for line in f if line.startswith(prefix)]
            values = dict(zip(rows[0][1:], rows[1][1:], strict=True))
            out |= {k: int(values[k]) for k in keys if k in values}
        except (OSError, IndexError, ValueError):
            continue
    return out


def _server_rejected(server: LocalServer | None) -> int | None:
    """Connections the server turned away since it started (``None``: it keeps no such
    count, as etcd, or it did not answer): Redis's ``rejected_connections`` (past
    ``maxclients``), ZooKeeper's ``zk_connection_rejected`` (every member's)."""
    if server is None or server.ca is not None:
        return None
    with contextlib.suppress(OSError, ValueError):
        if isinstance(server, RedisServer):
            for line in _redis_info(server.port).splitlines():
                if line.startswith("rejected_connections:"):
                    return int(line.split(":", 1)[1])
        elif isinstance(server, ZooKeeperServer):
            total = 0
            for index in range(server.members):
                for line in server.four_letters(index, b"mntr", timeout=5).splitlines():
                    if line.startswith("zk_connection_rejected"):
                        total += int(line.split()[1])
            return total
    return None


def _redis_info(port: int) -> str:
    """Redis's ``INFO stats`` (a bulk string) over a connection of its own."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"INFO stats\r\n")
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                raise ValueError("redis closed the connection")
            head += chunk
        line, rest = head.split(b"\r\n", 1)
        size = int(line[1:])  # a bulk string: $<length>
        while len(rest) < size:
            chunk = sock.recv(65536)
            if not chunk:
                raise ValueError("redis closed the connection")
            rest += chunk
        return rest[:size].decode(errors="replace")


class Refusals:
    """Counts, from :meth:`mark` to :meth:`figures`, the connections refused: by the
    server, and by the host's TCP (a connect whose SYN found a listener's accept queue
    full, or that was answered with a reset; the host's counters take in every process
    on it, so on a shared host they are an upper bound)."""

    def __init__(self, server: LocalServer | None) -> None:
        self.server = server
        self._kernel: dict[str, int] = {}
        self._server: int | None = None

    def mark(self) -> None:
        """Start counting from now."""
        self._kernel, self._server = _kernel(), _server_rejected(self.server)

    def figures(self) -> dict[str, Any]:
        """What was refused since :meth:`mark`; ``refused`` says whether anything was."""
        kernel, server = _kernel(), _server_rejected(self.server)
        rejected = None
        if server is not None:  # a server restarted since the mark counts from its start
            rejected = server - self._server if self._server is not None and server >= self._server else server
        out: dict[str, Any] = {"server_rejected": rejected}
        out["host_listen_overflows"] = kernel.get("ListenOverflows", 0) - self._kernel.get("ListenOverflows", 0)
        out["host_listen_drops"] = kernel.get("ListenDrops", 0) - self._kernel.get("ListenDrops", 0)
        out["host_connects_failed"] = kernel.get("AttemptFails", 0) - self._kernel.get("AttemptFails", 0)
        out["refused"] = bool(rejected) or out["host_listen_overflows"] > 0 or out["host_listen_drops"] > 0
        return out
