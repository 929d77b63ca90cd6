"""Sans-I/O parsing of XFRM multicast events and of netlink ACKs."""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
from ipaddress import ip_address

from xfrm import algorithms as alg
from xfrm import events as ev
from xfrm import messages as m
from xfrm.model import Direction, Mode, Policy, Selector, State, Template
from xfrm.owner import MSEC
from xfrm.socket import parse_ack

A = ip_address
R = MSEC.reqid(2)
ST = State(A("10.0.0.1"), A("239.1.1.1"), 0x1234, Mode.TUNNEL, R,
           aead=alg.aes_gcm(bytes(20)), oseq_may_wrap=True)
POL = Policy(Selector.host(A("10.0.0.1"), A("239.1.1.1"), 17, dport=5000), Direction.OUT,
             priority=7, templates=(Template(A("10.0.0.1"), A("239.1.1.1"), Mode.TUNNEL, R),))


def split(payload: bytes, head: int) -> tuple[bytes, bytes]:
    return payload[:head], payload[head:]


def test_expire_soft_and_hard():
    info, attrs = split(m.state_payload(ST), 224)
    soft = m.nlmsg(m.XFRM_MSG_EXPIRE, 0, 0, info + b"\0" * 8 + attrs)
    hard = m.nlmsg(m.XFRM_MSG_EXPIRE, 0, 0, info + b"\1" + b"\0" * 7 + attrs)
    assert ev.parse_events(soft + hard) == [ev.SaExpired(ST, False), ev.SaExpired(ST, True)]


def test_sa_added_deleted():
    new = m.nlmsg(m.XFRM_MSG_NEWSA, 0, 0, m.state_payload(ST))
    sa_id = m.USERSA_ID.pack(A("239.1.1.1").packed + bytes(12), m._swap32(0x1234), 2, 50)
    info, attrs = split(m.state_payload(ST), 224)
    delete = m.nlmsg(m.XFRM_MSG_DELSA, 0, 0, sa_id + m.nlattr(m.XFRMA_SA, info) + attrs)
    added, deleted = ev.parse_events(new + delete)
    assert added == ev.SaAdded(ST)
    assert deleted == ev.SaDeleted(ST.id, ST)


def test_policy_events_and_flush():
    upd = m.nlmsg(m.XFRM_MSG_UPDPOLICY, 0, 0, m.policy_payload(POL))
    info, attrs = split(m.policy_payload(POL), 168)
    pid = m.policy_id_payload(POL.id)
    delete = m.nlmsg(m.XFRM_MSG_DELPOLICY, 0, 0, pid + m.nlattr(m.XFRMA_POLICY, info) + attrs)
    polexp = m.nlmsg(m.XFRM_MSG_POLEXPIRE, 0, 0, info + b"\1" + bytes(7) + attrs)
    flush = m.nlmsg(m.XFRM_MSG_FLUSHSA, 0, 0, b"\x32\0\0\0")
    assert ev.parse_events(upd + delete + polexp + flush) == [
        ev.PolicyUpdated(POL), ev.PolicyDeleted(POL.id, POL), ev.PolicyExpired(POL, True),
        ev.Flushed("sa")]


def test_acquire():
    info, attrs = split(m.policy_payload(POL), 168)
    body = (A("239.1.1.1").packed + bytes(12) + bytes(4) + b"\x32" + bytes(3)
            + A("10.0.0.1").packed + bytes(12)
            + m.SELECTOR.pack(*m.selector_fields(POL.selector)) + info
            + struct.pack("<IIII", 0, 0, 0, 99))
    assert len(body) == m.USER_ACQUIRE_SIZE
    (acq,) = ev.parse_events(m.nlmsg(m.XFRM_MSG_ACQUIRE, 0, 0, body + attrs))
    assert acq == ev.Acquire(A("239.1.1.1"), A("10.0.0.1"), 50, POL.selector, POL, 99)


def test_parse_ack_with_extack():
    text = b"Requested type not found\0"
    payload = struct.pack("<i", -errno.EPROTONOSUPPORT) + m.NLMSGHDR.pack(300, 16, 5, 9, 0) \
        + m.nlattr(m.NLMSGERR_ATTR_MSG, text)
    msg = m.NLMSGHDR.pack(16 + len(payload), m.NLMSG_ERROR, m.NLM_F_CAPPED | m.NLM_F_ACK_TLVS,
                          9, 0) + payload
    assert parse_ack(msg, 0, len(msg)) == (errno.EPROTONOSUPPORT, "Requested type not found")
    ok = m.NLMSGHDR.pack(36, m.NLMSG_ERROR, m.NLM_F_CAPPED, 9, 0) + struct.pack("<i", 0) \
        + m.NLMSGHDR.pack(300, 16, 5, 9, 0)
    assert parse_ack(ok, 0, len(ok)) == (0, None)


def test_async_iterator_over_a_socketpair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    events = ev.XfrmEvents(a)

    async def main():
        b.send(m.nlmsg(m.XFRM_MSG_NEWPOLICY, 0, 0, m.policy_payload(POL))
               + m.nlmsg(m.XFRM_MSG_FLUSHPOLICY, 0, 0, b""))
        got = [await anext(events), await anext(events)]
        return got

    try:
        assert asyncio.run(main()) == [ev.PolicyAdded(POL), ev.Flushed("policy")]
    finally:
        events.close()
        b.close()


def test_garbage_raises_decode_error_only():
    import pytest
    from xfrm.errors import DecodeError

    info, attrs = split(m.state_payload(ST), 224)
    bad_mode = bytearray(info)
    bad_mode[214] = 9
    for blob in (m.nlmsg(m.XFRM_MSG_NEWSA, 0, 0, bytes(bad_mode) + attrs),
                 m.nlmsg(m.XFRM_MSG_NEWPOLICY, 0, 0, bytes(100)),
                 m.nlmsg(m.XFRM_MSG_EXPIRE, 0, 0, info),
                 m.nlmsg(m.XFRM_MSG_NEWSA, 0, 0, info + b"\x50\x00\x12\x00")):
        with pytest.raises(DecodeError):
            ev.parse_events(blob)
