"""portguard.records.NamedTuple behaves as typing.NamedTuple for what the code uses."""

from __future__ import annotations

import pickle
import typing
from typing import Any

import pytest

from portguard import records


def _shapes() -> list[Any]:
    made: list[Any] = []
    for base in (typing.NamedTuple, records.NamedTuple):
        class Port(base):  # type: ignore[valid-type,misc]
            """A port, as a test shape."""

            number: int
            proto: str = "tcp"
            notes: tuple[str, ...] = ()

            @property
            def label(self) -> str:
                return f"{self.number}/{self.proto}"

            def __str__(self) -> str:
                return self.label

        made.append(Port)
    return made


TYPING, OURS = _shapes()


def test_fields_defaults_and_values_match_typing() -> None:
    assert OURS._fields == TYPING._fields == ("number", "proto", "notes")
    assert OURS._field_defaults == TYPING._field_defaults
    ours, theirs = OURS(80), TYPING(80)
    assert tuple(ours) == tuple(theirs) == (80, "tcp", ())
    assert ours == theirs and hash(ours) == hash(theirs)  # both plain tuples underneath
    assert repr(ours) == repr(theirs) == "Port(number=80, proto='tcp', notes=())"
    assert ours._replace(proto="udp") == (80, "udp", ())
    assert ours._asdict() == theirs._asdict()


def test_methods_properties_and_docstring_carry_over() -> None:
    ours = OURS(53, "udp")
    assert ours.label == "53/udp" and str(ours) == "53/udp"
    assert OURS.__doc__ == TYPING.__doc__ == "A port, as a test shape."
    assert OURS.__module__ == TYPING.__module__ == __name__
    assert OURS.__qualname__ == TYPING.__qualname__
    assert OURS.__annotations__.keys() == TYPING.__annotations__.keys()


def test_instances_stay_immutable_and_slotted() -> None:
    ours = OURS(80)
    with pytest.raises(AttributeError):
        ours.number = 81
    with pytest.raises(AttributeError):
        ours.extra = 1
    assert isinstance(ours, tuple)


def test_the_models_pickle_and_compare_by_value() -> None:
    from portguard.model import PortSpec, Proto, Socket
    sock = Socket(Proto.TCP, 10, "LISTEN", "::", 8080, "::", 0, 0, 123)
    assert pickle.loads(pickle.dumps(sock)) == sock
    assert PortSpec(80, 81).ports == range(80, 82)


def test_a_field_without_default_after_one_with_it_is_refused_as_typing_does() -> None:
    for base in (typing.NamedTuple, records.NamedTuple):
        with pytest.raises(TypeError):
            class Bad(base):  # type: ignore[valid-type,misc]
                first: int = 0
                second: int
