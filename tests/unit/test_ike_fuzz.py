"""No datagram makes an exception escape the engines; bad input leaves no state behind."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gkm.ike import AuthMethod, MainMode, Phase1Server, Role
from tests.unit.ike_data.helpers import GM_ADDR, KS_ADDR, T0, config, events, pair, pump

_SRV_CFG = config(AuthMethod.PRE_SHARED_KEY, role="ks")
_GM_CFG = config(AuthMethod.PRE_SHARED_KEY, role="gm")


def _transcript():
    ini, srv = pair(_GM_CFG, _SRV_CFG)
    seen = []
    pump(ini, srv, T0, tamper=lambda d, n, data: seen.append(data) or data)
    return seen


_MSGS = _transcript()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_random_bytes(data):
    srv = Phase1Server(_SRV_CFG)
    srv.receive_datagram(data, GM_ADDR, T0)
    ini = MainMode(_GM_CFG, Role.INITIATOR, KS_ADDR)
    ini.start(T0)
    ini.datagrams_to_send()
    ini.receive_datagram(data, KS_ADDR, T0)
    assert srv.stats["internal_error"] == 0 and srv.pending_count == 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 5), st.data())
def test_mutated_messages(index, data):
    """Mutate one message of a real exchange in flight: the exchange completes, fails with a
    reason, or the mutant is dropped -- never an exception, never an internal error."""
    msg = bytearray(_MSGS[index])
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(msg) - 1))
        msg[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        cut = data.draw(st.integers(0, len(msg)))
        msg = msg[:cut]
    mutant = bytes(msg)
    direction = "i2r" if index % 2 == 0 else "r2i"
    n = index // 2
    ini, srv = pair(_GM_CFG, _SRV_CFG)
    pump(ini, srv, T0, tamper=lambda d, k, raw: mutant if (d, k) == (direction, n) else raw)
    for ev in events(ini) + events(srv):
        assert "internal error" not in getattr(ev, "reason", "")
    assert srv.stats["internal_error"] == 0


def test_engine_modules_do_no_io():
    """HACKING.md: no sockets, asyncio or clocks inside gkm/ike (imports and calls checked)."""
    import ast
    import pathlib

    import gkm.ike

    banned_modules = {"socket", "asyncio", "time", "select", "selectors", "threading", "pyroute2"}
    banned_calls = {"now", "utcnow", "today", "monotonic", "perf_counter"}
    for path in pathlib.Path(gkm.ike.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {(node.module or "").split(".")[0]}
            else:
                names = set()
            assert not names & banned_modules, (path.name, names)
            if isinstance(node, ast.Attribute) and node.attr in banned_calls:
                raise AssertionError(f"{path.name}: .{node.attr}")


@settings(max_examples=400, deadline=None)
@given(
    st.binary(max_size=40),
    st.sampled_from([0x10, 0x11, 0x1F, 0x20, 0x00]),
    st.integers(0, 255),
    st.booleans(),
)
def test_header_fast_path_matches_wire(raw, version, flags, fix_length):
    """gkm.ike._msg unpacks headers itself; results and errors equal the gkm.wire decoder's."""
    import struct

    from gkm import wire
    from gkm.ike import _msg as m

    data = bytearray(raw)
    if len(data) >= 28:
        data[17], data[19] = version, flags
        if fix_length:
            data[24:28] = struct.pack("!I", len(data))
    data = bytes(data)

    def reference():
        h, np, length = wire.decode_header(data)
        if length != len(data):
            raise m.MessageError("header", 24, f"length field {length} != datagram size {len(data)}")
        return (h.icookie, h.rcookie, np, int(h.exchange), int(h.flags), h.message_id, length)

    def outcome(f):
        try:
            return tuple(f())
        except m.MessageError as e:
            return str(e)
        except wire.WireError as e:
            return str(m.MessageError.of(e))

    assert outcome(lambda: m.decode_header(data)) == outcome(reference)
    if len(data) >= 28 and not isinstance(outcome(reference), str):
        h = m.decode_header(data)
        assert m.encode_header(h.icookie, h.rcookie, h.next_payload, h.exchange, h.flags, h.message_id, h.length) == data[:17] + b"\x10" + data[18:28]
