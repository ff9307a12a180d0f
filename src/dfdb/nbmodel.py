"""Models: :class:`NbModel`, typed references :class:`Ref`, and the table registry."""

from __future__ import annotations

import functools
import re
import types
import typing
from collections.abc import Iterable, Iterator
from typing import Annotated, Any, ClassVar, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, GetCoreSchemaHandler
from pydantic_core import core_schema

from dfdb.errors import ModelDefinitionError

__all__ = [
    "Key",
    "NbModel",
    "Ref",
    "dependency_order",
    "model_for_table",
    "reference_targets",
    "references",
    "registered_models",
    "validate_key",
]

_MAX_KEY = 255
_REF_NAME = re.compile(r"Ref\[\s*['\"]?(\w+)")
_BAD_CHAR = re.compile(r"[\x00-\x1f\x7f-\x9f/\ud800-\udfff]")


def validate_key(value: str, what: str = "id") -> str:
    """Check that ``value`` is a valid id or topic and return it.

    Ids and topics are non-empty strings of at most 255 characters with no ``/``, no
    control characters, no lone surrogates (text that is not valid Unicode, such as
    undecodable bytes from a command line), and not ``.`` or ``..``.

    Raises:
        ValueError: the value breaks one of those rules.
    """
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {type(value).__name__}")
    if 0 < len(value) <= _MAX_KEY and value not in (".", "..") and not _BAD_CHAR.search(value):
        return value
    if not value:
        raise ValueError(f"{what} must not be empty")
    if len(value) > _MAX_KEY:
        raise ValueError(f"{what} is longer than {_MAX_KEY} characters")
    if "/" in value:
        raise ValueError(f"{what} must not contain '/': {value!r}")
    if value in (".", ".."):
        raise ValueError(f"{what} must not be {value!r}")
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value):
        raise ValueError(f"{what} must not contain control characters: {value!r}")
    raise ValueError(f"{what} is not valid Unicode (it holds a lone surrogate): {value!r}")


def _validate_topic(value: str) -> str:
    return validate_key(value, "topic")


Key = Annotated[str, AfterValidator(validate_key)]
"""A string validated as an id (see :func:`validate_key`)."""

TopicKey = Annotated[str, AfterValidator(_validate_topic)]

M = TypeVar("M", bound="NbModel")

_REGISTRY: dict[str, type[NbModel]] = {}
_BY_NAME: dict[str, type[NbModel]] = {}


class Ref(str, Generic[M]):
    """A reference to another object: holds the target's id, serialized as that id.

    Declare it as ``switch: Ref[LogicalSwitch]``; assign an id string or the target
    object itself. ``ref.target`` is the referenced model class, and the reference
    is resolved with ``await nb.get(ref.target, ref)`` (or through a Replica).
    """

    target: type[NbModel] | None = None

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        args = typing.get_args(source)
        spec: Any = args[0] if args else None

        def validate(value: Any) -> Ref[Any]:
            if isinstance(value, NbModel):
                value = value.id
            if not isinstance(value, str):
                raise ValueError(f"a reference must be an id string, not {type(value).__name__}")
            ref: Ref[Any] = Ref(validate_key(value))
            ref.target = _resolve_target(spec)
            return ref

        return core_schema.no_info_plain_validator_function(
            validate,
            serialization=core_schema.plain_serializer_function_ser_schema(str, return_schema=core_schema.str_schema()),
            json_schema_input_schema=core_schema.str_schema(),
        )

    def __repr__(self) -> str:
        name = self.target.__name__ if self.target else "?"
        return f"Ref[{name}]({str.__repr__(self)})"


def _resolve_target(spec: Any) -> type[NbModel] | None:
    if isinstance(spec, type) and issubclass(spec, NbModel):
        return spec
    name = spec.__forward_arg__ if isinstance(spec, typing.ForwardRef) else spec
    if isinstance(name, str):
        return _BY_NAME.get(name)
    return None


