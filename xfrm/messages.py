"""XFRM netlink messages: constants, fixed structs and the fast codec (bytes <-> model).

The structs follow ``<linux/xfrm.h>``; each is one precompiled :class:`struct.Struct` in
little-endian x86_64 layout with its pads written out, and its size is checked against the
kernel ABI in the unit tests (``xfrm_usersa_info`` 224, ``xfrm_userpolicy_info`` 168).
Big-endian fields (ports, SPI) are byte-swapped by hand so one Struct packs a whole message.

Encoding is on the hot path (batches of thousands of states), so it is plain ``Struct.pack``
plus bytes joins: pyroute2's generic encoder costs tens of microseconds per message. The
pyroute2 declarations of the same messages live in :mod:`xfrm.nlmsgs` and are used as an
independent decoder in tests.
"""

from __future__ import annotations

import contextlib
import struct
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from .errors import DecodeError
from .model import (
    NO_LIFETIME, Action, Aead, Auth, Cipher, Direction, Lifetime, Mark, Mode, Policy, PolicyId,
    SaCounters, SaId,
    Selector, State, Template,
)

# --- constants (linux/xfrm.h, linux/netlink.h) ---------------------------------------------
NETLINK_XFRM = 6
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_ROOT, NLM_F_MATCH = 0x100, 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200
NLMSGERR_ATTR_MSG, NLMSGERR_ATTR_OFFS = 1, 2

XFRM_MSG_NEWSA, XFRM_MSG_DELSA, XFRM_MSG_GETSA = 0x10, 0x11, 0x12
XFRM_MSG_NEWPOLICY, XFRM_MSG_DELPOLICY, XFRM_MSG_GETPOLICY = 0x13, 0x14, 0x15
XFRM_MSG_ALLOCSPI, XFRM_MSG_ACQUIRE, XFRM_MSG_EXPIRE = 0x16, 0x17, 0x18
XFRM_MSG_UPDPOLICY, XFRM_MSG_UPDSA, XFRM_MSG_POLEXPIRE = 0x19, 0x1A, 0x1B
XFRM_MSG_FLUSHSA, XFRM_MSG_FLUSHPOLICY = 0x1C, 0x1D

XFRMA_ALG_AUTH, XFRMA_ALG_CRYPT = 1, 2
XFRMA_TMPL, XFRMA_SA, XFRMA_POLICY = 5, 6, 7
XFRMA_SRCADDR, XFRMA_POLICY_TYPE = 13, 16
XFRMA_ALG_AEAD, XFRMA_ALG_AUTH_TRUNC, XFRMA_MARK = 18, 20, 21
XFRMA_REPLAY_ESN_VAL, XFRMA_SA_EXTRA_FLAGS, XFRMA_PROTO = 23, 24, 25
XFRMA_ADDRESS_FILTER, XFRMA_IF_ID = 26, 31

XFRMNLGRP_ACQUIRE, XFRMNLGRP_EXPIRE, XFRMNLGRP_SA, XFRMNLGRP_POLICY = 1, 2, 3, 4

XFRM_STATE_ESN = 128
XFRM_SA_XFLAG_OSEQ_MAY_WRAP = 2
AF_INET, AF_INET6 = 2, 10
ALL_ALGS = 0xFFFFFFFF

