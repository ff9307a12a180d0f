"""What a backend costs to run: a local server's memory, CPU and disk, and this process's CPU.

Everything is read from ``/proc`` (Linux): a server process's resident memory and CPU
seconds (user + system) from ``/proc/<pid>/stat``, the bytes its data directory takes on
disk (allocated blocks, as ``du`` counts them), and this process's own CPU time (the
client's cost: dfdb, the client library, the event loop). A :class:`Meter` gives the
differences over a measured block::

    meter = Meter(locate(url))
    with meter.measure() as delta:
        ...  # the work
    delta.server_cpu, delta.client_cpu, delta.after.rss, delta.disk_growth

The server is found from a :class:`~dfdb.servers.LocalServer` (its processes and data
folder), or, for a URL of your own, as the local process listening on the URL's
loopback port (``/proc/net/tcp*`` and ``/proc/*/fd``). What cannot be read (a remote
server, a process of another user, no ``/proc``) is said in :attr:`Target.missing`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dfdb.servers import LocalServer
from dfdb.url import DatabaseURL

__all__ = [
    "Delta",
    "Meter",
    "Target",
    "Usage",
    "data_dir_of",
    "disk_bytes",
    "listener_pid",
    "locate",
    "process_usage",
]

_PROC = Path("/proc")
_LISTEN = "0A"


@dataclass(frozen=True)
class Usage:
    """One sample: the server's (``None``: not taken) and this process's figures."""

    rss: int | None
    """Resident bytes of the server's processes, summed."""
    cpu: float | None
    """CPU seconds (user + system) the server's processes have used."""
    disk: int | None
    """Bytes allocated on disk under the data paths."""
    client_cpu: float
    """CPU seconds (user + system, every thread) this process has used."""
    at: float
    """``time.perf_counter()`` when taken."""


@dataclass
class Target:
    """What to sample: server processes, data paths, and what cannot be taken (and why)."""

    pids: list[int] = field(default_factory=list)
    data: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    """One line per figure that cannot be taken, with the reason."""


def process_usage(pid: int) -> tuple[float, int] | None:
    """(CPU seconds user + system, resident bytes) of process ``pid``, or ``None`` when
    it cannot be read (gone, another user's, no ``/proc``)."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces; fields start at "state"
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    return cpu, int(fields[21]) * os.sysconf("SC_PAGE_SIZE")


def disk_bytes(paths: list[Path]) -> int:
    """Bytes allocated on disk by the files under ``paths`` (files or folders)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for top in paths:
        walk = [top] if top.is_file() else [p for p in top.rglob("*") if p.is_file()] if top.is_dir() else []
        for path in walk:
            with contextlib.suppress(OSError):
                st = path.lstat()
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in (_PROC / "net" / table).read_text().splitlines()[1:]:
                cols = line.split()
                if len(cols) < 10 or cols[3] != _LISTEN:
                    continue
                address, port_hex = cols[1].rsplit(":", 1)
                if int(port_hex, 16) != port:
                    continue
                ip = bytes.fromhex(address)
                if table == "tcp":
                    local = ipaddress.ip_address(ip[::-1])
                else:  # four little-endian 32-bit words
                    six = ipaddress.IPv6Address(b"".join(ip[i : i + 4][::-1] for i in range(0, 16, 4)))
                    local = six.ipv4_mapped or six  # e.g. the JVM's ::ffff:127.0.0.1
                if local.is_loopback or local.is_unspecified:
                    inodes.add(cols[9])
    return inodes


def listener_pid(port: int) -> int | None:
    """The pid of the local process listening on TCP ``port`` (loopback or every
    address), or ``None`` when there is none or it cannot be seen (another user's)."""
    inodes = {f"socket:[{i}]" for i in _listening_inodes(port)}
    if not inodes:
        return None
    for proc in _PROC.iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return int(proc.name)
    return None


