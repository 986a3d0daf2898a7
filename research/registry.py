"""Named tables of things: models, optimizers, datasets, layers.

Contract: a `Registry` maps a lower-case name to an object (a class, a factory
function or a spec). `get(name)` returns it; an unknown name raises
`UnknownNameError` (a `ValueError`) whose message lists every known name, so a
typo in a config is fixed from the message alone. Registries are explicit
tables: each package builds its own in its `__init__.py`, one line per entry,
so a reader sees the whole table in one place.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(ValueError):
    """A name that is not in a registry. The message lists the valid names."""


class Registry(Generic[T]):
    """A name -> object table with helpful errors.

    Args:
      kind: what the entries are ("model", "optimizer", ...), used in messages.
      entries: initial table.
    """

    def __init__(self, kind: str, entries: Mapping[str, T] | None = None):
        self.kind = kind
        self._entries: dict[str, T] = {}
        for name, obj in (entries or {}).items():
            self.register(name, obj)

    def register(self, name: str, obj: T | None = None) -> T | Callable[[T], T]:
        """Adds `obj` under `name`; used bare or as a decorator (`obj` omitted)."""
        if obj is None:
            return lambda o: self.register(name, o)
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = obj
        return obj

    def get(self, name: str) -> T:
        """Returns the entry for `name`, or raises `UnknownNameError` listing known names."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            pass
        known = ", ".join(self.names())
        close = difflib.get_close_matches(str(name), self._entries, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownNameError(f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {known}")

    def names(self) -> tuple[str, ...]:
        """All registered names, sorted."""
        return tuple(sorted(self._entries))

    def items(self):
        return sorted(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={list(self.names())})"