# --- fixed structs ---------------------------------------------------------------------------
NLMSGHDR = struct.Struct("<IHHII")  # len, type, flags, seq, pid
NLATTR = struct.Struct("<HH")  # len, type
# struct xfrm_selector { daddr; saddr; __be16 dport, dport_mask, sport, sport_mask;
#   __u16 family; __u8 prefixlen_d, prefixlen_s, proto; /* 3 pad */ int ifindex; uid user; }
_SEL = "16s16sHHHHHBBB3xiI"
SELECTOR = struct.Struct("<" + _SEL)
_LFT = "8Q"  # struct xfrm_lifetime_cfg: soft/hard bytes, packets, add secs, use secs
_CUR = "4Q"  # struct xfrm_lifetime_cur: bytes, packets, add_time, use_time
# struct xfrm_usersa_info { sel; xfrm_id id {daddr; __be32 spi; __u8 proto; /* 3 pad */};
#   saddr; lft; curlft; xfrm_stats {replay_window, replay, integrity_failed}; __u32 seq,
#   reqid; __u16 family; __u8 mode, replay_window, flags; /* 7 pad */ }
USERSA_INFO = struct.Struct("<" + _SEL + "16sIB3x" + "16s" + _LFT + _CUR + "3I" + "IIHBBB7x")
# struct xfrm_usersa_id { daddr; __be32 spi; __u16 family; __u8 proto; /* 1 pad */ }
USERSA_ID = struct.Struct("<16sIHBx")
# struct xfrm_userpolicy_info { sel; lft; curlft; __u32 priority, index;
#   __u8 dir, action, flags, share; /* 4 pad */ }
USERPOLICY_INFO = struct.Struct("<" + _SEL + _LFT + _CUR + "IIBBBB4x")
# struct xfrm_userpolicy_id { sel; __u32 index; __u8 dir; /* 3 pad */ }
USERPOLICY_ID = struct.Struct("<" + _SEL + "IB3x")
# struct xfrm_user_tmpl { xfrm_id id; __u16 family; /* 2 pad */ saddr; __u32 reqid;
#   __u8 mode, share, optional; /* 1 pad */ __u32 aalgos, ealgos, calgos; }
USER_TMPL = struct.Struct("<16sIB3xH2x16sIBBBxIII")
MARK = struct.Struct("<II")  # struct xfrm_mark { v; m; }
ALGO = struct.Struct("<64sI")  # struct xfrm_algo { name[64]; key_len bits; key[] }
ALGO_AEAD = struct.Struct("<64sII")  # xfrm_algo_aead / xfrm_algo_auth: + icv/trunc bits
REPLAY_ESN = struct.Struct("<6I")  # bmp_len, oseq, seq, oseq_hi, seq_hi, replay_window
U32 = struct.Struct("<I")
# struct xfrm_user_acquire { xfrm_id id; saddr; sel; userpolicy_info policy;
#   __u32 aalgos, ealgos, calgos, seq; }
USER_ACQUIRE_SIZE = 280
USER_EXPIRE_SIZE = 232  # usersa_info + __u8 hard + 7 pad
USER_POLEXPIRE_SIZE = 176  # userpolicy_info + __u8 hard + 7 pad
ADDRESS_FILTER = struct.Struct("<16s16sHBB")

_ZERO_SEL = bytes(SELECTOR.size)
_ZERO_ADDR = bytes(16)
_INF_LFT = (0xFFFFFFFFFFFFFFFF,) * 4 + (0,) * 4
_INF_LFT_BYTES = struct.pack("<8Q", *_INF_LFT)


def _swap16(v: int) -> int:
    return ((v & 0xFF) << 8) | (v >> 8)


def _swap32(v: int) -> int:
    return int.from_bytes(v.to_bytes(4, "big"), "little")


_PAD12 = bytes(12)


def _addr(a: IPv4Address | IPv6Address) -> bytes:
    """An address as ``xfrm_address_t`` (16 bytes, IPv4 in the first 4)."""
    if a.__class__ is IPv4Address:
        return int(a).to_bytes(4, "big") + _PAD12
    return int(a).to_bytes(16, "big")


def _family(version: int) -> int:
    return AF_INET if version == 4 else AF_INET6


# --- encoding --------------------------------------------------------------------------------
_ZERO_SEL_FIELDS = (_ZERO_ADDR, _ZERO_ADDR, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)


