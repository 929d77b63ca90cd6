"""Requests to the kernel as values, and their encoding to bytes (sans-I/O).

A :class:`Batch` collects operations; :meth:`Batch.encode` turns them into netlink messages,
each with ``NLM_F_REQUEST | NLM_F_ACK`` and its own sequence number. ``XfrmSocket.run`` sends
them, many per ``sendmsg``, and checks one ACK per message. :meth:`Batch.encode` is public so a
benchmark (or a caller that installs the same set repeatedly) can pre-encode and use
``XfrmSocket.send_encoded``.

Validation (structure in the model, algorithms, ownership) happens in the ``add_*``/``update_*``
calls, so nothing invalid is ever encoded.
"""

from __future__ import annotations

import operator
from itertools import repeat
from typing import NamedTuple

from . import messages as m
from .algorithms import AEADS, check_algorithms
from .errors import InvalidArgument
from .model import Direction, Mode, Policy, PolicyId, Proto, SaId, State, Template
from .owner import MSEC, Owner

__all__ = ["Op", "Batch", "encode_op", "check_state_for_install"]

_ACK = m.NLM_F_REQUEST | m.NLM_F_ACK
_ADD = _ACK | m.NLM_F_CREATE | m.NLM_F_EXCL
_WIDTH = 6  # slots per request in Batch._flat: the fields of Op
_PLUS_HDR = (16).__add__  # payload length -> nlmsg_len
_op = tuple.__new__  # Op(...) without NamedTuple.__new__'s Python-level call: _op(Op, (...))
_NEWSA, _UPDSA = m.XFRM_MSG_NEWSA, m.XFRM_MSG_UPDSA
_NEWPOLICY, _UPDPOLICY = m.XFRM_MSG_NEWPOLICY, m.XFRM_MSG_UPDPOLICY
_FAST = m.FAST_IPADDRESS


class Op(NamedTuple):
    """One request: operation name, message type, flags, payload and the item it is about."""

    name: str
    kind: int
    flags: int
    payload: bytes
    item: State | Policy | SaId | PolicyId
    index: int = 0  # policy index for delete-by-index

    def __repr__(self) -> str:  # the payload may hold keys
        return f"Op({self.name}, {self.describe()})"

    def describe(self) -> str:
        it = self.item
        if isinstance(it, (State, Policy)):
            return str(it.id)
        return str(it)


assert len(Op._fields) == _WIDTH


def check_state_for_install(state: State, owner: Owner) -> None:
    if not isinstance(state, State):
        raise InvalidArgument("state", f"must be a State, got {type(state).__name__}")
    if state.proto != Proto.ESP:
        raise InvalidArgument("state.proto", "msec installs ESP states only")
    if state.spi < 256:  # RFC 4303: 1-255 reserved by IANA, 0 never on the wire
        raise InvalidArgument("state.spi", f"must be 256..2**32-1, got {state.spi}")
    check_algorithms(state.aead, state.cipher, state.auth)
    owner.check_state(state)


class _Templates(NamedTuple):
    """What a policy's templates imply, computed once per set of Template objects."""

    templates: tuple[Template, ...]
    owner: Owner
    owned: bool
    optional_tunnel: int  # index + 1 of the first optional non-transport template, or 0
    transport_families: tuple[tuple[int, int], ...]  # (index, family) of transport templates
    attr: bytes  # the encoded XFRMA_TMPL attribute (b"" without templates)


_TEMPLATES: dict[tuple[int, ...], _Templates] = {}


