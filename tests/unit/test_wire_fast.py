"""Decoded values come from the decoders' fast construction path (gkm/wire/_fast.py): they must
be indistinguishable from values built by the public constructors."""

import dataclasses
import pickle

import pytest

from gkm.wire import GroupId, KeyPacket, SaKek, decode_message
from gkm.wire._fast import maker
from gkm.wire.examples import all_examples
from gkm.wire.message import encode_message


def _walk(value):
    yield value
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            yield from _walk(getattr(value, f.name))
    elif isinstance(value, tuple):
        for v in value:
            yield from _walk(v)


@pytest.mark.parametrize("name", sorted(all_examples()))
def test_decoded_values_are_ordinary_frozen_dataclasses(name):
    header, payloads = all_examples()[name]
    msg = decode_message(encode_message(header, payloads))
    seen = 0
    for v in _walk(msg):
        if not dataclasses.is_dataclass(v):
            continue
        seen += 1
        cls = type(v)
        fields = {f.name: getattr(v, f.name) for f in dataclasses.fields(v)}
        rebuilt = cls(**fields)
        assert rebuilt == v and hash(rebuilt) == hash(v) and repr(rebuilt) == repr(v)
        assert dataclasses.replace(v) == v
        assert pickle.loads(pickle.dumps(v)) == v
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(v, next(iter(fields)), None)
        assert not hasattr(v, "__dict__")
    assert seen >= 3


def test_maker():
    make = maker(GroupId)
    g = make(1, b"\x01\x02\x03\x04", 848)
    assert type(g) is GroupId and g == GroupId(1, b"\x01\x02\x03\x04", 848)
    assert maker(KeyPacket)(3, b"", ()) == KeyPacket(3, b"", ())
    assert type(maker(SaKek)(17, g, g, bytes(16), ())) is SaKek