def selector_fields(sel: Selector | None) -> tuple:
    """The 12 values of ``struct xfrm_selector`` (ports byte-swapped for the LE struct).

    On the hot path: written out by hand rather than through helpers.
    """
    if sel is None:
        return _ZERO_SEL_FIELDS
    d, s, dport, sport = sel.dst, sel.src, sel.dport, sel.sport
    if d.__class__ is IPv4Network:
        da = int(d.network_address).to_bytes(4, "big") + _PAD12
        sa = int(s.network_address).to_bytes(4, "big") + _PAD12
        family = AF_INET
    else:
        da = int(d.network_address).to_bytes(16, "big")
        sa = int(s.network_address).to_bytes(16, "big")
        family = AF_INET6
    if dport is None:
        dp = dm = 0
    else:
        dp, dm = ((dport & 0xFF) << 8) | (dport >> 8), 0xFFFF
    if sport is None:
        sp = sm = 0
    else:
        sp, sm = ((sport & 0xFF) << 8) | (sport >> 8), 0xFFFF
    return (da, sa, dp, dm, sp, sm, family, d.prefixlen, s.prefixlen, sel.proto, sel.ifindex, 0)


def selector_bytes(sel: Selector | None) -> bytes:
    """``struct xfrm_selector`` (56 bytes)."""
    if sel is None:
        return _ZERO_SEL
    return SELECTOR.pack(*selector_fields(sel))


# encoding pieces: usersa_info = selector + _SA_ID + lifetime + curlft/stats (zero) + _SA_TAIL,
# userpolicy_info = selector + lifetime + curlft (zero) + _POL_TAIL
_SA_ID = struct.Struct("<16sIB3x16s")  # xfrm_id {daddr, spi, proto, pad}, saddr
_LFT = struct.Struct("<8Q")
_SA_TAIL = struct.Struct("<IIHBBB7x")  # seq, reqid, family, mode, replay_window, flags, pad
_POL_TAIL = struct.Struct("<IIBBBB4x")  # priority, index, dir, action, flags, share, pad
_CUR_STATS_ZERO = bytes(32 + 12)
_CUR_ZERO = bytes(32)


def nlattr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return NLATTR.pack(n, kind) + payload + bytes(-n & 3)


def nlmsg(kind: int, flags: int, seq: int, payload: bytes) -> bytes:
    return NLMSGHDR.pack(16 + len(payload), kind, flags, seq, 0) + payload


def _mark_attrs(mark: Mark | None, if_id: int) -> bytes:
    out = b""
    if mark is not None:
        out = nlattr(XFRMA_MARK, MARK.pack(mark.value, mark.mask))
    if if_id:
        out += nlattr(XFRMA_IF_ID, U32.pack(if_id))
    return out


def _algo_name(name: str) -> bytes:
    return name.encode()


def state_payload(st: State) -> bytes:
    """``xfrm_usersa_info`` plus the attributes of a NEWSA/UPDSA message (no header)."""
    esn_attr = st.esn or st.replay_window > 32
    dst = st.dst
    v4 = dst.__class__ is IPv4Address
    lt = st.lifetime
    info = b"".join((
        _ZERO_SEL if st.selector is None else selector_bytes(st.selector),
        _SA_ID.pack(int(dst).to_bytes(4, "big") + _PAD12 if v4 else int(dst).to_bytes(16, "big"),
                    _swap32(st.spi), st.proto, _addr(st.src)),
        _INF_LFT_BYTES if lt is NO_LIFETIME else _LFT.pack(*lt.as_wire()),
        _CUR_STATS_ZERO,
        _SA_TAIL.pack(0, st.reqid, AF_INET if v4 else AF_INET6, st.mode,
                      0 if esn_attr else st.replay_window,
                      st.flags | (XFRM_STATE_ESN if st.esn else 0)),
    ))
    parts = [info]
    if st.aead is not None:
        a = st.aead
        parts.append(nlattr(XFRMA_ALG_AEAD, ALGO_AEAD.pack(_algo_name(a.name), len(a.key) * 8,
                                                           a.icv_bits) + a.key))
    if st.cipher is not None:
        c = st.cipher
        parts.append(nlattr(XFRMA_ALG_CRYPT, ALGO.pack(_algo_name(c.name), len(c.key) * 8)
                            + c.key))
    if st.auth is not None:
        h = st.auth
        parts.append(nlattr(XFRMA_ALG_AUTH_TRUNC, ALGO_AEAD.pack(
            _algo_name(h.name), len(h.key) * 8, h.trunc_bits) + h.key))
    if esn_attr:
        words = (st.replay_window + 31) // 32
        parts.append(nlattr(XFRMA_REPLAY_ESN_VAL,
                            REPLAY_ESN.pack(words, 0, 0, 0, 0, st.replay_window)
                            + bytes(4 * words)))
    if st.oseq_may_wrap:
        parts.append(nlattr(XFRMA_SA_EXTRA_FLAGS, U32.pack(XFRM_SA_XFLAG_OSEQ_MAY_WRAP)))
    if st.mark is not None or st.if_id:
        parts.append(_mark_attrs(st.mark, st.if_id))
    return b"".join(parts)




