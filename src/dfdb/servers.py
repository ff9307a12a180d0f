"""Local database servers on loopback: ``dfdb server run BACKEND`` and the benchmarks.

Each backend registers a factory in :data:`SERVERS` that starts its server (or a
cluster of ``members``) on free loopback ports with data in a temporary folder,
from the binaries of the Debian packages (``scripts/install-servers.sh``). The test
fixtures of :mod:`dfdb.testing` start their servers with the same classes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Self, TextIO

from dfdb.certs import LocalCA, make_local_ca
from dfdb.errors import ConfigurationError, DfdbError

__all__ = [
    "SERVERS",
    "EtcdServer",
    "LocalServer",
    "RedisServer",
    "ServerUnavailable",
    "ZooKeeperServer",
    "free_port",
    "run_foreground",
]


class ServerUnavailable(DfdbError, RuntimeError):
    """The server's binary is missing or it did not become ready."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LocalServer(ABC):
    """A server (or cluster) on loopback, with its data in a temporary folder."""

    binary: str = ""

    def __init__(self, members: int = 1, *, tls: bool = False) -> None:
        self.members = members
        self.workdir = Path(tempfile.mkdtemp(prefix="dfdb-server-"))
        self.processes: list[subprocess.Popen[bytes] | None] = []
        self.ca: LocalCA | None = make_local_ca(self.workdir / "tls") if tls else None
        """With ``tls``: the local CA and certificates the server uses (``url`` trusts it)."""
        self.ready_within = 20.0
        """Seconds a (re)started server or member may take to answer (a loaded host needs more)."""

    def _tls_query(self) -> str:
        """The URL options that trust the server's CA and present the client certificate."""
        return "" if self.ca is None else "?tls=true&" + self.ca.url_options()

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

    def kill(self, index: int = 0) -> None:
        """``kill -9`` member ``index`` (its data folder stays)."""
        proc = self.processes[index]
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def pause(self, index: int = 0) -> None:
        """``SIGSTOP`` member ``index``: it keeps its connections but answers nothing."""
        proc = self.processes[index]
        assert proc is not None
        proc.send_signal(signal.SIGSTOP)

    def resume(self, index: int = 0) -> None:
        """``SIGCONT`` member ``index``."""
        proc = self.processes[index]
        assert proc is not None
        proc.send_signal(signal.SIGCONT)

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


SERVERS: dict[str, Callable[..., LocalServer]] = {}
"""Backend name -> factory taking the number of members (and ``tls=True``)."""


