"""How objects become stored values and back: validation at the boundary, the write id,
versions read from raw values, and the checks every write path shares."""

from __future__ import annotations

import builtins
import json
import math
import os
from collections.abc import Iterable
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError

from dfdb.drivers.base import ABSENT, ANY, Entry, Expect
from dfdb.errors import CorruptObjectError, ValueTooLargeError
from dfdb.nbmodel import NbModel, validate_key

__all__ = [
    "WRITE_ID",
    "check_topic",
    "decode",
    "encode",
    "first_error",
    "model_of",
    "origin_of",
    "raw_version",
    "revision_of",
    "still_expected",
    "table_of",
    "unknown_fields",
    "write_id",
]

M = TypeVar("M", bound=NbModel)

WRITE_ID = b'{"_w":"'
"""How every stored value starts: the id of the write that stored it, then the object."""

_set = object.__setattr__


def encode(obj: M, version: int, limit: int | None = None, backend: str = "") -> tuple[M, bytes, bytes]:
    """Validate ``obj`` at ``version`` and encode it: (the stored object, value, write id).

    Every write passes here, so nothing unvalidated is stored whatever way ``obj`` was
    built (``model_copy(update=…)`` and ``model_construct`` skip pydantic's checks).

    Raises:
        TypeError: ``obj`` is not an object of a stored model.
        ValueError: the object or its key is invalid.
        ValueTooLargeError: the encoded value exceeds ``limit`` (the driver's ``max_value_size``).
    """
    model = cast(type[M], model_of(obj))
    given = obj.__dict__  # read directly: ``model_construct`` may leave out any field, the key too
    if "id" not in given:
        raise ValueError(f"invalid {model.__table__} object: id: Field required")
    validate_key(given["id"])
    if given.get("topic") is not None:
        validate_key(given["topic"], "topic")
    if obj.__pydantic_extra__ and "_w" in obj.__pydantic_extra__:  # extra="allow": it would be read as the write id
        raise ValueError(f"invalid {model.__table__}/{given['id']}: _w: the name is reserved for the write id")
    # the object at ``version``: a shallow copy as ``model_copy(update=…)`` makes, without its
    # per-call overhead (the copy is only serialized, never handed out)
    draft = model.__new__(model)
    fields = {**given, "version": version}
    _set(draft, "__dict__", fields)
    _set(draft, "__pydantic_extra__", obj.__pydantic_extra__)
    _set(draft, "__pydantic_fields_set__", obj.__pydantic_fields_set__)
    _set(draft, "__pydantic_private__", obj.__pydantic_private__)
    try:
        body = model.__pydantic_serializer__.to_json(draft, warnings=False)
        new = model.__pydantic_validator__.validate_json(body)
    except ValidationError as exc:
        raise ValueError(f"invalid {model.__table__}/{obj.id}: {first_error(exc)}") from exc
    except PydanticSerializationError as exc:
        raise ValueError(f"invalid {model.__table__}/{obj.id}: {exc}") from exc
    if new.__dict__ != fields:
        if model.model_config.get("extra") == "forbid":  # model_construct keeps unknown fields
            unknown = sorted(set(fields) - set(model.model_fields))
            if unknown:
                raise ValueError(
                    f"invalid {model.__table__}/{given['id']}: {unknown[0]}: Extra inputs are not permitted"
                )
        if model.model_config.get("ser_json_inf_nan", "null") == "null":
            where = _non_finite(fields)
            if where is not None:  # JSON would store it as null: another value, or a refused one
                raise ValueError(f"invalid {model.__table__}/{given['id']}: {where}: NaN and infinity cannot be stored")
        body = model.__pydantic_serializer__.to_json(new)  # the validated form (coerced values)
    wid = os.urandom(16).hex().encode()  # 128 random bits, as uuid4 gave, without its object
    value = WRITE_ID + wid + b'",' + body[1:]
    if limit is not None and len(value) > limit:
        raise ValueTooLargeError(model.__table__, obj.id, len(value), limit, backend)
    return new, value, wid


