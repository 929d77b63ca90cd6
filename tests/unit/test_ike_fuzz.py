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
