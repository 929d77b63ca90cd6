"""XfrmSocket: states, policies, batches and ownership over NETLINK_XFRM.

One blocking ``AF_NETLINK``/``NETLINK_XFRM`` socket, created in the requested network namespace
(see :mod:`xfrm.netns`), with ``NETLINK_EXT_ACK`` (the kernel's error text) and
``NETLINK_CAP_ACK`` (ACKs do not echo the request, which keeps batch ACKs small).

Batches: requests are concatenated and sent many per ``sendmsg``. The kernel handles every
message of one send in the sender's context before ``sendmsg`` returns, queueing one ACK per
message on our socket, so chunks are sized to fit their ACKs in the receive buffer. Every ACK
is matched by sequence number; a failure names the item's index in the batch.
"""

from __future__ import annotations

import errno
import logging
import os
import socket as _socket
from collections.abc import Iterable, Sequence
from itertools import repeat
from operator import itemgetter

from . import messages as m
from .batch import Batch, Op, SingleOperations
from .errors import InvalidArgument, KernelError, KernelLacksFeature, XfrmError
from .model import Network, Policy, PolicyId, Proto, SaCounters, SaId, State
from .netns import NetnsSpec, run_in_netns
from .owner import MSEC, Owner

__all__ = ["XfrmSocket", "open_netlink"]

log = logging.getLogger(__name__)
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
NLM_F_DUMP_INTR = 0x10
BUF_BYTES = 8 << 20
CHUNK_BYTES = 256 << 10
_PLAIN_ACK = m.struct.Struct("<IHHIIi")  # nlmsghdr + nlmsgerr.error of a capped ACK
REPLY_TIMEOUT = 60.0  # seconds; the kernel answers synchronously, this only guards hangs
ACK_TRUESIZE = 1024  # generous skb truesize of one capped ACK, to size chunks
_PLUS_HDR = (16).__add__  # payload length -> nlmsg_len
_SEQ = m.struct.Struct("<8xI")  # nlmsghdr.nlmsg_seq
_SEQ_OF = itemgetter(0)


def open_netlink(netns: NetnsSpec = None, groups: Iterable[int] = (),
                 bufsize: int = BUF_BYTES) -> _socket.socket:
    """A NETLINK_XFRM socket in ``netns``, bound, with extended ACKs and the given groups."""
    def make() -> _socket.socket:
        s = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC,
                           m.NETLINK_XFRM)
        try:
            for force, plain in ((SO_RCVBUFFORCE, _socket.SO_RCVBUF),
                                 (SO_SNDBUFFORCE, _socket.SO_SNDBUF)):
                try:
                    s.setsockopt(_socket.SOL_SOCKET, force, bufsize)
                except PermissionError:
                    s.setsockopt(_socket.SOL_SOCKET, plain, bufsize)
            s.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            s.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            s.bind((0, 0))
            for g in groups:
                s.setsockopt(SOL_NETLINK, 1, g)  # NETLINK_ADD_MEMBERSHIP
        except BaseException:
            s.close()
            raise
        return s

    return run_in_netns(netns, make)


def parse_ack(data, off: int, n: int) -> tuple[int, str | None]:
    """(errno, extended-ack text) of an NLMSG_ERROR message; errno 0 is a plain ACK."""
    (err,) = m.struct.unpack_from("<i", data, off + 16)
    _n, _t, flags, _s, _p = m.NLMSGHDR.unpack_from(data, off)
    extack = None
    if flags & m.NLM_F_ACK_TLVS:
        inner_len = m.NLMSGHDR.unpack_from(data, off + 20)[0]
        attrs_at = off + 20 + (16 if flags & m.NLM_F_CAPPED else ((inner_len + 3) & ~3))
        for kind, payload in m.iter_attrs(data, attrs_at, off + n, "nlmsgerr"):
            if kind == m.NLMSGERR_ATTR_MSG:
                extack = payload.split(b"\0", 1)[0].decode("utf-8", "replace")
    return -err, extack


