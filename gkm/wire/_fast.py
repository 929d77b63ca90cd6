"""Decoder fast path: build frozen slotted dataclass instances without running ``__init__``.

A frozen dataclass ``__init__`` sets every field with ``object.__setattr__`` (it must get past
the class's refusing ``__setattr__``); with five fields that costs about four times a plain
slotted ``__init__``.  The decoders build about twenty such values per message from fields they
have already checked, so they use :func:`maker`: the fields are stored on an instance of a
private twin class with the same slots (plain attribute stores), then the instance's class is
switched to the real one (CPython allows ``__class__`` assignment between classes of identical
layout).  The result is an ordinary instance of ``cls``: equal, hashable, frozen and
``dataclasses.replace``-able like one built by the constructor.  Public constructors are
untouched.
"""

from __future__ import annotations

import dataclasses


def maker(cls: type):
    """A function ``make(*fields)`` (dataclass field order) returning an instance of ``cls``."""
    names = tuple(f.name for f in dataclasses.fields(cls))
    if tuple(cls.__slots__) != names:
        raise TypeError(f"{cls.__name__}: maker needs slots equal to the fields")
    twin = type(f"_{cls.__name__}Fields", cls.__bases__, {"__slots__": names})
    stores = "".join(f"    o.{n} = {n}\n" for n in names)
    src = f"def make({', '.join(names)}):\n    o = new(twin)\n{stores}    o.__class__ = cls\n    return o\n"
    ns = {"new": object.__new__, "twin": twin, "cls": cls}
    exec(src, ns)  # noqa: S102 - generated from dataclass field names only
    make = ns["make"]
    make.__qualname__ = f"{cls.__name__}._make"
    probe = make(*range(len(names)))
    if type(probe) is not cls or any(getattr(probe, n) != i for i, n in enumerate(names)):
        raise TypeError(f"{cls.__name__}: fast construction does not give a {cls.__name__}")
    return make
