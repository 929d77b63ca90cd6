"""Real UDP over 127.0.0.1: members and a key server driven by a tiny asyncio adapter.

The adapter is the shape the daemon will have: feed datagrams and timer expiries in, send what
the engine wants to send, re-arm one ``call_at`` when the engine's deadline changes.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from gkm.gdoi import KeyServerEngine, MemberRegistered, MemberRegistration, Registered, StoreKeysProvider, phase1_config
from gkm.store import KeyStore
from policy.model import KeyServerAddress, MemberGroup, PskCredential, Secret
from tests.unit.test_gdoi_support import GID, PSKS, group_policy, ks_settings


class EngineProtocol(asyncio.DatagramProtocol):
    def __init__(self, engine, on_event, commit=None) -> None:
        self.engine = engine
        self.on_event = on_event
        self.commit = commit  # the key server's durable step, before its outputs are taken
        self.transport = None
        self._timer = None
        self._deadline = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.engine.receive_datagram(data, addr, asyncio.get_running_loop().time())
        self.transmit()

    def _fire(self) -> None:
        self._timer = self._deadline = None
        self.engine.handle_timer(asyncio.get_running_loop().time())
        self.transmit()

    def transmit(self) -> None:
        if self.commit is not None:
            self.commit(asyncio.get_running_loop().time())
        for data, addr in self.engine.datagrams_to_send():
            self.transport.sendto(data, addr)
        while (ev := self.engine.next_event()) is not None:
            self.on_event(ev)
        deadline = self.engine.get_timer()
        if deadline != self._deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._deadline = deadline
            self._timer = None if deadline is None else asyncio.get_running_loop().call_at(deadline, self._fire)


async def _scenario(tmp_path, n_members: int):
    loop = asyncio.get_running_loop()
    wall = time.time() - loop.time()
    groups = [group_policy(tmp_path)]
    store = KeyStore(tmp_path / "state")
    settings = ks_settings(tmp_path, groups)
    engine = KeyServerEngine(groups, StoreKeysProvider(store), phase1_config(settings, local_address="127.0.0.1", wall_time_offset=wall),
                             rekey_source=("127.0.0.1", 848))
    ks_events = []
    ks_transport, _ = await loop.create_datagram_endpoint(lambda: EngineProtocol(engine, ks_events.append, engine.commit), local_addr=("127.0.0.1", 0))
    ks_addr = ks_transport.get_extra_info("sockname")
    done = {}
    transports = [ks_transport]
    finished = asyncio.Event()
    names = ["gm1", "gm2", "gm3"]
    for i in range(n_members):
        who = names[i]
        mg = MemberGroup(GID, (KeyServerAddress(ks_addr[0], ks_addr[1]),), PskCredential(who, Secret(PSKS[who])))
        reg = MemberRegistration(phase1_config(mg, key_server=ks_addr), GID, ks_addr, authorize_key_server=mg.accepts_key_server)

        def on_event(ev, i=i):
            done[i] = ev
            if len(done) == n_members:
                finished.set()

        t, proto = await loop.create_datagram_endpoint(lambda reg=reg, cb=on_event: EngineProtocol(reg, cb), remote_addr=ks_addr)
        transports.append(t)
        reg.start(loop.time())
        proto.transmit()
    try:
        # returns as soon as every member has its outcome; the deadline is for a loaded machine
        # and lies beyond the engines' own exchange timeouts (30 s phase 1, 30 s pull), so a
        # member that gets no keys reports why instead of the test timing out
        try:
            await asyncio.wait_for(finished.wait(), 150)
        except (asyncio.TimeoutError, TimeoutError):
            raise AssertionError(f"members without an outcome after 150 s: "
                                 f"{sorted(set(range(n_members)) - set(done))}; got {done}") from None
    finally:
        for t in transports:
            t.close()
    return done, ks_events, store


@pytest.mark.timeout(240)
def test_registration_over_udp(tmp_path):
    done, ks_events, store = asyncio.run(_scenario(tmp_path, 3))
    assert all(isinstance(ev, Registered) for ev in done.values()), done
    spis = {tuple(t.spi for t in ev.teks) for ev in done.values()}
    assert len(spis) == 1  # every member got the same TEKs
    assert sorted(type(e).__name__ for e in ks_events if isinstance(e, MemberRegistered)) == ["MemberRegistered"] * 3
    assert sorted(m.identity for m in store.members(GID)) == ["key-id:gm1", "key-id:gm2", "key-id:gm3"]
    store.close()