def address_filter_attr(src: IPv4Network | IPv6Network | None,
                        dst: IPv4Network | IPv6Network | None) -> bytes:
    """XFRMA_ADDRESS_FILTER for state dumps: keep states whose addresses fall in src/dst."""
    net = src if src is not None else dst
    if net is None:
        return b""
    any_net = IPv4Network("0.0.0.0/0") if net.version == 4 else IPv6Network("::/0")
    s, d = src or any_net, dst or any_net
    return nlattr(XFRMA_ADDRESS_FILTER, ADDRESS_FILTER.pack(
        _addr(s.network_address), _addr(d.network_address), _family(net.version),
        s.prefixlen, d.prefixlen))


def sa_id_payload(sa: SaId) -> bytes:
    return USERSA_ID.pack(_addr(sa.dst), _swap32(sa.spi), _family(sa.dst.version),
                          sa.proto) + _mark_attrs(sa.mark, 0)


def templates_attr(templates: tuple[Template, ...]) -> bytes:
    """The XFRMA_TMPL attribute: the templates back to back (cached by ``xfrm.batch``)."""
    return nlattr(XFRMA_TMPL, b"".join(template_bytes(t) for t in templates))


def template_bytes(t: Template) -> bytes:
    return USER_TMPL.pack(_addr(t.dst), _swap32(t.spi), t.proto, _family(t.dst.version),
                          _addr(t.src), t.reqid, t.mode, 0, 1 if t.optional else 0,
                          ALL_ALGS, ALL_ALGS, ALL_ALGS)


def policy_payload(p: Policy, templates: bytes | None = None) -> bytes:
    """``xfrm_userpolicy_info`` plus attributes of a NEWPOLICY/UPDPOLICY message.

    ``templates`` is the encoded XFRMA_TMPL attribute if the caller has it already.
    """
    lt = p.lifetime
    info = b"".join((
        selector_bytes(p.selector),
        _INF_LFT_BYTES if lt is NO_LIFETIME else _LFT.pack(*lt.as_wire()),
        _CUR_ZERO,
        _POL_TAIL.pack(p.priority, p.index, p.direction, p.action, 0, 0),
    ))
    out = info
    if templates is not None:
        out += templates
    elif p.templates:
        out += templates_attr(p.templates)
    if p.mark is not None or p.if_id:
        out += _mark_attrs(p.mark, p.if_id)
    return out


# --- fast paths for the common install shapes (used by xfrm.batch) ---------------------------
# One precompiled Struct packs a whole payload in one call. The private attributes of
# ipaddress objects (``_ip``: the integer, ``_prefixlen``) are read directly: the public
# ``int(a)`` / ``.prefixlen`` cost a Python-level call each, several per message. They have
# been stable since Python 3.3; the probe below falls back to the general encoders otherwise.
def _probe_ipaddress() -> bool:
    try:
        n4, n6 = IPv4Network("10.1.0.0/16"), IPv6Network("fd00::/64")
        return (IPv4Address("1.2.3.4")._ip == 0x01020304 and IPv6Address("::2")._ip == 2
                and n4._prefixlen == 16 and n6._prefixlen == 64
                and n4.network_address._ip == 0x0A010000
                and n6.network_address._ip == 0xFD00 << 112
                and IPv4Address._version == 4 and IPv6Address._version == 6)
    except AttributeError:  # pragma: no cover - a Python without these attributes
        return False