def _option(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def data_dir_of(pid: int) -> list[Path]:
    """The data folders of server process ``pid`` as its command line names them:
    etcd's ``--data-dir``, redis-server's ``--dir`` (else its working folder, where it
    keeps its files), ZooKeeper's ``dataDir``/``dataLogDir`` (from its config file);
    empty when unknown."""
    try:
        args = (_PROC / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")
        cwd = Path(os.readlink(_PROC / str(pid) / "cwd"))
    except OSError:
        return []
    args = [a for a in args if a]
    if not args:
        return []
    if (found := _option(args, "--data-dir")) is not None:
        return [Path(found) if Path(found).is_absolute() else cwd / found]
    if "redis" in Path(args[0]).name:
        found = _option(args, "--dir")
        return [cwd / found if found else cwd]
    if any("QuorumPeerMain" in a for a in args) and args[-1].endswith(".cfg"):
        with contextlib.suppress(OSError):
            lines = (cwd / args[-1]).read_text().splitlines()
            dirs = [line.split("=", 1)[1].strip() for line in lines if line.startswith(("dataDir=", "dataLogDir="))]
            return [Path(d) for d in dict.fromkeys(dirs)]
    return []


def locate(url: str | DatabaseURL, server: LocalServer | None = None) -> Target:
    """What to sample for ``url``: ``server``'s processes (every member's, and a
    Sentinel set-up's sentinels) and data folder when given,
    else the local listener of each loopback host of the URL."""
    base = DatabaseURL.parse(url)
    if not _PROC.joinpath("self", "stat").exists():
        return Target(missing=["server memory, CPU and disk, client CPU by thread: no /proc here"])
    if base.scheme == "memory":
        return Target(missing=["server memory, CPU and disk: memory:// has no server (the data lives in this process)"])
    if base.scheme == "sqlite":
        missing = ["server memory and CPU: SQLite has no server (its work is this process's CPU)"]
        if not base.path or base.path == ":memory:":
            return Target(missing=[*missing, "disk: an in-memory SQLite database"])
        db = Path(base.path)
        return Target(data=[db, *(db.with_name(db.name + s) for s in ("-wal", "-shm", "-journal"))], missing=missing)
    if server is not None:  # every process of a set-up: a Sentinel set-up's sentinels too
        processes = [*server.processes, *getattr(server, "sentinel_processes", [])]
        pids = [p.pid for p in processes if p is not None and p.poll() is None]
        return Target(pids=pids, data=[server.workdir])
    target = Target()
    for host, port in base.hosts:
        where = f"{host}:{port}"
        if not _loopback(host):
            target.missing.append(f"server memory, CPU and disk of {where}: a remote server (not on this host)")
            continue
        pid = None if port is None else listener_pid(port)
        if pid is None or process_usage(pid) is None:
            target.missing.append(
                f"server memory, CPU and disk of {where}: no readable local process listens there "
                "(another user's process, or in a container)"
            )
            continue
        target.pids.append(pid)
        dirs = data_dir_of(pid)
        if dirs:
            target.data += dirs
        else:
            target.missing.append(f"disk of {where} (pid {pid}): its data folder is not on its command line")
    return target


@dataclass
class Delta:
    """The samples before and after a measured block (``after`` is set on leaving it)."""

    before: Usage
    after: Usage

    @property
    def seconds(self) -> float:
        """Wall-clock seconds of the block."""
        return self.after.at - self.before.at

    @property
    def server_cpu(self) -> float | None:
        """Server CPU seconds used in the block, or ``None`` when not taken."""
        if self.before.cpu is None or self.after.cpu is None:
            return None
        return self.after.cpu - self.before.cpu

    @property
    def client_cpu(self) -> float:
        """This process's CPU seconds used in the block."""
        return self.after.client_cpu - self.before.client_cpu

    @property
    def rss_growth(self) -> int | None:
        """How much the server's resident memory grew, or ``None`` when not taken."""
        if self.before.rss is None or self.after.rss is None:
            return None
        return self.after.rss - self.before.rss

    @property
    def disk_growth(self) -> int | None:
        """How much the data on disk grew, or ``None`` when not taken."""
        if self.before.disk is None or self.after.disk is None:
            return None
        return self.after.disk - self.before.disk


class Meter:
    """Samples of one :class:`Target`."""

    def __init__(self, target: Target) -> None:
        self.target = target

    def sample(self) -> Usage:
        """The figures now (``None`` for what cannot be taken)."""
        cpu: float | None = None
        rss: int | None = None
        if self.target.pids:
            got = [process_usage(p) for p in self.target.pids]
            if all(g is not None for g in got):
                cpu = sum(g[0] for g in got if g is not None)
                rss = sum(g[1] for g in got if g is not None)
        disk = disk_bytes(self.target.data) if self.target.data else None
        t = os.times()
        return Usage(rss=rss, cpu=cpu, disk=disk, client_cpu=t.user + t.system, at=time.perf_counter())

    @contextlib.contextmanager
    def measure(self) -> Iterator[Delta]:
        """A :class:`Delta` over the block; its ``after`` is taken on leaving the block."""
        first = self.sample()
        delta = Delta(first, first)
        yield delta
        delta.after = self.sample()
