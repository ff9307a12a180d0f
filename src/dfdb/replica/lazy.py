"""Lazy loading: a Replica's full sync holds each stored value as read (its :class:`Entry`)
and builds the model on first access; the values nobody read yet are validated in the
background afterwards. Index keys and reference targets come from a plain JSON parse
(:func:`reader_for`): at once for a model whose objects reference models held (their events
wait for their targets), else when the background pass or the first lookup of an index
gets to them.

Validation is what a sync spends most of its time on, and a value dfdb wrote was validated
when it was written; the background pass still finds a value written around dfdb that is
not valid, and reports it. A value is never served as an object before it is validated:
an access builds (validates) it, and a corrupt one is reported and dropped, not returned.

Reading keys and references without the model is exact only where the JSON value is
already the validated one: a field of a plain type (``str``, ``int``, ``bool``, a ``Ref``,
a ``StrEnum``, an IP address, a string with after-validators) or a collection or nested
model of them. A model with an index or reference of any other kind, with aliases, or with
validators that may rewrite its input, is built at once as before (:func:`reader_for`
returns ``None``); so is any single value whose JSON is not of the expected type.
"""

from __future__ import annotations

import functools
import inspect
import ipaddress
import itertools
import json
import json.scanner
import operator
import socket
import types
import typing
from collections.abc import Callable, Collection, Hashable, Sequence
from enum import Enum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel
from pydantic.fields import FieldInfo

from dfdb.drivers.base import Driver, Entry
from dfdb.events import format_cursor
from dfdb.nb import NbApi
from dfdb.nbmodel import NbModel, Ref, _reference_fields, _resolve_target, references

__all__ = ["RawListings", "Reader", "Reading", "list_raw", "reader_for", "refers_held"]

Reading = tuple[list[Sequence[Hashable]], list[tuple[type[NbModel], str]]]
"""What a plain parse tells of a value: its keys in each index of its model (in the order
of ``__indexes__``) and its reference targets among the models held."""
Reader = Callable[[Entry], Reading | None]
"""Reads an entry without building its model (``None``: it must be built)."""
RawListings = list[tuple[type[NbModel], list[Entry], str]]
"""Listings of a scope as stored: by model, its entries sorted by id and their cursor."""

_Leaf = Callable[[Any], Any]
_Refs = Callable[[Any, list[tuple[type[NbModel], str]]], None]
_REWRITING_CONFIG = ("str_strip_whitespace", "str_to_lower", "str_to_upper", "alias_generator", "coerce_numbers_to_str")
_COLLECTIONS = (list, tuple, set, frozenset, dict)
_IP = frozenset({ipaddress.IPv4Address, ipaddress.IPv6Address})
_NETWORK = frozenset({ipaddress.IPv4Network, ipaddress.IPv6Network})
_scan: Callable[[str, int], tuple[Any, int]] | None = getattr(json.scanner, "c_make_scanner", None) and (
    json.scanner.c_make_scanner(json.JSONDecoder())  # type: ignore[attr-defined]
)
_IPV4 = ipaddress.IPv4Address
_ENTRY_ID = operator.attrgetter("id")  # a sort key called in C, about twice as fast as a function
_pton = socket.inet_pton
_AF_INET = socket.AF_INET


class _Unreadable(Exception):
    """A JSON value that is not of the exact type its field expects."""


async def list_raw(nb: NbApi, models: Sequence[type[NbModel]], topics: Collection[str] | None,
                   topicless: Collection[type[NbModel]] = ()) -> RawListings:  # fmt: skip
    """The stored entries of ``models`` as :func:`dfdb.replica.relist.list_scope` lists them
    (every object, or those of ``topics`` plus whole listings of ``topicless``), not decoded,
    each sorted by id. The driver is asked for every scope at once (:meth:`Driver.list_many`: Redis reads
    them in one round trip): a selective scope is dozens of small listings."""
    scopes: list[tuple[type[NbModel], str | None]] = []
    for model in models:
        scopes += [(model, None)] if topics is None else [(model, t) for t in sorted(topics)]
        if topics is not None and model in topicless:
            scopes.append((model, None))
    nb._check()
    wanted = [(model.__table__, topic) for model, topic in scopes]
    if type(nb.driver).list_many is Driver.list_many:  # one listing after the other: each its own deadline
        listing = nb.driver.list
        found = [await nb._retry(functools.partial(listing, table, topic), "list", table) for table, topic in wanted]
    else:
        found = await nb._retry(lambda: nb.driver.list_many(wanted), "list", scopes[0][0].__table__) if scopes else []
    return [
        (
            model,
            sorted(listing.entries, key=_ENTRY_ID),
            format_cursor(listing.identity or nb._identity or "", listing.revision),
        )
        for (model, _), listing in zip(scopes, found, strict=True)
    ]


