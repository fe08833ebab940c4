"""Explicit name → object registries that fail loudly.

>>> GENERATORS = Registry("generator")
>>> @GENERATORS.register("unet25d")
... class UNet25D: ...
>>> GENERATORS.get("unet2.5d")  # doctest: +SKIP
ConfigError: unknown generator 'unet2.5d'; did you mean 'unet25d'? Known: unet25d
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from medsyn.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A plain dict of named entries with helpful errors for unknown names."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = obj

    def get(self, name: str, key: str | None = None) -> T:
        if name not in self._entries:
            raise ConfigError(self.unknown_message(name, key))
        return self._entries[name]

    def unknown_message(self, name: str, key: str | None = None) -> str:
        close = difflib.get_close_matches(str(name), list(self._entries), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        where = f"{key}: " if key else ""
        return f"{where}unknown {self.kind} {name!r}{hint} Known: {', '.join(sorted(self._entries))}"

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(sorted(self._entries.items()))

    def __contains__(self, name: str) -> bool:
        return name in self._entries