class NbModel(BaseModel):
    """Base class of every stored object.

    A subclass names its table with a class keyword, and may declare the indexes a
    :class:`~dfdb.Replica` keeps for it — a field, a nested path, a list field (each
    element is indexed) or a tuple of them (a multi-field index)::

        class LogicalPort(NbModel, table="lport", indexes=("lswitch", "binding.chassis", "ips")):
            ...

    Attributes:
        id: the object's key within its table.
        topic: the tenant/project the object belongs to, the unit of selective
            distribution; ``None`` for global objects. Fixed for the object's life.
        version: the object's own write count: 1 on create, +1 on every update
            (0 for an object that was never stored).
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    __table__: ClassVar[str]
    __indexes__: ClassVar[tuple[tuple[str, ...], ...]] = ()

    id: Key
    topic: TopicKey | None = None
    version: int = 0

    # Where a copy was read or written, (revision, topic), lets update() skip a read: kept in
    # ``__pydantic_private__["_dfdb_origin"]`` by the NbApi (see ``codec.origin_of``), not
    # declared as a private attribute, which would cost every validation a Python call to set
    # its default.

    def __init_subclass__(
        cls, *, table: str | None = None, indexes: Iterable[str | tuple[str, ...]] = (), **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        declared = tuple((i,) if isinstance(i, str) else tuple(i) for i in indexes)
        for index in declared:
            if not index or not all(isinstance(p, str) and p for p in index):
                raise ModelDefinitionError(f"{cls.__name__}: an index is a field path or a tuple of them: {index!r}")
        if declared or "__indexes__" not in cls.__dict__:
            cls.__indexes__ = tuple(getattr(cls, "__indexes__", ())) + declared
        if table is not None:
            validate_key(table, "table name")
            existing = _REGISTRY.get(table)
            if existing is not None and existing.__qualname__ != cls.__qualname__:
                raise ModelDefinitionError(
                    f"table {table!r} is already used by {existing.__module__}.{existing.__qualname__}"
                )
            cls.__table__ = table
            _REGISTRY[table] = cls
            _BY_NAME[cls.__name__] = cls

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "__table__" in cls.__dict__:
            try:
                dependency_order(_REGISTRY.values())
            except ModelDefinitionError:
                _REGISTRY.pop(cls.__table__, None)
                _BY_NAME.pop(cls.__name__, None)
                raise

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NbModel):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash((type(self), self.id, self.topic, self.version))


def model_for_table(table: str) -> type[NbModel] | None:
    """The model registered for ``table``, or ``None``."""
    return _REGISTRY.get(table)


def registered_models() -> list[type[NbModel]]:
    """Every registered model, in dependency order (targets before referrers)."""
    return dependency_order(_REGISTRY.values())


def references(model: type[NbModel]) -> set[type[NbModel]]:
    """The models that ``model``'s fields reference (also through nested models)."""
    return {
        target
        for info in model.model_fields.values()
        for target in _annotation_targets(info.annotation, {model})
        if target is not None
    }


def reference_targets(obj: BaseModel) -> list[tuple[type[NbModel], str]]:
    """The (model, id) targets of the references ``obj`` holds, nested models and
    collections included (``binding.chassis``, ``ports[].lswitch``), in field order."""
    found: list[tuple[type[NbModel], str]] = []
    _collect_targets(obj, found)
    return found


def _collect_targets(value: object, found: list[tuple[type[NbModel], str]]) -> None:
    if isinstance(value, Ref):
        if value.target is not None:
            found.append((value.target, str(value)))
    elif isinstance(value, BaseModel):
        for name in _reference_fields(type(value)):
            _collect_targets(getattr(value, name, None), found)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            _collect_targets(item, found)
    elif isinstance(value, dict):
        for item in value.values():
            _collect_targets(item, found)


@functools.cache
def _reference_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """The fields of ``model`` that can hold a reference, directly or in a nested model."""
    return tuple(
        name
        for name, info in model.model_fields.items()
        if any(True for _ in _annotation_targets(info.annotation, {model}))
    )


def _annotation_targets(ann: Any, seen: set[type]) -> Iterator[type[NbModel] | None]:
    """Every reference an annotation can hold, as its target model (``None``: a target not
    known yet), walking unions, collections, ``Annotated`` and nested (non-stored) models."""
    if isinstance(ann, typing.ForwardRef):
        ann = ann.__forward_arg__
    if isinstance(ann, str):  # not resolved yet: find the references by name
        for name in _REF_NAME.findall(ann):
            yield _BY_NAME.get(name)
        return
    if ann is Ref or (isinstance(ann, type) and issubclass(ann, Ref)):
        yield None
        return
    origin = typing.get_origin(ann)
    if origin is Ref:
        args = typing.get_args(ann)
        yield _resolve_target(args[0]) if args else None
        return
    if origin is Annotated:
        yield from _annotation_targets(typing.get_args(ann)[0], seen)
        return
    if origin is not None or isinstance(ann, types.UnionType):
        for arg in typing.get_args(ann):
            yield from _annotation_targets(arg, seen)
        return
    if isinstance(ann, type) and issubclass(ann, BaseModel) and not issubclass(ann, NbModel) and ann not in seen:
        seen.add(ann)
        for info in ann.model_fields.values():
            yield from _annotation_targets(info.annotation, seen)


def dependency_order(models: Iterable[type[NbModel]]) -> list[type[NbModel]]:
    """Sort ``models`` so that every referenced model comes before its referrers.

    A model may reference its own table. Ties keep table-name order.

    Raises:
        ModelDefinitionError: two or more different tables reference each other.
    """
    pending = {m: references(m) - {m} for m in sorted(set(models), key=lambda m: m.__table__)}
    order: list[type[NbModel]] = []
    done: set[type[NbModel]] = set()
    while pending:
        ready = [m for m, deps in pending.items() if all(d in done or d not in pending for d in deps)]
        if not ready:
            names = ", ".join(sorted(m.__table__ for m in pending))
            raise ModelDefinitionError(f"reference cycle between tables: {names}")
        for m in ready:
            order.append(m)
            done.add(m)
            del pending[m]
    return order
