"""A Redis Sentinel deployment on loopback: ``dfdb server run redis-sentinel`` and the tests.

One master, two replicas and three sentinels (``redis-server --sentinel``) on free
loopback ports, each with its data and configuration in one temporary folder. The
sentinels mark a silent master down after ``down_after`` seconds (default 1) and
promote a replica: ``kill -9`` of the master is followed by a new one in ~2-3 s.
"""

from __future__ import annotations

import socket
import subprocess
import time

from dfdb.errors import ConfigurationError
from dfdb.servers import LocalServer, ServerUnavailable, _wait_ready, free_port

__all__ = ["SentinelSetup"]


def _command(port: int, *args: str, timeout: float = 1.0) -> bytes:
    """Send one inline command and return the raw reply (enough for readiness checks)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall((" ".join(args) + "\r\n").encode())
        data = b""
        sock.settimeout(timeout)
        while not data.endswith(b"\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


class SentinelSetup(LocalServer):
    """A master (member 0), ``replicas`` replicas and ``sentinels`` sentinels.

    ``processes`` holds the data servers first, then the sentinels; :meth:`kill` and
    :meth:`restart` take a data server's index. :attr:`url` is the
    ``redis+sentinel://`` URL naming every sentinel.

    Args:
        members: must be 1 (the deployment is fixed: 1 master, 2 replicas, 3 sentinels).
        name: the master name the sentinels monitor.
        down_after: seconds of silence after which a sentinel deems the master down.
    """

    binary = "redis-server"

    def __init__(self, members: int = 1, *, name: str = "mymaster", down_after: float = 1.0) -> None:
        if members != 1:
            raise ConfigurationError("redis-sentinel: the deployment is fixed (1 master, 2 replicas, 3 sentinels)")
        super().__init__(members)
        self.name = name
        self.down_after = down_after
        self.data_ports = [free_port() for _ in range(3)]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinel_processes: list[subprocess.Popen[bytes] | None] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.name}?db=0"

    def _spawn_data(self, index: int, master_port: int | None) -> subprocess.Popen[bytes]:
        port = self.data_ports[index]
        folder = self.workdir / f"redis{index}"
        folder.mkdir(exist_ok=True)
        args = [
            self.binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "",
            "--appendonly", "yes", "--appendfsync", "everysec", "--protected-mode", "no", "--daemonize", "no",
            "--logfile", str(folder / "redis.log"), "--repl-diskless-sync", "yes",
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        if master_port is not None:
            args += ["--replicaof", "127.0.0.1", str(master_port)]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_ready(lambda: _command(port, "PING").startswith(b"+PONG"), proc, f"redis-server on port {port}")
        return proc

    def _spawn_sentinel(self, index: int) -> subprocess.Popen[bytes]:
        port = self.sentinel_ports[index]
        folder = self.workdir / f"sentinel{index}"
        folder.mkdir(exist_ok=True)
        conf = folder / "sentinel.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {folder}\nlogfile {folder / 'sentinel.log'}\n"
            f"sentinel monitor {self.name} 127.0.0.1 {self.data_ports[0]} 2\n"
            f"sentinel down-after-milliseconds {self.name} {int(self.down_after * 1000)}\n"
            f"sentinel failover-timeout {self.name} 5000\n"
            f"sentinel parallel-syncs {self.name} 2\n"
            f"sentinel myid {self._sentinel_id(index)}\n"
            + "".join(f"sentinel known-replica {self.name} 127.0.0.1 {p}\n" for p in self.data_ports[1:])
            + "".join(
                f"sentinel known-sentinel {self.name} 127.0.0.1 {p} {self._sentinel_id(i)}\n"
                for i, p in enumerate(self.sentinel_ports)
                if i != index
            )  # known from the start: no wait for the sentinels' hello messages
        )
        proc = subprocess.Popen(
            [self.binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_ready(lambda: b"+PONG" in _command(port, "PING"), proc, f"redis sentinel on port {port}")
        return proc

    def _sentinel_id(self, index: int) -> str:
        return f"{self.sentinel_ports[index]:08d}".rjust(40, "0")

    def start(self) -> None:
        if not self.available():
            raise ServerUnavailable("redis-server is not installed (scripts/install-servers.sh redis)")
        master = self.data_ports[0]
        self.processes = [self._spawn_data(0, None)]
        self.processes += [self._spawn_data(i, master) for i in (1, 2)]
        for i in (1, 2):  # replicas in sync before the sentinels look
            port = self.data_ports[i]
            _wait_ready(
                lambda port=port: b"master_link_status:up" in _command(port, "INFO", "replication"),  # type: ignore[misc]
                self.processes[i],  # type: ignore[arg-type]
                f"replica on port {port}",
            )
        self.sentinel_processes = [self._spawn_sentinel(i) for i in range(3)]
        self.wait_for_sentinels()

    def wait_for_sentinels(self, within: float = 20.0) -> None:
        """Until every running sentinel knows the master, both replicas and the other sentinels."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            ready = True
            for port, proc in zip(self.sentinel_ports, self.sentinel_processes, strict=True):
                if proc is None or proc.poll() is not None:
                    continue
                try:
                    reply = _command(port, "SENTINEL", "MASTER", self.name)
                except OSError:
                    ready = False
                    break
                fields = reply.split(b"\r\n")
                info = {fields[i]: fields[i + 2] for i in range(2, len(fields) - 2, 4)}
                if info.get(b"num-slaves") != b"2" or info.get(b"num-other-sentinels") != b"2":
                    ready = False
                    break
            if ready:
                return
            time.sleep(0.05)
        raise ServerUnavailable(f"the sentinels did not see the whole deployment within {within:g}s")

    def master_port(self) -> int:
        """The port of the master according to the first sentinel that answers."""
        for port in self.sentinel_ports:
            try:
                reply = _command(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name)
            except OSError:
                continue
            return int(reply.split(b"\r\n")[4])
        raise ServerUnavailable("no sentinel answers")

    def master_index(self) -> int:
        """The index of the data server the sentinels name as master."""
        return self.data_ports.index(self.master_port())

    def restart(self, index: int = 0) -> None:
        """Start data server ``index`` again (empty); the sentinels turn it into a replica."""
        self.kill(index)
        self.processes[index] = self._spawn_data(index, self.master_port())

    def kill_sentinel(self, index: int) -> None:
        """``kill -9`` sentinel ``index``."""
        proc = self.sentinel_processes[index]
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart_sentinel(self, index: int) -> None:
        """Start sentinel ``index`` again (with the configuration it rewrote)."""
        self.kill_sentinel(index)
        port = self.sentinel_ports[index]
        conf = self.workdir / f"sentinel{index}" / "sentinel.conf"
        proc = subprocess.Popen(
            [self.binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_ready(lambda: b"+PONG" in _command(port, "PING"), proc, f"redis sentinel on port {port}")
        self.sentinel_processes[index] = proc

    def stop(self) -> None:
        for proc in self.sentinel_processes:
            self._stop_process(proc, grace=2.0)
        self.sentinel_processes = []
        super().stop()