@functools.cache
def reader_for(model: type[NbModel], held: frozenset[type[NbModel]]) -> Reader | None:
    """The reader of ``model``'s stored values (its indexes and its references to the models
    ``held``), or ``None`` when some of them cannot be read exactly without the model."""
    try:
        _check_model(model)
        indexes = [_index_reader(model, index) for index in model.__indexes__]
        refers = [(name, _refs_reader(_annotation(model, name))) for name in _reference_fields(model)]
        defaulted = [name for name, _ in refers if _defaulted(model, name)]
    except _Unreadable:
        return None
    except Exception:  # an annotation this analysis does not foresee: the model is built as before
        return None
    if not refers_held(model, held):
        refers, defaulted = [], []

    def read(entry: Entry) -> Reading | None:
        data = _parse(entry.value)
        if type(data) is not dict or data.get("id") != entry.id or data.get("topic") != entry.topic:
            return None
        if defaulted and any(name not in data for name in defaulted):
            return None  # a reference its model's default gives
        try:
            keys = [keys_of(data) for keys_of in indexes]
            targets: list[tuple[type[NbModel], str]] = []
            for name, refs in refers:
                refs(data.get(name), targets)
        except _Unreadable:
            return None
        return keys, [t for t in targets if t[0] in held]

    return read


@functools.cache
def refers_held(model: type[NbModel], held: frozenset[type[NbModel]]) -> bool:
    """Whether ``model`` references one of the models ``held`` (its values must be read at
    once for their reference targets)."""
    return any(t in held for t in references(model))


def _parse(value: bytes) -> Any:
    """The JSON document ``value`` (``None`` when it is not one): the C scanner called directly
    skips ``json.loads``'s encoding detection, more than half its time on a port."""
    try:
        text = value.decode()
        if _scan is None:
            return json.loads(text)
        data, end = _scan(text, 0)
    except (ValueError, StopIteration):  # not UTF-8, not JSON, or leading white space
        try:
            return json.loads(value)
        except ValueError:
            return None
    if end != len(text) and text[end:].strip():
        return None  # data after the document
    return data


def _check_model(model: type[BaseModel]) -> None:
    """Refuse a model whose validation may rewrite its input beyond the field types."""
    config = model.model_config
    if any(config.get(key) for key in _REWRITING_CONFIG):
        raise _Unreadable
    decorators = model.__pydantic_decorators__
    if decorators.field_validators:
        raise _Unreadable
    if any(d.info.mode != "after" for d in decorators.model_validators.values()):
        raise _Unreadable
    for info in model.model_fields.values():
        if info.alias is not None or info.validation_alias is not None:
            raise _Unreadable


def _field(model: type[BaseModel], name: str) -> Any:
    info = model.model_fields.get(name)
    if info is None:
        raise _Unreadable
    _check_model(model)
    return _with_metadata(model, name)


def _annotation(model: type[BaseModel], name: str) -> Any:
    """The type of field ``name``, a forward reference resolved in ``model``'s module."""
    ann = model.model_fields[name].annotation
    if isinstance(ann, typing.ForwardRef | str):
        try:
            ann = typing.get_type_hints(model)[name]
        except Exception:  # a name that cannot be resolved: the model is built as before
            raise _Unreadable from None
    return ann


def _with_metadata(model: type[BaseModel], name: str) -> Any:
    info = model.model_fields[name]
    ann = _annotation(model, name)
    return Annotated[(ann, *info.metadata)] if info.metadata else ann


def _index_reader(model: type[NbModel], index: tuple[str, ...]) -> Callable[[dict[str, Any]], Sequence[Hashable]]:
    """The keys of a parsed value in ``index``, as :func:`dfdb.replica.store.keys_of` gives
    them from the model."""
    paths = [_path_reader(model, path.split(".")) for path in index]
    if len(paths) == 1:
        return paths[0]

    def combined(data: dict[str, Any]) -> Sequence[Hashable]:
        return list(set(itertools.product(*(path(data) for path in paths))))

    return combined