FAST_IPADDRESS = _probe_ipaddress()
# Per address family: an IPv4 address is "4s12x" (xfrm_address_t), so no padding is joined on;
# fields that msec always sends as zero (selector user, policy flags/share, template share,
# usersa seq) are pad bytes; constant attribute headers and the template's algorithm masks
# are one bytes argument each.
_A4, _A16 = "4s12x", "16s"


def _policy_1tmpl_struct(sel_v4: bool, tmpl_v4: bool) -> struct.Struct:
    """userpolicy_info (selector, lft, curlft zero, tail) + XFRMA_TMPL header + one
    xfrm_user_tmpl."""
    sa, ta = (_A4 if sel_v4 else _A16), (_A4 if tmpl_v4 else _A16)
    return struct.Struct(f"<{sa}{sa}HHHHHBBB3xi4x" "64s32xIIBB6x" "4s"
                         f"{ta}IB3xH2x{ta}IBxBx12s")


_POLICY_1TMPL = {(sv, tv): _policy_1tmpl_struct(sv, tv) for sv in (True, False)
                 for tv in (True, False)}
_PACK_44, _PACK_46 = _POLICY_1TMPL[True, True].pack, _POLICY_1TMPL[True, False].pack
_PACK_64, _PACK_66 = _POLICY_1TMPL[False, True].pack, _POLICY_1TMPL[False, False].pack
_TMPL1_HDR = NLATTR.pack(4 + USER_TMPL.size, XFRMA_TMPL)
_ALL_ALGS3 = U32.pack(ALL_ALGS) * 3
# usersa_info with a zero selector + XFRMA_ALG_AEAD + xfrm_algo_aead, per key length
_SA_AEAD: tuple[dict[int, tuple[struct.Struct, bytes]], ...] = ({}, {})  # IPv6, IPv4


def _sa_aead_struct(v4: bool, key_len: int) -> tuple[struct.Struct, bytes]:
    a = _A4 if v4 else _A16
    n = 4 + ALGO_AEAD.size + key_len
    entry = (struct.Struct(f"<56x{a}IB3x{a}64s48xIHBBB7x4s64sII{key_len}s{-n & 3}x"),
             NLATTR.pack(n, XFRMA_ALG_AEAD))
    _SA_AEAD[v4][key_len] = entry
    return entry


_NAMES: dict[str, bytes] = {}


def policy_payload_1tmpl(p: Policy, t: Template) -> bytes:
    """:func:`policy_payload` for a policy with exactly the one template ``t`` (the common
    shape: a group's policy names the group's SA), in one ``Struct.pack``."""
    sel = p.selector
    d, s, dport, sport = sel.dst, sel.src, sel.dport, sel.sport
    td, ts = t.dst, t.src
    if d._version == 4:
        n, family = 4, AF_INET
        if td._version == 4:
            tn, tfamily, pack = 4, AF_INET, _PACK_44
        else:
            tn, tfamily, pack = 16, AF_INET6, _PACK_46
    else:
        n, family = 16, AF_INET6
        if td._version == 4:
            tn, tfamily, pack = 4, AF_INET, _PACK_64
        else:
            tn, tfamily, pack = 16, AF_INET6, _PACK_66
    if dport is None:
        dp = dm = 0
    else:
        dp, dm = ((dport & 0xFF) << 8) | (dport >> 8), 0xFFFF
    if sport is None:
        sp = sm = 0
    else:
        sp, sm = ((sport & 0xFF) << 8) | (sport >> 8), 0xFFFF
    lt = p.lifetime
    spi = t.spi
    out = pack(
        d.network_address._ip.to_bytes(n, "big"), s.network_address._ip.to_bytes(n, "big"),
        dp, dm, sp, sm, family, d._prefixlen, s._prefixlen, sel.proto, sel.ifindex,
        _INF_LFT_BYTES if lt is NO_LIFETIME else _LFT.pack(*lt.as_wire()),
        p.priority, p.index, p.direction, p.action,
        _TMPL1_HDR,
        td._ip.to_bytes(tn, "big"),
        int.from_bytes(spi.to_bytes(4, "big"), "little") if spi else 0, t.proto,
        tfamily, ts._ip.to_bytes(tn, "big"), t.reqid, t.mode, 1 if t.optional else 0,
        _ALL_ALGS3)
    if p.mark is not None or p.if_id:
        out += _mark_attrs(p.mark, p.if_id)
    return out