def kernel_error(op: Op | None, opname: str, code: int, extack: str | None,
                 index: int | None = None) -> KernelError:
    """The exception for a kernel error, naming missing ESP or algorithms plainly."""
    item = op.item if op is not None else None
    label = op.describe() if op is not None else None
    if isinstance(item, State) and opname in ("add_state", "update_state"):
        if code == errno.EPROTONOSUPPORT:
            base = {Proto.ESP: "esp", Proto.AH: "ah", Proto.COMP: "ipcomp"}.get(item.proto,
                                                                               "xfrm proto")
            feature = f"{base}{4 if item.dst.version == 4 else 6}"
            return KernelLacksFeature(opname, code, feature, extack, index, label)
        if code == errno.ENOSYS:
            text = (extack or "").upper()
            names = []
            if item.aead is not None and ("AEAD" in text or not text):
                names.append(item.aead.name)
            if item.cipher is not None and ("CRYPT" in text or not text):
                names.append(item.cipher.name)
            if item.auth is not None and ("AUTH" in text or not text):
                names.append(item.auth.name)
            names = names or [a.name for a in (item.aead, item.cipher, item.auth) if a]
            return KernelLacksFeature(opname, code, " / ".join(names), extack, index, label)
    return KernelError(opname, code, extack, index, label)