def _non_finite(value: Any, path: str = "") -> str | None:
    """The path of a NaN or infinite float in ``value`` (an object's fields, read through
    its containers and nested models), or ``None``."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path or "value"
    if isinstance(value, BaseModel):
        value = value.__dict__
    if isinstance(value, dict):
        items: Iterable[tuple[object, Any]] = value.items()
    elif isinstance(value, list | tuple | set | frozenset):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _non_finite(item, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


def decode(model: type[M], id: str, topic: str | None, value: bytes, revision: int) -> M:
    """The object stored as ``value`` at (``model``'s table, ``id``) under ``topic``, read at
    ``revision``.

    Raises:
        CorruptObjectError: the value is not a valid ``model`` object of that key.
    """
    extra = model.model_config.get("extra")
    if extra == "forbid":  # it would refuse the write id's field
        value = _without_write_id(value)
    try:
        obj = model.model_validate_json(value)
    except ValidationError as exc:
        raise CorruptObjectError(model.__table__, id, first_error(exc)) from None
    if extra == "allow" and obj.__pydantic_extra__:  # it would keep the write id as a field (and store it again)
        obj.__pydantic_extra__.pop("_w", None)
    if obj.id != id or obj.topic != topic:
        raise CorruptObjectError(model.__table__, id, f"stored object names {obj.topic}/{obj.id}")
    object.__setattr__(obj, "__pydantic_private__", {"_dfdb_origin": (revision, topic)})
    return obj


def _without_write_id(value: bytes) -> bytes:
    """The stored ``value`` without its write id (as :func:`write_id` finds it), for a model
    that forbids fields it does not declare (``extra="forbid"``); as stored when it holds none."""
    if value.startswith(WRITE_ID):
        end = value.find(b'",', len(WRITE_ID))
        if end > 0:
            return b"{" + value[end + 2 :]
    try:
        data = json.loads(value)
    except ValueError:
        return value
    if not isinstance(data, dict) or "_w" not in data:
        return value
    del data["_w"]
    return json.dumps(data).encode()


def revision_of(obj: NbModel) -> int | None:
    """The backend revision at which ``obj`` was read or written by an :class:`NbApi`
    (``None`` for an object built by hand). Pass it to ``Replica.wait_for``."""
    origin = origin_of(obj)
    return origin[0] if origin is not None else None


def origin_of(obj: NbModel) -> tuple[int, str | None] | None:
    """Where ``obj`` was read or written by an :class:`NbApi`: (revision, topic); ``None``
    for an object built by hand."""
    private = obj.__pydantic_private__
    origin: tuple[int, str | None] | None = private.get("_dfdb_origin") if private else None
    return origin


def model_of(obj: NbModel) -> type[NbModel]:
    model = type(obj)
    if not isinstance(obj, NbModel) or "__table__" not in model.__dict__:
        raise TypeError(f"{model.__name__} is not a stored model (declare it with table=…)")
    return model


def table_of(model: type[NbModel]) -> str:
    if not (isinstance(model, type) and issubclass(model, NbModel) and "__table__" in model.__dict__):
        raise TypeError(f"{model!r} is not a stored model (declare it with table=…)")
    return model.__table__


def check_topic(table: str, id: str, stored: str | None, new: str | None) -> None:
    if stored != new:
        raise ValueError(
            f"{table}/{id}: the topic is fixed for an object's life ({stored!r} -> {new!r}); delete and create instead"
        )


def first_error(exc: ValidationError) -> str:
    """The first problem of a validation error, on one line: ``field.path: message``."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "value"
    return f"{where}: {first.get('msg')}"


def raw_version(value: bytes) -> int:
    """The ``version`` in a stored value, read leniently (0 when it cannot be read)."""
    try:
        version = json.loads(value).get("version")
    except (ValueError, AttributeError):
        return 0
    return version if type(version) is int and version >= 0 else 0


def unknown_fields(given: Any, stored: Any, path: str = "") -> builtins.list[str]:
    """The paths of keys in ``given`` (input data) that validation dropped: keys of its
    dicts that the matching dicts of ``stored`` (the validated object's ``model_dump()``) lack."""
    found: builtins.list[str] = []
    if isinstance(given, dict) and isinstance(stored, dict):
        for key, value in given.items():
            where = f"{path}.{key}" if path else str(key)
            if key not in stored:
                found.append(where)
            elif not isinstance(value, BaseModel):
                found.extend(unknown_fields(value, stored[key], where))
    elif isinstance(given, list | tuple) and isinstance(stored, list | tuple) and len(given) == len(stored):
        for i, (g, v) in enumerate(zip(given, stored, strict=True)):
            found.extend(unknown_fields(g, v, f"{path}[{i}]"))
    return found


def write_id(value: bytes) -> bytes | None:
    if value.startswith(WRITE_ID):
        end = value.find(b'"', len(WRITE_ID))
        return value[len(WRITE_ID) : end] if end > 0 else None
    try:
        wid = json.loads(value).get("_w")
    except (ValueError, AttributeError):
        return None
    return wid.encode() if isinstance(wid, str) else None


def still_expected(current: Entry | None, expect: Expect) -> bool:
    if expect is ANY:
        return True
    if expect is ABSENT:
        return current is None
    return current is not None and current.revision == expect
