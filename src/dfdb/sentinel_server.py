"""A Redis Sentinel deployment on loopback: ``dfdb server run redis-sentinel`` and the tests.

One master, two replicas and three sentinels (``redis-server --sentinel``) on free
loopback ports, each with its data and configuration in one temporary folder. The
sentinels mark a silent master down after ``down_after`` seconds (default 1) and
promote a replica: ``kill -9`` of the master is followed by a new one in ~2-3 s.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import time
from pathlib import Path

from dfdb.errors import ConfigurationError
from dfdb.servers import LocalServer, ServerUnavailable, _wait_ready, free_port

__all__ = ["SentinelSetup"]


def _command(
    port: int, *args: str, timeout: float = 1.0, password: str | None = None, ca_file: Path | None = None
) -> bytes:
    """Send one command and return the raw reply (enough for readiness checks), over TLS
    trusting ``ca_file`` when given, after ``AUTH`` when a ``password`` is given."""
    with contextlib.ExitStack() as stack:
        sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=timeout))
        if ca_file is not None:
            context = ssl.create_default_context(cafile=str(ca_file))
            sock = stack.enter_context(context.wrap_socket(sock, server_hostname="127.0.0.1"))
        sock.settimeout(timeout)

        def call(*words: str) -> bytes:
            sock.sendall(f"*{len(words)}\r\n".encode() + b"".join(_bulk(w) for w in words))
            data = b""
            while not data.endswith(b"\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data

        if password is not None:
            call("AUTH", password)
        return call(*args)


def _bulk(word: str) -> bytes:
    data = word.encode()
    return f"${len(data)}\r\n".encode() + data + b"\r\n"


class SentinelSetup(LocalServer):
    """A master (member 0), ``replicas`` replicas and ``sentinels`` sentinels.

    ``processes`` holds the data servers first, then the sentinels; :meth:`kill` and
    :meth:`restart` take a data server's index. :attr:`url` is the
    ``redis+sentinel://`` URL naming every sentinel.

    Args:
        members: must be 1 (the deployment is fixed: 1 master, 2 replicas, 3 sentinels).
        name: the master name the sentinels monitor.
        down_after: seconds of silence after which a sentinel deems the master down.
        tls: every server and sentinel serves TLS only (certificates of a local CA; a
            client certificate is checked when one is presented); replication and the
            sentinels' own connections use TLS too.
        password: the data servers' ``requirepass`` (and the replicas' and sentinels'
            ``masterauth``/``auth-pass``).
        sentinel_password: the sentinels' ``requirepass`` (and ``sentinel-pass``).
    """

    binary = "redis-server"

    def __init__(
        self,
        members: int = 1,
        *,
        name: str = "mymaster",
        down_after: float = 1.0,
        tls: bool = False,
        password: str | None = None,
        sentinel_password: str | None = None,
    ) -> None:
        if members != 1:
            raise ConfigurationError("redis-sentinel: the deployment is fixed (1 master, 2 replicas, 3 sentinels)")
        super().__init__(members, tls=tls)
        self.name = name
        self.down_after = down_after
        self.password = password
        self.sentinel_password = sentinel_password
        self.data_ports = [free_port() for _ in range(3)]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinel_processes: list[subprocess.Popen[bytes] | None] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        tls = "" if self.ca is None else "&tls=true&" + self.ca.url_options()
        return f"redis+sentinel://{hosts}/{self.name}?db=0{tls}"

    def _data_command(self, port: int, *args: str) -> bytes:
        ca = None if self.ca is None else self.ca.ca_file
        return _command(port, *args, password=self.password, ca_file=ca)

    def _sentinel_command(self, port: int, *args: str) -> bytes:
        ca = None if self.ca is None else self.ca.ca_file
        return _command(port, *args, password=self.sentinel_password, ca_file=ca)

    def _tls_lines(self) -> list[str]:
        """The TLS settings of every server and sentinel (as configuration lines)."""
        if self.ca is None:
            return []
        return [
            f"tls-cert-file {self.ca.server_cert}", f"tls-key-file {self.ca.server_key}",
            f"tls-ca-cert-file {self.ca.ca_file}", "tls-auth-clients optional", "tls-replication yes",
        ]  # fmt: skip

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
        if self.ca is not None:
            args[1:3] = ["--port", "0", "--tls-port", str(port)]
            for line in self._tls_lines():
                key, value = line.split(" ", 1)
                args += [f"--{key}", value]
        if self.password is not None:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        if master_port is not None:
            args += ["--replicaof", "127.0.0.1", str(master_port)]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_ready(lambda: self._data_command(port, "PING").startswith(b"+PONG"), proc, f"redis-server on port {port}")
        return proc

    def _spawn_sentinel(self, index: int) -> subprocess.Popen[bytes]:
        port = self.sentinel_ports[index]
        folder = self.workdir / f"sentinel{index}"
        folder.mkdir(exist_ok=True)
        conf = folder / "sentinel.conf"
        lines = [f"port {port}"] if self.ca is None else ["port 0", f"tls-port {port}", *self._tls_lines()]
        if self.sentinel_password is not None:
            lines += [f"requirepass {_quoted(self.sentinel_password)}"]
            lines += [f"sentinel sentinel-pass {_quoted(self.sentinel_password)}"]
        conf.write_text(
            "".join(f"{line}\n" for line in lines)
            + f"bind 127.0.0.1\nprotected-mode no\ndir {folder}\nlogfile {folder / 'sentinel.log'}\n"
            f"sentinel monitor {self.name} 127.0.0.1 {self.data_ports[0]} 2\n"
            f"sentinel down-after-milliseconds {self.name} {int(self.down_after * 1000)}\n"
            f"sentinel failover-timeout {self.name} 5000\n"
            f"sentinel parallel-syncs {self.name} 2\n"
            f"sentinel myid {self._sentinel_id(index)}\n"
            + ("" if self.password is None else f"sentinel auth-pass {self.name} {_quoted(self.password)}\n")
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
        _wait_ready(lambda: b"+PONG" in self._sentinel_command(port, "PING"), proc, f"redis sentinel on port {port}")
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
                lambda port=port: b"master_link_status:up" in self._data_command(port, "INFO", "replication"),  # type: ignore[misc]
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
                    reply = self._sentinel_command(port, "SENTINEL", "MASTER", self.name)
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
                reply = self._sentinel_command(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name)
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
        _wait_ready(lambda: b"+PONG" in self._sentinel_command(port, "PING"), proc, f"redis sentinel on port {port}")
        self.sentinel_processes[index] = proc

    def stop(self) -> None:
        for proc in self.sentinel_processes:
            self._stop_process(proc, grace=2.0)
        self.sentinel_processes = []
        super().stop()


def _quoted(text: str) -> str:
    """``text`` as one argument of a Redis configuration line."""
    return '"' + "".join(f"\\x{ord(c):02x}" if not c.isalnum() else c for c in text) + '"'
