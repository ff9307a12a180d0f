"""Many nodes read in one request: ZooKeeper's ``multiRead`` (3.6 and later), which aiozk
lacks. A listing reads its data nodes with it, a batch per round trip instead of a
``getData`` each: the client's cost per request (a future, a time-out, a parse by
aiozk's generic parts) was most of a listing's time.

The reply is parsed here directly (only the data and the ``mzxid`` of each node are
kept): each node's read succeeds or fails on its own, a missing node is ``None``.
"""

from __future__ import annotations

import struct
from typing import Any

from aiozk import exc
from aiozk.protocol.request import Request
from aiozk.protocol.response import Response

__all__ = ["MultiReadRequest", "MultiReadResponse", "NodeRead"]

NodeRead = tuple[bytes, int] | None
"""A node's data and the zxid that last changed it (``mzxid``), or ``None``: absent."""

_GET_DATA = 4
_GET_CHILDREN = 8
_ERROR = -1
_HEADER = struct.Struct("!i?i")  # MultiHeader: type, done, error
_INT = struct.Struct("!i")
_STAT = struct.Struct("!qqqqiiiqiiq")  # czxid, mzxid, ctime, mtime, versions, owner, lengths, pzxid
_NO_NODE = exc.NoNode.error_code


class MultiReadRequest(Request):  # type: ignore[misc]
    """``getData`` of each of ``paths`` (``children``: ``getChildren``), no watch, in one request."""

    opcode = 22
    writes_data = False
    parts = ()

    def __init__(self, paths: list[str], children: bool = False) -> None:
        super().__init__()
        self.paths = paths
        self.children = children

    def serialize(self, xid: int | None = None) -> bytes:
        out = bytearray() if xid is None else bytearray(_INT.pack(xid))
        out += _INT.pack(self.opcode)
        get = _HEADER.pack(_GET_CHILDREN if self.children else _GET_DATA, False, -1)
        for path in self.paths:
            name = path.encode()
            out += get
            out += _INT.pack(len(name))
            out += name
            out += b"\x00"  # no watch
        out += _HEADER.pack(-1, True, -1)
        return bytes(out)

    def __str__(self) -> str:
        return f"MultiRead[{len(self.paths)} nodes]"


class MultiReadResponse(Response):  # type: ignore[misc]
    """The reply to a :class:`MultiReadRequest`: ``nodes``, one per path in order (a
    :data:`NodeRead`, or a node's children, ``None`` when absent), and ``errors``: the
    error codes other than "no node" met (their nodes ``None``)."""

    opcode = 22
    parts = ()
    nodes: list[Any]
    errors: list[int]

    @classmethod
    def deserialize(cls, raw: bytes) -> MultiReadResponse:
        instance = cls()
        instance.nodes, instance.errors = [], []
        try:
            instance._parse(raw)
        except (
            struct.error,
            ValueError,
        ):  # not a multiRead reply (UnicodeDecodeError is a ValueError): check_reply refuses it
            instance.nodes = []
        return instance

    def _parse(self, raw: bytes) -> None:
        nodes, errors = self.nodes, self.errors
        header, unpack_int, stat = _HEADER.unpack_from, _INT.unpack_from, _STAT.unpack_from
        offset, end = 0, len(raw)
        while offset < end:
            kind, done, _ = header(raw, offset)
            offset += 9
            if done:
                break
            if kind == _ERROR:
                (code,) = unpack_int(raw, offset)
                offset += 4
                if code != _NO_NODE:
                    errors.append(code)
                nodes.append(None)
                continue
            if kind == _GET_CHILDREN:
                (count,) = unpack_int(raw, offset)
                offset += 4
                names = []
                for _ in range(max(count, 0)):
                    (length,) = unpack_int(raw, offset)
                    offset += 4
                    names.append(raw[offset : offset + length].decode())
                    offset += length
                nodes.append(names)
                continue
            if kind != _GET_DATA:
                raise ValueError(kind)
            (length,) = unpack_int(raw, offset)
            offset += 4
            if length < 0:
                data = b""
            else:
                data = raw[offset : offset + length]
                offset += length
            nodes.append((data, stat(raw, offset)[1]))
            offset += 68

    def __str__(self) -> str:
        return f"MultiRead[{len(getattr(self, 'nodes', ()))} nodes]"


def check_reply(reply: Any, paths: list[str]) -> list[Any] | None:
    """The nodes of a :class:`MultiReadResponse` to ``paths``; ``None`` when a node's read
    failed otherwise than by its absence (read them one by one: their errors are mapped there).

    Raises:
        exc.Unimplemented: the reply is not one to ``multiRead`` (a server before 3.6).
    """
    nodes = getattr(reply, "nodes", None)
    if not isinstance(reply, MultiReadResponse) or nodes is None or len(nodes) != len(paths):
        raise exc.Unimplemented()
    return None if reply.errors else nodes