def _path_reader(model: type[BaseModel], parts: list[str]) -> Callable[[dict[str, Any]], list[Hashable]]:
    steps: list[tuple[str, bool]] = []
    ann = _field(model, parts[0])
    for part in parts[1:]:
        nested = _nested_model(ann)
        steps.append((part, _defaulted(nested, part)))
        ann = _field(nested, part)
    leaf = _leaf(ann)
    first = parts[0]
    first_defaulted = _defaulted(model, first)
    if not steps:

        def field(data: dict[str, Any]) -> list[Hashable]:
            value = data.get(first)
            if value is None:
                if first_defaulted and first not in data:
                    raise _Unreadable  # its key is the default's, which validation fills in
                return []
            if type(value) is not list:
                return [leaf(value)]
            if not value:
                return []
            if all(item is not None and type(item) is not list for item in value):
                return [leaf(item) for item in value]
            return [leaf(item) for item in _fan_out(value)]

        return field

    def read(data: dict[str, Any]) -> list[Hashable]:
        if first_defaulted and first not in data:
            raise _Unreadable
        current = _fan_out(data.get(first))
        for part, part_defaulted in steps:
            found: list[Any] = []
            for value in current:
                if type(value) is not dict or (part_defaulted and part not in value):
                    raise _Unreadable
                found += _fan_out(value.get(part))
            current = found
        return [leaf(value) for value in current]

    return read


def _defaulted(model: type[BaseModel], name: str) -> bool:
    """Whether field ``name`` has a default with keys or references (not ``None``, not an
    empty collection): validation fills it in where a value lacks the field."""
    info = model.model_fields[name]
    if info.is_required():
        return False
    default = info.default
    if info.default_factory is not None:
        try:
            default = info.default_factory()  # type: ignore[call-arg]
        except Exception:  # a factory of the validated data: assume a default that matters
            return True
    return default is not None and not (isinstance(default, _COLLECTIONS) and not default)


def _fan_out(value: Any) -> list[Any]:
    if value is None:
        return []
    if type(value) is list:
        return [x for item in value for x in _fan_out(item)]
    return [value]


def _strip(ann: Any) -> tuple[Any, list[Any]]:
    """The type under ``Annotated`` (nested ones too) and its metadata."""
    metadata: list[Any] = []
    while typing.get_origin(ann) is Annotated:
        args = typing.get_args(ann)
        ann, metadata = args[0], [*metadata, *args[1:]]
    return ann, metadata


def _members(ann: Any) -> list[Any]:
    """The alternatives of a union (``None`` left out, nested unions flattened), or the type
    itself (with its metadata)."""
    base, metadata = _strip(ann)
    if typing.get_origin(base) is typing.Union or isinstance(base, types.UnionType):
        if any(not isinstance(m, FieldInfo) and not _constraint(m) for m in metadata):
            raise _Unreadable
        return [m for a in typing.get_args(base) if a is not type(None) for m in _members(a)]
    return [Annotated[(base, *metadata)]] if metadata else [base]


