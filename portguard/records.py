"""`class Point(NamedTuple): x: int` without importing `typing` at run time.

`who` on a held port loads the value types without `typing` (what that saves:
docs/architecture.md, "What a start costs"). At run time `NamedTuple` here builds the
class with `collections.namedtuple`, as `typing.NamedTuple` itself does; type checkers
see `typing.NamedTuple` and check the classes as such. `tests/unit/test_records.py`
holds the two to the same behaviour.
"""

from __future__ import annotations

__all__ = ["NamedTuple"]

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)

if TYPE_CHECKING:
    from typing import NamedTuple
else:
    import collections

    _SPECIAL = frozenset({"__module__", "__qualname__", "__annotations__", "__dict__",
                          "__weakref__", "__classcell__"})

    class _Builder(type):
        """The metaclass of `NamedTuple`: a subclass's body becomes a namedtuple."""

        def __new__(mcs, name: str, bases: tuple[type, ...], ns: dict[str, object]
                    ) -> type:  # fmt: skip
            if not bases:
                return super().__new__(mcs, name, bases, ns)
            fields = list(ns.get("__annotations__", {}))
            defaults = [ns[f] for f in fields if f in ns]
            if any(f not in ns for f in fields[len(fields) - len(defaults):]):
                raise TypeError(f"{name}: a field without a default follows one with it")
            cls = collections.namedtuple(name, fields, defaults=defaults,
                                         module=ns.get("__module__"))
            for key, value in ns.items():
                if key not in _SPECIAL and key not in fields:
                    setattr(cls, key, value)
            cls.__annotations__ = ns.get("__annotations__", {})
            cls.__qualname__ = str(ns.get("__qualname__", name))
            return cls

    class NamedTuple(metaclass=_Builder):
        """Subclass it as `typing.NamedTuple`: annotated fields, then defaults, methods."""