def _templates(templates: tuple[Template, ...], owner: Owner) -> _Templates:
    """Facts about a policy's templates, cached by the identity of the Template objects.

    A group's policies share their Template values, so a batch of thousands validates and
    encodes them once; hashing Templates by value would cost more than encoding them. The
    cache holds the objects, so their ids stay unique while cached.
    """
    key = tuple(map(id, templates))
    hit = _TEMPLATES.get(key)
    if hit is not None and hit.owner is owner and all(
            a is b for a, b in zip(hit.templates, templates)):
        return hit
    opt = next((i + 1 for i, t in enumerate(templates)
                if t.optional and t.mode != Mode.TRANSPORT), 0)
    info = _Templates(templates, owner, any(owner.owns_reqid(t.reqid) for t in templates), opt,
                      tuple((i, t.family) for i, t in enumerate(templates)
                            if t.mode == Mode.TRANSPORT),
                      m.templates_attr(templates) if templates else b"")
    if len(_TEMPLATES) >= 4096:
        _TEMPLATES.clear()
    _TEMPLATES[key] = info
    return info


def _check_policy(policy: Policy, owner: Owner) -> bytes:
    """Refuse what msec does not install; return the encoded templates attribute."""
    if policy.__class__ is not Policy:
        raise InvalidArgument("policy", f"must be a Policy, got {type(policy).__name__}")
    if policy.index:
        raise InvalidArgument("policy.index", "is assigned by the kernel; leave it 0")
    info = _templates(policy.templates, owner)
    if not info.owned:
        owner.check_policy(policy)  # raises, naming the owner's range
    if info.optional_tunnel and policy.direction == Direction.OUT:
        raise InvalidArgument(f"policy.templates[{info.optional_tunnel - 1}].optional",
                              "the kernel refuses optional tunnel templates on outbound "
                              "policies")
    for i, family in info.transport_families:
        if family != policy.selector.family:
            raise InvalidArgument(f"policy.templates[{i}]",
                                  "a transport template must match the selector's family")
    return info.attr


def encode_op(op: Op, seq: int) -> bytes:
    return m.nlmsg(op.kind, op.flags, seq, op.payload)


def _state_payload(state: State, owner: Owner) -> bytes:
    """Check ``state`` as :func:`check_state_for_install` does, and encode it.

    The common shape (an AEAD msec knows, key and ICV lengths allowed, the owner's reqid, no
    selector, classic replay window) is checked inline and packed in one call; anything else
    takes the general checks (which raise) and the general encoder.
    """
    if (state.__class__ is State and _FAST and owner.__class__ is Owner
            and state.proto == _ESP and state.spi >= 256
            and owner.reqid_min <= state.reqid <= owner.reqid_max):
        a = state.aead
        if a is not None and state.cipher is None and state.auth is None:
            rule = AEADS.get(a.name)
            if rule is not None and len(a.key) in rule[0] and a.icv_bits in rule[1]:
                if state.selector is None and not state.esn and state.replay_window <= 32:
                    return m.state_payload_aead(state)
                return m.state_payload(state)
    check_state_for_install(state, owner)
    return m.state_payload(state)


def _policy_payload(policy: Policy, owner: Owner) -> bytes:
    """Check ``policy`` as :func:`_check_policy` does, and encode it.

    The common shape (one tunnel template in the owner's reqid range, not optional on an
    outbound policy) is checked inline and packed in one call; anything else takes the general
    checks (which raise) and the general encoder.
    """
    if policy.__class__ is Policy and _FAST and owner.__class__ is Owner and not policy.index:
        tmpls = policy.templates
        if len(tmpls) == 1:
            t = tmpls[0]
            if (t.mode == _TUNNEL and owner.reqid_min <= t.reqid <= owner.reqid_max
                    and not (t.optional and policy.direction == _OUT)):
                return m.policy_payload_1tmpl(policy, t)
    return m.policy_payload(policy, _check_policy(policy, owner))


_TUNNEL = int(Mode.TUNNEL)
_OUT = int(Direction.OUT)
_ESP = int(Proto.ESP)