def state_payload_aead(st: State) -> bytes:
    """:func:`state_payload` for the common shape: an AEAD, no selector, no ESN attribute
    (classic window up to 32), in one ``Struct.pack``."""
    dst, a = st.dst, st.aead
    key = a.key
    lt = st.lifetime
    v4 = dst._version == 4
    n = 4 if v4 else 16
    try:
        packer, hdr = _SA_AEAD[v4][len(key)]
    except KeyError:
        packer, hdr = _sa_aead_struct(v4, len(key))
    name = _NAMES.get(a.name)
    if name is None:
        name = _NAMES.setdefault(a.name, a.name.encode()) if len(_NAMES) < 64 else a.name.encode()
    out = packer.pack(
        dst._ip.to_bytes(n, "big"), int.from_bytes(st.spi.to_bytes(4, "big"), "little"),
        st.proto, st.src._ip.to_bytes(n, "big"),
        _INF_LFT_BYTES if lt is NO_LIFETIME else _LFT.pack(*lt.as_wire()),
        st.reqid, AF_INET if v4 else AF_INET6, st.mode, st.replay_window, st.flags,
        hdr, name, len(key) * 8, a.icv_bits, key)
    if st.oseq_may_wrap:
        out += nlattr(XFRMA_SA_EXTRA_FLAGS, U32.pack(XFRM_SA_XFLAG_OSEQ_MAY_WRAP))
    if st.mark is not None or st.if_id:
        out += _mark_attrs(st.mark, st.if_id)
    return out


def policy_id_payload(pid: PolicyId, index: int = 0) -> bytes:
    return (USERPOLICY_ID.pack(*selector_fields(pid.selector), index, pid.direction)
            + _mark_attrs(pid.mark, pid.if_id))


# --- decoding --------------------------------------------------------------------------------
def _ip(raw: bytes, family: int) -> IPv4Address | IPv6Address:
    return IPv4Address(raw[:4]) if family == AF_INET else IPv6Address(raw)


def _net(raw: bytes, plen: int, family: int) -> IPv4Network | IPv6Network:
    if family == AF_INET:
        return IPv4Network((raw[:4], plen), strict=False)
    return IPv6Network((raw, plen), strict=False)


def decode_selector(v: tuple, default_family: int) -> Selector | None:
    daddr, saddr, dport, dmask, sport, smask, family, plen_d, plen_s, proto, ifindex, _ = v
    if (family in (0, default_family) and plen_d == 0 and plen_s == 0 and proto == 0
            and not dmask and not smask and not ifindex
            and daddr == _ZERO_ADDR and saddr == _ZERO_ADDR):
        return None
    family = family or default_family
    return Selector(_net(saddr, plen_s, family), _net(daddr, plen_d, family), proto,
                    _swap16(sport) if smask else None, _swap16(dport) if dmask else None,
                    ifindex)


def _policy_selector(v: tuple) -> Selector:
    family = v[6] or AF_INET
    return Selector(_net(v[1], v[8], family), _net(v[0], v[7], family), v[9],
                    _swap16(v[4]) if v[5] else None, _swap16(v[2]) if v[3] else None, v[10])


def iter_attrs(data: bytes | memoryview, offset: int, end: int, what: str = "message"):
    """Yield (type, payload bytes) for each netlink attribute in ``data[offset:end]``."""
    while offset + 4 <= end:
        n, kind = NLATTR.unpack_from(data, offset)
        if n < 4 or offset + n > end:
            raise DecodeError(what, offset, f"attribute length {n} overruns {end}")
        yield kind & 0x3FFF, bytes(data[offset + 4:offset + n])
        offset += (n + 3) & ~3


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