def run_foreground(
    factory: Callable[..., LocalServer], members: int, out: TextIO | None = None, *, tls: bool = False
) -> int:
    """Run a server until Ctrl-C or ``SIGTERM``, printing its URL to ``out`` (default
    stdout); the server is stopped and its data folder deleted however it ends.
    With ``tls``, it serves TLS only with certificates of a local CA made in its data
    folder, and the URL names the CA and a client certificate.

    Returns:
        0 after an interrupt.

    Raises:
        ConfigurationError: ``members`` is not a size the backend can run.
        ServerUnavailable: missing binary, or not ready in time.
    """
    server = factory(members, tls=True) if tls else factory(members)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        server.start()
        print(f"serving on {server.url} (data in {server.workdir}); Ctrl-C stops", file=out or sys.stdout, flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


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
        tls: serve TLS only (certificates of a local CA; a client certificate is
            checked when one is presented).
    """

    binary = "redis-server"

    def __init__(self, members: int = 1, *, appendonly: bool = True, tls: bool = False) -> None:
        if members != 1:
            raise ConfigurationError("redis: only single servers are supported (--members 1)")
        super().__init__(members, tls=tls)
        self.appendonly = appendonly
        self.port = free_port()

    @property
    def url(self) -> str:
        if self.ca is not None:
            return f"rediss://127.0.0.1:{self.port}/0?{self.ca.url_options()}"
        return f"redis://127.0.0.1:{self.port}/0"

    def _ping(self) -> bool:
        with contextlib.ExitStack() as stack:
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", self.port), timeout=1))
            if self.ca is not None:
                context = ssl.create_default_context(cafile=str(self.ca.ca_file))
                context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # only: is it up?
                sock = stack.enter_context(context.wrap_socket(sock, server_hostname="127.0.0.1"))
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
            "--tcp-backlog", "4096",  # not 511: a thousand clients connecting at once (the kernel caps it at somaxconn)
        ]  # fmt: skip
        if self.ca is not None:
            args[1:3] = ["--port", "0", "--tls-port", str(self.port)]
            args += [
                "--tls-cert-file", str(self.ca.server_cert), "--tls-key-file", str(self.ca.server_key),
                "--tls-ca-cert-file", str(self.ca.ca_file), "--tls-auth-clients", "optional",
            ]  # fmt: skip
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.processes = [proc]
        _wait_ready(self._ping, proc, f"redis-server on port {self.port}", self.ready_within)

    def restart(self) -> None:
        """Start the server again on the same port with the same data folder."""
        self.kill()
        self.start()


SERVERS["redis"] = RedisServer


def _sentinel_setup(members: int, *, tls: bool = False) -> LocalServer:
    from dfdb.sentinel_server import SentinelSetup

    return SentinelSetup(members, tls=tls)


SERVERS["redis-sentinel"] = _sentinel_setup


def _http_json(url: str, body: bytes | None = None, timeout: float = 1.0) -> dict[str, object]:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        data: dict[str, object] = json.loads(reply.read())
        return data


class EtcdServer(LocalServer):
    """``etcd`` on free loopback ports (client and peer): one member or a cluster.

    Args:
        members: 1 for a single server, 3 (or more) for a cluster.
        progress_interval: the server's ``--experimental-watch-progress-notify-interval``.
        tls: serve clients over TLS only, with client-certificate authentication
            (certificates of a local CA; health and metrics stay on a plain port).
    """

    binary = "etcd"

    def __init__(self, members: int = 1, *, progress_interval: str = "500ms", tls: bool = False) -> None:
        if members < 1:
            raise ConfigurationError("etcd: --members must be at least 1")
        super().__init__(members, tls=tls)
        self.progress_interval = progress_interval
        self.client_ports = [free_port() for _ in range(members)]
        self.peer_ports = [free_port() for _ in range(members)]
        self.metrics_ports = [free_port() for _ in range(members)] if tls else self.client_ports
        self.token = f"dfdb-{os.getpid()}-{id(self):x}"

    @property
    def url(self) -> str:
        return "etcd://" + ",".join(f"127.0.0.1:{p}" for p in self.client_ports) + self._tls_query()

    def member_url(self, index: int) -> str:
        """The dfdb URL of member ``index`` alone."""
        return f"etcd://127.0.0.1:{self.client_ports[index]}" + self._tls_query()

    def _args(self, index: int, binary: str, state: str) -> list[str]:
        cluster = ",".join(f"m{i}=http://127.0.0.1:{p}" for i, p in enumerate(self.peer_ports))
        client = f"{'https' if self.ca else 'http'}://127.0.0.1:{self.client_ports[index]}"
        peer = f"http://127.0.0.1:{self.peer_ports[index]}"
        tls: list[str] = []
        if self.ca is not None:
            tls = [
                "--cert-file", str(self.ca.server_cert), "--key-file", str(self.ca.server_key),
                "--trusted-ca-file", str(self.ca.ca_file), "--client-cert-auth",
                "--listen-metrics-urls", f"http://127.0.0.1:{self.metrics_ports[index]}",
            ]  # fmt: skip
        return [
            binary, *tls, "--name", f"m{index}", "--data-dir", str(self.workdir / f"m{index}"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", cluster, "--initial-cluster-token", self.token,
            "--initial-cluster-state", state,
            "--experimental-watch-progress-notify-interval", self.progress_interval,
            "--log-level", "error", "--logger", "zap",
        ]  # fmt: skip

    def healthy(self, index: int) -> bool:
        """Whether member ``index`` answers ``/health`` with a leader."""
        try:
            return _http_json(f"http://127.0.0.1:{self.metrics_ports[index]}/health").get("health") == "true"
        except (OSError, ValueError):
            return False

    def watchers(self, index: int) -> int:
        """How many watches member ``index`` serves now (its ``/metrics`` gauge).

        Raises:
            ServerUnavailable: the member did not answer.
        """
        url = f"http://127.0.0.1:{self.metrics_ports[index]}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                text = reply.read().decode()
        except OSError as exc:
            raise ServerUnavailable(f"etcd member m{index}: no metrics ({exc})") from None
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name == "etcd_debugging_mvcc_watcher_total":
                return int(float(value))
        raise ServerUnavailable(f"etcd member m{index}: no watcher count in its metrics")

    def start(self) -> None:
        binary = shutil.which(self.binary)
        if binary is None:
            raise ServerUnavailable("etcd is not installed (scripts/install-servers.sh etcd)")
        self.processes = [self._spawn(i, binary) for i in range(self.members)]
        for i, proc in enumerate(self.processes):
            assert proc is not None
            what = f"etcd member m{i} on port {self.client_ports[i]}"
            _wait_ready(functools.partial(self.healthy, i), proc, what, self.ready_within)

    def _spawn(self, index: int, binary: str, state: str = "new") -> subprocess.Popen[bytes]:
        with open(self.workdir / f"m{index}.log", "ab") as log:
            return subprocess.Popen(self._args(index, binary, state), stdout=log, stderr=log)

    def _stop_process(self, proc: subprocess.Popen[bytes] | None, grace: float = 2.0) -> None:
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)  # a paused member would never exit
        super()._stop_process(proc, grace)  # a member without quorum may ignore SIGTERM: SIGKILL after it

    def leader(self) -> int:
        """The index of the current leader (waits up to 10 s for one)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ids: dict[str, int] = {}
            leader = None
            for i, port in enumerate(self.client_ports):
                proc = self.processes[i] if i < len(self.processes) else None
                if proc is None or proc.poll() is not None:
                    continue
                try:
                    status = _http_json(f"http://127.0.0.1:{port}/v3/maintenance/status", b"{}")
                except (OSError, ValueError):
                    continue
                header = status.get("header")
                if isinstance(header, dict):
                    ids[str(header.get("member_id"))] = i
                leader = str(status.get("leader")) if status.get("leader") else leader
            if leader in ids:
                return ids[leader]
            time.sleep(0.05)
        raise ServerUnavailable("etcd: no leader within 10s")

    def restart(self, index: int = 0) -> None:
        """Start member ``index`` again with its data (after ``kill``)."""
        self.kill(index)
        binary = shutil.which(self.binary)
        assert binary is not None
        proc = self._spawn(index, binary, "existing")
        self.processes[index] = proc
        if self.members == 1:
            _wait_ready(lambda: self.healthy(index), proc, f"etcd member m{index}", self.ready_within)


SERVERS["etcd"] = EtcdServer


class ZooKeeperServer(LocalServer):
    """ZooKeeper (``QuorumPeerMain`` from the Debian package) on free loopback ports:
    standalone or an ensemble of ``members``.

    ``force_sync``: ZooKeeper's ``forceSync`` (``yes``: the transaction log is fsynced
    before a write is acknowledged, ZooKeeper's own default and the production
    setting). Off by default here: loopback tests kill the server, never the machine,
    and the page cache survives ``kill -9``.

    ``initLimit`` (ticks a follower has to connect to a new leader and sync) is 60 s:
    a newly elected leader first writes a snapshot of the whole tree, which takes
    seconds with 100,000 nodes on a busy machine; with 5 s no follower synced in time
    and no quorum formed after the leader's loss. ``syncLimit`` stays 2.5 s, the time
    to notice a dead leader.
    """

    binary = "java"
    classpath = "/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar"

    netty = ":".join(
        f"/usr/share/java/netty-{name}.jar"
        for name in ("buffer", "codec", "common", "handler", "resolver", "transport", "transport-native-unix-common")
    )
    """Netty, for the TLS port (the Debian package's netty-all.jar only names these)."""

    def __init__(self, members: int = 1, *, heap: str = "256m", tls: bool = False, force_sync: bool = False) -> None:
        if members < 1:
            raise ConfigurationError("zookeeper: --members must be at least 1")
        super().__init__(members, tls=tls)
        self.heap = heap
        self.force_sync = force_sync
        """The JVM's -Xmx: ZooKeeper holds every node in memory."""
        self.client_ports = [free_port() for _ in range(members)]
        self.secure_ports = [free_port() for _ in range(members)] if tls else []
        """With ``tls``: the TLS client ports (Netty), which ``url`` names."""
        self.quorum_ports = [(free_port(), free_port()) for _ in range(members)]

    @classmethod
    def available(cls) -> bool:
        return shutil.which("java") is not None and all(Path(p).exists() for p in cls.classpath.split(":"))

    @property
    def url(self) -> str:
        return "zk://" + ",".join(f"127.0.0.1:{p}" for p in self.secure_ports or self.client_ports) + self._tls_query()

    def _config(self, index: int) -> Path:
        data = self.workdir / f"m{index}"
        data.mkdir(parents=True, exist_ok=True)
        lines = [
            "tickTime=500", "initLimit=120", "syncLimit=5", f"dataDir={data}",
            f"clientPort={self.client_ports[index]}", "clientPortAddress=127.0.0.1",
            "admin.enableServer=false", "4lw.commands.whitelist=*", "maxSessionTimeout=60000",
            f"forceSync={'yes' if self.force_sync else 'no'}",
            "maxClientCnxns=0",  # every client comes from 127.0.0.1: no cap of 60 connections per address
        ]  # fmt: skip
        if self.ca is not None:
            keystore = self.workdir / "tls" / "server-keystore.pem"
            keystore.write_bytes(self.ca.server_key.read_bytes() + self.ca.server_cert.read_bytes())
            keystore.chmod(0o600)
            lines += [
                f"secureClientPort={self.secure_ports[index]}", "secureClientPortAddress=127.0.0.1",
                f"ssl.keyStore.location={keystore}", "ssl.keyStore.type=PEM",
                f"ssl.trustStore.location={self.ca.ca_file}", "ssl.trustStore.type=PEM", "ssl.clientAuth=want",
            ]  # fmt: skip
        if self.members > 1:
            (data / "myid").write_text(f"{index + 1}\n")
            lines += [f"server.{i + 1}=127.0.0.1:{a}:{b}" for i, (a, b) in enumerate(self.quorum_ports)]
        config = self.workdir / f"zoo{index}.cfg"
        config.write_text("\n".join(lines) + "\n")
        return config

    def serving(self, index: int) -> bool:
        """Whether member ``index`` serves clients."""
        return self.mode(index) is not None

    def four_letters(self, index: int, command: bytes, timeout: float = 1) -> str:
        """Member ``index``'s reply to a four-letter command (``srvr``, ``mntr``; plain port
        only): the server closes the connection after it.

        Raises:
            OSError: the member did not answer.
        """
        with socket.create_connection(("127.0.0.1", self.client_ports[index]), timeout=timeout) as sock:
            sock.sendall(command)
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        return reply.decode(errors="replace")

    def mode(self, index: int) -> str | None:
        """``standalone``, ``leader`` or ``follower`` (from ``srvr``), ``None`` when not serving."""
        try:
            reply = self.four_letters(index, b"srvr")
        except OSError:
            return None
        for line in reply.splitlines():
            if line.startswith("Mode:"):
                return line.split(":", 1)[1].strip()
        return None

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        java = shutil.which("java")
        if java is None:
            raise ServerUnavailable("java is not installed (scripts/install-servers.sh zookeeper)")
        args = [
            java, f"-Xmx{self.heap}", "-Dzookeeper.admin.enableServer=false", "-cp", self.classpath,
            "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(self._config(index)),
        ]  # fmt: skip
        if self.ca is not None:
            args[4:5] = [f"{self.classpath}:{self.netty}"]
            args[2:2] = ["-Dzookeeper.serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory"]
        with open(self.workdir / f"m{index}.log", "ab") as log:
            return subprocess.Popen(args, stdout=log, stderr=log)

    def start(self) -> None:
        if not self.available():
            raise ServerUnavailable("zookeeper is not installed (scripts/install-servers.sh zookeeper)")
        self.processes = [self._spawn(i) for i in range(self.members)]
        for i, proc in enumerate(self.processes):
            assert proc is not None
            what = f"zookeeper member {i} on port {self.client_ports[i]}"
            # an ensemble serves once it has elected a leader: slow on a loaded machine
            within = max(self.ready_within, 60.0) if self.members > 1 else self.ready_within
            _wait_ready(functools.partial(self.serving, i), proc, what, within)
            if self.ca is not None:  # the first TLS handshake warms the JVM up: not a client's first call
                _wait_ready(functools.partial(self._tls_serving, i), proc, f"zookeeper member {i}'s TLS port")

    def _tls_serving(self, index: int) -> bool:
        assert self.ca is not None
        context = ssl.create_default_context(cafile=str(self.ca.ca_file))
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # only: is it up? (tests serve expired ones)
        with (
            socket.create_connection(("127.0.0.1", self.secure_ports[index]), timeout=5) as plain,
            context.wrap_socket(plain, server_hostname="127.0.0.1") as sock,
        ):
            sock.sendall(b"srvr")
            return sock.recv(64).startswith(b"Zookeeper version")

    def leader(self) -> int:
        """The index of the ensemble's leader (0 for a standalone server)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for i in range(self.members):
                if self.mode(i) in ("leader", "standalone"):
                    return i
            time.sleep(0.05)
        raise ServerUnavailable("zookeeper: no leader within 10s")

    def restart(self, index: int = 0, within: float = 60.0) -> None:
        """Start member ``index`` again with its data (after ``kill``); waits up to
        ``within`` seconds for it to serve (it reads its snapshot and log first)."""
        self.kill(index)
        proc = self._spawn(index)
        self.processes[index] = proc
        _wait_ready(functools.partial(self.serving, index), proc, f"zookeeper member {index}", within)


SERVERS["zookeeper"] = ZooKeeperServer