def _items(ann: Any) -> Any | None:
    """The element type of a homogeneous collection annotation, else ``None``."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin in (list, set, frozenset) and len(args) == 1:
        return args[0]
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return args[0]
    return None


def _nested_model(ann: Any) -> type[BaseModel]:
    """The nested (non-stored) model a path goes through: ``binding`` of ``binding.chassis``."""
    members = _members(ann)
    if len(members) == 1:
        inner = _items(members[0])
        candidate = inner if inner is not None else members[0]
        candidate = _strip(candidate)[0]
        if isinstance(candidate, type) and issubclass(candidate, BaseModel) and not issubclass(candidate, NbModel):
            return candidate
    raise _Unreadable


def _leaf(ann: Any) -> _Leaf:
    """The key of one (already fanned-out) JSON value of a field typed ``ann``."""
    members = _members(ann)
    if {_strip(m)[0] for m in members} <= _IP and members:
        return _ip if ipaddress.IPv4Address in {_strip(m)[0] for m in members} else _parsed(ipaddress.ip_address)
    if {_strip(m)[0] for m in members} <= _NETWORK and members:
        return _parsed(ipaddress.ip_network)
    if len(members) != 1:
        raise _Unreadable
    inner = _items(members[0])
    if inner is not None:
        return _leaf(inner)
    base, metadata = _strip(members[0])
    after = [m.func for m in metadata if isinstance(m, AfterValidator)]
    if any(len(inspect.signature(func).parameters) != 1 for func in after):
        raise _Unreadable  # a validator taking pydantic's info: not called here
    if any(not isinstance(m, AfterValidator | FieldInfo) and not _constraint(m) for m in metadata):
        raise _Unreadable
    if base is str or base is Ref or typing.get_origin(base) is Ref:
        if after and base is not str:
            raise _Unreadable
        return _text(after)
    if after:
        raise _Unreadable
    if base is bool:
        return _exact(bool)
    if base is int:
        return _exact(int)
    if isinstance(base, type) and issubclass(base, Enum) and issubclass(base, str):
        values = frozenset(member.value for member in base)
        return lambda value: value if type(value) is str and value in values else _unreadable()
    if base in _IP:
        return _parsed(base)
    raise _Unreadable


def _constraint(metadata: Any) -> bool:
    """Whether ``metadata`` only checks a value (``ge``, ``max_length`` …) or picks a union's
    mode, never rewrites it."""
    kind = type(metadata)
    return kind.__module__ == "annotated_types" or kind.__name__ == "_PydanticGeneralMetadata"


def _unreadable() -> Any:
    raise _Unreadable


def _exact(kind: type) -> _Leaf:
    return lambda value: value if type(value) is kind else _unreadable()


def _plain_text(value: Any) -> Any:
    if type(value) is str:
        return value
    raise _Unreadable


def _ip(value: Any) -> Any:
    """An IPv4 or IPv6 address as validation reads it (``IPv4Address`` tried first); a strict
    dotted quad is parsed by the C library, several times faster than :mod:`ipaddress`."""
    if type(value) is not str:
        raise _Unreadable
    try:
        return _IPV4(_pton(_AF_INET, value))
    except OSError:
        pass
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise _Unreadable from None


def _text(after: list[Any]) -> _Leaf:
    if not after:
        return _plain_text

    if len(after) == 1:
        (func,) = after

        def one(value: Any) -> Any:
            if type(value) is not str:
                raise _Unreadable
            try:
                return func(value)
            except Exception:  # not valid: building it reports why
                raise _Unreadable from None

        return one

    def read(value: Any) -> Any:
        if type(value) is not str:
            raise _Unreadable
        try:
            for func in after:
                value = func(value)
        except Exception:  # not valid: building it reports why
            raise _Unreadable from None
        return value

    return read


def _parsed(parse: Callable[[str], Any]) -> _Leaf:
    def read(value: Any) -> Any:
        if type(value) is not str:
            raise _Unreadable
        try:
            return parse(value)
        except ValueError:
            raise _Unreadable from None

    return read


def _refs_reader(ann: Any) -> _Refs:
    """Collects the reference targets in a JSON value of a field typed ``ann``."""
    members = _members(ann)
    if len(members) != 1:
        raise _Unreadable
    base = _strip(members[0])[0]
    if base is Ref or typing.get_origin(base) is Ref:
        args = typing.get_args(base)
        spec = args[0] if args else None

        def ref(value: Any, found: list[tuple[type[NbModel], str]]) -> None:
            if value is None:
                return
            if type(value) is not str:
                raise _Unreadable
            target = _resolve_target(spec)
            if target is not None:
                found.append((target, value))

        return ref
    inner = _items(base)
    if inner is not None:
        each = _refs_reader(inner)

        def many(value: Any, found: list[tuple[type[NbModel], str]]) -> None:
            if value is None:
                return
            if type(value) is not list:
                raise _Unreadable
            for item in value:
                each(item, found)

        return many
    if isinstance(base, type) and issubclass(base, BaseModel) and not issubclass(base, NbModel):
        _check_model(base)
        fields = [
            (name, _refs_reader(_annotation(base, name)), _defaulted(base, name)) for name in _reference_fields(base)
        ]

        def nested(value: Any, found: list[tuple[type[NbModel], str]]) -> None:
            if value is None:
                return
            if type(value) is not dict:
                raise _Unreadable
            for name, refs, defaulted in fields:
                if defaulted and name not in value:
                    raise _Unreadable
                refs(value.get(name), found)

        return nested
    raise _Unreadable
