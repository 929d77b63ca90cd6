"""Initiator and responder over real UDP sockets on 127.0.0.1, through a tiny asyncio adapter
(the shape the daemon will use: one call_at per engine, re-armed when get_timer() changes)."""

from __future__ import annotations

import asyncio

import pytest

from gkm.ike import (
    AuthMethod, CertCredential, HashAlg, Identity, InformationalReceived, MainMode, Notification, Phase1Config,
    Phase1Established, Phase1Server, Proposal, PskStore, Role,
)
from tests.unit.ike_data.helpers import T0, ca, leaf


class EngineProtocol(asyncio.DatagramProtocol):
    def __init__(self, engine, loop: asyncio.AbstractEventLoop) -> None:
        self.engine = engine
        self.loop = loop
        self.transport: asyncio.DatagramTransport | None = None
        self.events: asyncio.Queue = asyncio.Queue()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.engine.receive_datagram(data, addr, self.loop.time())
        self.transmit()

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        self.engine.handle_timer(self.loop.time())
        self.transmit()

    def transmit(self) -> None:
        for data, addr in self.engine.datagrams_to_send():
            self.transport.sendto(data, addr)
        while (ev := self.engine.next_event()) is not None:
            self.events.put_nowait(ev)
        t = self.engine.get_timer()
        if t != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(t, self._on_timer) if t is not None else None
            self._timer_at = t

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.transport.close()


@pytest.mark.parametrize("method", [AuthMethod.PRE_SHARED_KEY, AuthMethod.ECDSA_256])
def test_main_mode_over_udp(method):
    async def run():
        loop = asyncio.get_running_loop()
        offset = T0 - loop.time()  # certificate validity is judged at T0
        prop = (Proposal(method, 19, HashAlg.SHA2_256),)
        if method is AuthMethod.PRE_SHARED_KEY:
            gm1 = Identity.fqdn("gm1.example.net")
            ks_cfg = Phase1Config(prop, local_id=Identity.fqdn("ks.example.net"), psk=PskStore(by_id={gm1: b"udp test key"}))
            gm_cfg = Phase1Config(prop, local_id=gm1, psk=PskStore({"127.0.0.1": b"udp test key"}))
        else:
            anchors = (ca("Test Root CA")[0],)
            kc, kk = leaf("p256", "ks")
            gc, gk = leaf("p256", "gm1")
            ks_cfg = Phase1Config(prop, credential=CertCredential(kc, kk), trust_anchors=anchors, wall_time_offset=offset)
            gm_cfg = Phase1Config(prop, credential=CertCredential(gc, gk), trust_anchors=anchors, wall_time_offset=offset)
        server = Phase1Server(ks_cfg)
        _st, ks = await loop.create_datagram_endpoint(lambda: EngineProtocol(server, loop), local_addr=("127.0.0.1", 0))
        ks_addr = ks.transport.get_extra_info("sockname")[:2]
        gm_engine = MainMode(gm_cfg, Role.INITIATOR, ks_addr)
        _gt, gm = await loop.create_datagram_endpoint(lambda: EngineProtocol(gm_engine, loop), local_addr=("127.0.0.1", 0))
        try:
            gm_engine.start(loop.time())
            gm.transmit()
            ie = await asyncio.wait_for(gm.events.get(), 60)
            se = await asyncio.wait_for(ks.events.get(), 60)
            assert isinstance(ie, Phase1Established) and isinstance(se, Phase1Established), (ie, se)
            assert ie.sa.enc_key == se.sa.enc_key and se.sa.peer_addr == gm.transport.get_extra_info("sockname")[:2]
            # a protected notification from the key server reaches the member over UDP
            server.send_informational(se.sa.spi, loop.time(), notifications=(Notification(16384, 1, se.sa.spi, b"hi"),))
            ks.transmit()
            ev = await asyncio.wait_for(gm.events.get(), 60)
            assert isinstance(ev, InformationalReceived) and ev.notifications[0].data == b"hi"
        finally:
            gm.close()
            ks.close()

    asyncio.run(run())