class Batch:
    """An ordered list of validated requests.

    The requests are kept flat, :data:`_WIDTH` slots each in :attr:`_flat` (the fields of
    :class:`Op`): adding one allocates no object that the garbage collector tracks, which
    matters when a user builds thousands. :attr:`ops` gives them as :class:`Op` values.
    """

    __slots__ = ("_flat", "_ops", "owner")

    def __init__(self, owner: Owner = MSEC) -> None:
        self._flat: list = []
        self._ops: list[Op] | None = None
        self.owner = owner

    @property
    def ops(self) -> list[Op]:
        """The requests in order, as :class:`Op` values (read-only view, made on demand)."""
        ops, flat = self._ops, self._flat
        if ops is None or len(ops) * _WIDTH != len(flat):
            ops = self._ops = [_op(Op, flat[i:i + _WIDTH]) for i in range(0, len(flat), _WIDTH)]
        return ops

    def __len__(self) -> int:
        return len(self._flat) // _WIDTH

    def columns(self, start: int = 0, stop: int | None = None):
        """(kinds, flags, payloads) of requests ``start:stop``, as lists (for the socket)."""
        flat = self._flat
        a = start * _WIDTH
        b = len(flat) if stop is None else min(len(flat), stop * _WIDTH)
        return flat[a + 1:b:_WIDTH], flat[a + 2:b:_WIDTH], flat[a + 3:b:_WIDTH]

    def add_state(self, state: State) -> Batch:
        self._flat += ("add_state", _NEWSA, _ADD, _state_payload(state, self.owner), state, 0)
        return self

    def update_state(self, state: State) -> Batch:
        """UPDSA: the kernel changes lifetimes, replay and flags; not keys or algorithms."""
        self._flat += ("update_state", _UPDSA, _ACK, _state_payload(state, self.owner), state,
                       0)
        return self

    def delete_state(self, sa: SaId) -> Batch:
        if not isinstance(sa, SaId):
            raise InvalidArgument("sa", f"must be a SaId, got {type(sa).__name__}")
        self._flat += ("delete_state", m.XFRM_MSG_DELSA, _ACK, m.sa_id_payload(sa), sa, 0)
        return self

    def add_policy(self, policy: Policy) -> Batch:
        self._flat += ("add_policy", _NEWPOLICY, _ADD, _policy_payload(policy, self.owner),
                       policy, 0)
        return self

    def update_policy(self, policy: Policy) -> Batch:
        """UPDPOLICY: replace the policy with the same selector/direction/mark, or add it."""
        self._flat += ("update_policy", _UPDPOLICY, _ACK, _policy_payload(policy, self.owner),
                       policy, 0)
        return self

    def delete_policy(self, pid: PolicyId, index: int = 0) -> Batch:
        """Delete by (selector, direction, mark, if_id), or by kernel ``index`` if non-zero."""
        if not isinstance(pid, PolicyId):
            raise InvalidArgument("policy", f"must be a PolicyId, got {type(pid).__name__}")
        self._flat += ("delete_policy", m.XFRM_MSG_DELPOLICY, _ACK,
                       m.policy_id_payload(pid, index), pid, index)
        return self

    def encode(self, first_seq: int = 1) -> list[bytes]:
        """One netlink message per request, numbered from ``first_seq``."""
        kinds, flags, payloads = self.columns()
        seqs = [(first_seq + i) & 0xFFFFFFFF for i in range(len(payloads))]
        return list(map(operator.add, map(m.NLMSGHDR.pack, map(_PLUS_HDR, map(len, payloads)),
                                          kinds, flags, seqs, repeat(0)), payloads))


class SingleOperations:
    """One-message operations as one-item batches, for every port that has ``batch()`` and
    ``run(batch)`` (the kernel socket and the in-memory stand-in): one code path for both."""

    def add_state(self, state: State) -> None:
        self.run(self.batch().add_state(state))

    def update_state(self, state: State) -> None:
        self.run(self.batch().update_state(state))

    def delete_state(self, sa: SaId) -> None:
        self.run(self.batch().delete_state(sa))

    def add_policy(self, policy: Policy) -> None:
        self.run(self.batch().add_policy(policy))

    def update_policy(self, policy: Policy) -> None:
        self.run(self.batch().update_policy(policy))

    def delete_policy(self, pid: PolicyId) -> None:
        self.run(self.batch().delete_policy(pid))