class XfrmSocket(SingleOperations):
    """States and policies in one network namespace's XFRM, owned by ``owner``.

    Use as a context manager or call :meth:`close`. Not thread-safe: one socket per thread.
    """

    def __init__(self, netns: NetnsSpec = None, owner: Owner = MSEC) -> None:
        self.owner = owner
        self.netns = netns
        self._sock = open_netlink(netns)
        self._seq = int.from_bytes(os.urandom(2), "little") << 8
        self._buf = bytearray(1 << 20)
        rcv = self._sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF)
        snd = self._sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF)
        # every ACK of a chunk is queued before sendmsg returns: they must fit in rcvbuf;
        # one sendmsg must fit in sndbuf (the kernel refuses len > sndbuf - 32)
        self._chunk_count = max(16, min(4096, rcv // ACK_TRUESIZE))
        self._chunk_bytes = max(4096, min(CHUNK_BYTES, snd // 2))
        self._sock.settimeout(REPLY_TIMEOUT)

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> XfrmSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        return self._sock.fileno()

    def _next_seq(self, count: int = 1) -> int:
        seq = self._seq
        self._seq = (seq + count) & 0x7FFFFFFF or 1
        if self._seq < seq:  # wrapped: never hand out a range that wraps
            seq, self._seq = 1, count + 1
        return seq

    # -- single operations -------------------------------------------------------------------
    def batch(self) -> Batch:
        return Batch(self.owner)


    def get_state(self, sa: SaId) -> State:
        """The state (dst, spi, proto, mark); KernelError ESRCH if there is none."""
        data, off, n = self._request("get_state", m.XFRM_MSG_GETSA, m.sa_id_payload(sa))
        return m.decode_newsa(data, off, n)

    def get_policy(self, pid: PolicyId) -> Policy:
        data, off, n = self._request("get_policy", m.XFRM_MSG_GETPOLICY,
                                     m.policy_id_payload(pid))
        return m.decode_newpolicy(data, off, n)

    # -- dumps -------------------------------------------------------------------------------
    def dump_states(self, proto: int | None = None, owned: bool = False,
                    src: Network | None = None, dst: Network | None = None,
                    larval: bool = False) -> list[State]:
        """Every state, filtered in the kernel by ``proto`` and by addresses within ``src`` /
        ``dst`` (XFRMA_ADDRESS_FILTER); ``owned`` keeps only msec's. The kernel's larval
        states (SPI 0, made for an ACQUIRE, no keys) are left out unless ``larval``."""
        if src is not None and dst is not None and src.version != dst.version:
            raise InvalidArgument("dump_states.dst", "mixes address families with src")
        payload = m.nlattr(m.XFRMA_PROTO, bytes([proto])) if proto else b""
        payload += m.address_filter_attr(src, dst)
        out = []
        for data, off, n in self._dump(m.XFRM_MSG_GETSA, payload):
            if not larval and n >= 16 + 224 and m.USERSA_INFO.unpack_from(data, off + 16)[13] == 0:
                continue
            try:
                st = m.decode_newsa(data, off, n)
            except XfrmError as exc:
                # one odd foreign state must not hide the rest; msec's own must decode
                if n >= 16 + 224 and self.owner.owns_reqid(
                        m.USERSA_INFO.unpack_from(data, off + 16)[32]):
                    raise
                log.warning("skipping a state that does not decode: %s", exc)
                continue
            if not owned or self.owner.owns_state(st):
                out.append(st)
        return out

    def dump_sa_counters(self, owned: bool = True) -> list[SaCounters]:
        """Every state's counters (bytes, packets, replay and integrity drops), read from the
        fixed part of each dump reply: no key is decoded; ``owned`` keeps only msec's.
        Larval states are left out, as in :meth:`dump_states`."""
        out = []
        for data, off, n in self._dump(m.XFRM_MSG_GETSA, b""):
            c = m.decode_sa_counters(data, off, n)
            if c.spi == 0 or (owned and not self.owner.owns_reqid(c.reqid)):
                continue
            out.append(c)
        return out

    def dump_policies(self, owned: bool = False) -> list[Policy]:
        """Every SPD policy (``index`` filled in; per-socket policies are left out); ``owned``
        keeps only msec's."""
        out = []
        for data, off, n in self._dump(m.XFRM_MSG_GETPOLICY, b""):
            if m.is_socket_policy(data, off, n):
                continue  # on a socket (e.g. charon's IKE bypass), not in the SPD
            try:
                p = m.decode_newpolicy(data, off, n)
            except XfrmError as exc:
                log.warning("skipping a policy that does not decode: %s", exc)
                continue
            if not owned or self.owner.owns_policy(p):
                out.append(p)
        return out

    def remove_owned(self) -> tuple[int, int]:
        """Delete msec's policies, then msec's states; never anything else. Returns counts."""
        b = self.batch()
        for p in self.dump_policies(owned=True):
            b.delete_policy(p.id, p.index)
        n_pol = len(b)
        for st in self.dump_states(owned=True):
            b.delete_state(st.id)
        self.run(b, ignore=(errno.ENOENT, errno.ESRCH))
        return len(b) - n_pol, n_pol

    # -- batches -----------------------------------------------------------------------------
    def run(self, batch: Batch, ignore: Sequence[int] = ()) -> None:
        """Send every request of ``batch`` and check every ACK.

        On the first chunk with a failure, raises :class:`KernelError` for the first failed
        item (``index`` in the batch) with ``failures`` listing all of that chunk's
        ``(index, errno, extack)``; later chunks are not sent. Errnos in ``ignore`` are not
        failures.
        """
        n = len(batch)
        if not n:
            return
        first = self._next_seq(n)
        pack = m.NLMSGHDR.pack
        step = self._chunk_count
        for start in range(0, n, step):
            kinds, flags, payloads = batch.columns(start, start + step)
            count = len(payloads)
            seq = first + start
            # headers and payloads interleaved and joined once; the per-message work (lengths,
            # headers) is done by map() in C, not by a Python loop
            parts = payloads + payloads
            parts[0::2] = map(pack, map(_PLUS_HDR, map(len, payloads)), kinds, flags,
                              range(seq, seq + count), repeat(0, count))
            parts[1::2] = payloads
            pending = dict(zip(range(seq, seq + count), range(start, start + count)))
            self._send_chunk(b"".join(parts), pending, batch, ignore)

    def send_encoded(self, msgs: Sequence[bytes], ops: Sequence[Op] | None = None,
                     ignore: Sequence[int] = ()) -> None:
        """Send pre-encoded messages (e.g. from :meth:`Batch.encode`) and check their ACKs.

        Each message must have NLM_F_ACK and a distinct sequence number. This is the floor
        that :meth:`run` is measured against: no validation or encoding left to do.
        """
        step = self._chunk_count
        for start in range(0, len(msgs), step):
            chunk = msgs[start:start + step]
            pending = dict(zip(map(_SEQ_OF, map(_SEQ.unpack_from, chunk)),
                               range(start, start + len(chunk))))
            self._send_chunk(b"".join(chunk), pending, ops, ignore)

    def _send_chunk(self, data: bytes, pending: dict[int, int],
                    ops: Sequence[Op] | Batch | None, ignore: Sequence[int]) -> None:
        self._send_all(data)
        failures = self._collect_acks(pending, ignore)
        if failures:
            idx, code, extack = failures[0]
            if isinstance(ops, Batch):
                ops = ops.ops
            op = ops[idx] if ops is not None else None
            exc = kernel_error(op, op.name if op else "send", code, extack, idx)
            exc.failures = failures  # type: ignore[attr-defined]
            raise exc

    def _send_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            # one sendto per netlink skb; split on message boundaries if over the chunk size
            limit = self._chunk_bytes
            if len(view) <= limit:
                self._sock.sendto(view, (0, 0))
                return
            cut = 0
            while cut < len(view):
                n = int.from_bytes(view[cut:cut + 4], "little")
                if cut and cut + n > limit:
                    break
                cut += (n + 3) & ~3
            self._sock.sendto(view[:cut], (0, 0))
            view = view[cut:]

    def _collect_acks(self, pending: dict[int, int],
                      ignore: Sequence[int]) -> list[tuple[int, int, str | None]]:
        failures: list[tuple[int, int, str | None]] = []
        buf = self._buf
        recv_into = self._sock.recv_into
        unpack_ack = _PLAIN_ACK.unpack_from
        pop = pending.pop
        while pending:
            try:
                size = recv_into(buf)
            except OSError as exc:
                # ENOBUFS: ACKs were dropped, so the outcome of some requests is unknown
                raise KernelError("batch", exc.errno or errno.EIO,
                                  f"{len(pending)} ACKs missing ({exc}); re-read the kernel "
                                  "state with a dump") from exc
            if size == 36:  # fast path: one capped, successful ACK per datagram
                _n, kind, _f, seq, _p, err = unpack_ack(buf)
                if kind == m.NLMSG_ERROR and err == 0:
                    pop(seq, None)
                    continue
            view = memoryview(buf)[:size]
            for kind, _flags, seq, off, n in m.split_messages(view):
                if kind != m.NLMSG_ERROR:
                    continue
                idx = pop(seq, None)
                if idx is None:
                    continue
                code, extack = parse_ack(view, off, n)
                if code and code not in ignore:
                    failures.append((idx, code, extack))
        failures.sort()
        return failures

    def _request(self, opname: str, kind: int, payload: bytes):
        seq = self._next_seq()
        self._sock.sendto(m.nlmsg(kind, m.NLM_F_REQUEST, seq, payload), (0, 0))
        while True:
            size = self._sock.recv_into(self._buf)
            data = bytes(self._buf[:size])
            for k, _f, s, off, n in m.split_messages(data):
                if s != seq:
                    continue
                if k == m.NLMSG_ERROR:
                    code, extack = parse_ack(data, off, n)
                    raise KernelError(opname, code or errno.EIO, extack)
                return data, off, n

    def _dump(self, kind: int, payload: bytes):
        """Yield (data, offset, length) of each reply message of a dump request."""
        seq = self._next_seq()
        self._sock.sendto(m.nlmsg(kind, m.NLM_F_REQUEST | m.NLM_F_DUMP, seq, payload), (0, 0))
        while True:
            size = self._sock.recv_into(self._buf)
            data = bytes(self._buf[:size])
            for k, flags, s, off, n in m.split_messages(data):
                if s != seq:
                    continue
                if flags & NLM_F_DUMP_INTR:
                    raise KernelError("dump", errno.EAGAIN, "dump interrupted by a change; retry")
                if k == m.NLMSG_DONE:
                    return
                if k == m.NLMSG_ERROR:
                    code, extack = parse_ack(data, off, n)
                    raise KernelError("dump", code or errno.EIO, extack)
                yield data, off, n