def _mark_ifid(attrs: dict[int, bytes]) -> tuple[Mark | None, int]:
    mark = None
    if XFRMA_MARK in attrs:
        v, m = MARK.unpack_from(attrs[XFRMA_MARK])
        if v or m:
            mark = Mark(v & m, m)
    if_id = U32.unpack_from(attrs[XFRMA_IF_ID])[0] if XFRMA_IF_ID in attrs else 0
    return mark, if_id


def decode_state(info: bytes | memoryview, info_off: int, attrs: dict[int, bytes]) -> State:
    """A :class:`State` from a ``xfrm_usersa_info`` at ``info_off`` and its attributes."""
    v = USERSA_INFO.unpack_from(info, info_off)
    sel, (daddr, spi, proto, saddr) = v[:12], v[12:16]
    lft = v[16:24]
    _seq, reqid, family, mode, replay_window, flags = v[31:37]
    aead = cipher = auth = None
    if XFRMA_ALG_AEAD in attrs:
        raw = attrs[XFRMA_ALG_AEAD]
        name, bits, icv = ALGO_AEAD.unpack_from(raw)
        aead = Aead(_cstr(name), raw[72:72 + bits // 8], icv)
    if XFRMA_ALG_CRYPT in attrs:
        raw = attrs[XFRMA_ALG_CRYPT]
        name, bits = ALGO.unpack_from(raw)
        cipher = Cipher(_cstr(name), raw[68:68 + bits // 8])
    if XFRMA_ALG_AUTH_TRUNC in attrs:
        raw = attrs[XFRMA_ALG_AUTH_TRUNC]
        name, bits, trunc = ALGO_AEAD.unpack_from(raw)
        auth = Auth(_cstr(name), raw[72:72 + bits // 8], trunc)
    elif XFRMA_ALG_AUTH in attrs:
        raw = attrs[XFRMA_ALG_AUTH]
        name, bits = ALGO.unpack_from(raw)
        auth = Auth(_cstr(name), raw[68:68 + bits // 8], 96)
    esn = bool(flags & XFRM_STATE_ESN)
    if XFRMA_REPLAY_ESN_VAL in attrs:
        replay_window = REPLAY_ESN.unpack_from(attrs[XFRMA_REPLAY_ESN_VAL])[5]
    xflags = U32.unpack_from(attrs[XFRMA_SA_EXTRA_FLAGS])[0] \
        if XFRMA_SA_EXTRA_FLAGS in attrs else 0
    mark, if_id = _mark_ifid(attrs)
    try:
        mode_v = Mode(mode)
    except ValueError:
        raise DecodeError("xfrm_usersa_info", info_off + 214, f"unknown mode {mode}") from None
    return State(
        src=_ip(saddr, family), dst=_ip(daddr, family), spi=_swap32(spi), mode=mode_v,
        reqid=reqid, aead=aead, cipher=cipher, auth=auth, proto=proto,
        replay_window=min(replay_window, 4096), esn=esn,
        oseq_may_wrap=bool(xflags & XFRM_SA_XFLAG_OSEQ_MAY_WRAP),
        lifetime=Lifetime.from_wire(lft), mark=mark, if_id=if_id,
        selector=decode_selector(sel, family), flags=flags & ~XFRM_STATE_ESN,
    )


def decode_sa_counters(data, off: int, n: int) -> SaCounters:
    """The counters of a NEWSA (a dump reply) at ``off``: the fixed ``xfrm_usersa_info``
    only, no attribute (so no key) is read."""
    if n < 16 + USERSA_INFO.size:
        raise DecodeError("XFRM_MSG_NEWSA", off, f"too short ({n} bytes)")
    v = USERSA_INFO.unpack_from(data, off + 16)
    daddr, spi, proto = v[12:15]
    nbytes, packets, add_time, use_time = v[24:28]
    _window, replay, integrity = v[28:31]
    reqid, family = v[32], v[33]
    with decoding("XFRM_MSG_NEWSA", off):
        dst = _ip(daddr, family)
    return SaCounters(dst, _swap32(spi), proto, reqid, nbytes, packets, add_time, use_time,
                      replay, integrity)


def decode_templates(raw: bytes) -> tuple[Template, ...]:
    out = []
    for off in range(0, len(raw) - USER_TMPL.size + 1, USER_TMPL.size):
        (daddr, spi, proto, family, saddr, reqid, mode, _share, optional,
         _a, _e, _c) = USER_TMPL.unpack_from(raw, off)
        out.append(Template(_ip(saddr, family), _ip(daddr, family), Mode(mode), reqid, proto,
                            _swap32(spi), bool(optional)))
    return tuple(out)


def decode_policy(info: bytes | memoryview, info_off: int, attrs: dict[int, bytes]) -> Policy:
    v = USERPOLICY_INFO.unpack_from(info, info_off)
    sel, lft = v[:12], v[12:20]
    priority, index, direction, action = v[24:28]
    if direction >= POLICY_DIR_SOCKET:
        raise ValueError(f"direction {direction} is a per-socket policy, not an SPD entry")
    mark, if_id = _mark_ifid(attrs)
    tmpls = decode_templates(attrs[XFRMA_TMPL]) if XFRMA_TMPL in attrs else ()
    return Policy(_policy_selector(sel), Direction(direction), Action(action), priority,
                  tmpls, mark, if_id, Lifetime.from_wire(lft), index)


def split_messages(data: bytes | memoryview):
    """Yield (type, flags, seq, offset, length) for each netlink message in ``data``."""
    off, end = 0, len(data)
    while off + 16 <= end:
        n, kind, flags, seq, _pid = NLMSGHDR.unpack_from(data, off)
        if n < 16 or off + n > end:
            raise DecodeError("nlmsghdr", off, f"length {n} overruns {end}")
        yield kind, flags, seq, off, n
        off += (n + 3) & ~3


def attrs_dict(data, start: int, end: int, what: str) -> dict[int, bytes]:
    return dict(iter_attrs(data, start, end, what))


def decode_newsa(data, off: int, n: int) -> State:
    """NEWSA/UPDSA (a dump reply or an event) at ``off`` with total length ``n``."""
    start = off + 16
    if n < 16 + USERSA_INFO.size:
        raise DecodeError("XFRM_MSG_NEWSA", off, f"too short ({n} bytes)")
    with decoding("XFRM_MSG_NEWSA", off):
        return decode_state(data, start, attrs_dict(data, start + USERSA_INFO.size, off + n,
                                                    "XFRM_MSG_NEWSA"))


#: ``dir`` of a per-socket policy (XFRM_POLICY_MAX + direction): the kernel's policy dump also
#: lists the policies set on sockets with IP_XFRM_POLICY (strongSwan's charon sets bypass
#: policies on its IKE sockets this way); they are not SPD entries and never msec's
POLICY_DIR_SOCKET = 3


def is_socket_policy(data, off: int, n: int) -> bool:
    """Whether the XFRM_MSG_NEWPOLICY at ``off`` is a per-socket policy (see above)."""
    return n >= 16 + USERPOLICY_INFO.size and \
        data[off + 16 + USERPOLICY_INFO.size - 8] >= POLICY_DIR_SOCKET


def decode_newpolicy(data, off: int, n: int) -> Policy:
    start = off + 16
    if n < 16 + USERPOLICY_INFO.size:
        raise DecodeError("XFRM_MSG_NEWPOLICY", off, f"too short ({n} bytes)")
    with decoding("XFRM_MSG_NEWPOLICY", off):
        return decode_policy(data, start, attrs_dict(data, start + USERPOLICY_INFO.size,
                                                     off + n, "XFRM_MSG_NEWPOLICY"))


@contextlib.contextmanager
def decoding(what: str, offset: int):
    """Turn any failure while decoding ``what`` into a :class:`DecodeError`."""
    try:
        yield
    except DecodeError:
        raise
    except (ValueError, KeyError, IndexError, struct.error) as exc:
        raise DecodeError(what, offset, str(exc)) from exc

