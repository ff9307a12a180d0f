"""A griffe extension: docstrings written with reStructuredText roles, rendered as Markdown.

``:class:`~dfdb.NbApi``` becomes a link to the object where the API reference shows it
(plain code where it does not), and a paragraph ending in ``::`` before a literal block
ends in ``:``. Nothing else in the docstrings changes.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|mod|exc|obj|const):`(?P<text>[^`]+)`")
_LITERAL = re.compile(r"(?<=\S)::[ \t]*$", re.MULTILINE)
_BARE_LITERAL = re.compile(r"^([ \t]*)::[ \t]*$", re.MULTILINE)


def _resolve(obj: griffe.Object | griffe.Alias, name: str) -> str | None:
    """The canonical path of ``name`` as written in ``obj``'s docstring, or None."""
    target = None
    for scope in [obj, *_parents(obj), obj.modules_collection]:
        try:
            target = scope[name]
        except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
        try:
            return str(target.canonical_path)
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            return None
    return None


def _parents(obj: griffe.Object | griffe.Alias) -> list[griffe.Object]:
    parents = []
    parent = obj.parent
    while parent is not None:
        parents.append(parent)
        parent = parent.parent
    return parents


def _convert(obj: griffe.Object | griffe.Alias, text: str) -> str:
    def role(match: re.Match[str]) -> str:
        target = match.group("text").strip()
        shown = target
        explicit = re.fullmatch(r"(?P<title>.+?)\s*<(?P<target>[^>]+)>", target)
        if explicit:
            shown, target = explicit.group("title"), explicit.group("target")
        if target.startswith("~"):
            target = target[1:]
            shown = target.rsplit(".", 1)[-1]
        elif not explicit:
            shown = target
        target = target.lstrip(".")
        path = _resolve(obj, target)
        code = f"<code>{html.escape(shown)}</code>"
        if path is None:
            return code
        return f'<autoref identifier="{html.escape(path)}" optional>{code}</autoref>'

    text = _ROLE.sub(role, text)
    text = _BARE_LITERAL.sub("", text)
    return _LITERAL.sub(":", text)


class RstRoles(griffe.Extension):
    """Rewrite every docstring of a loaded package (see the module docstring)."""

    def _rewrite(self, pkg: griffe.Module) -> None:
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = _convert(obj, obj.docstring.value)

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._rewrite(pkg)

    def on_package_loaded(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._rewrite(pkg)


def _walk(obj: griffe.Object) -> list[griffe.Object]:
    found = [obj]
    for member in obj.members.values():
        if not member.is_alias:
            found.extend(_walk(member))  # type: ignore[arg-type]
    return found
