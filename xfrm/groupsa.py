"""The group SA installer: a group's TEKs, in protocol terms, become kernel states and policies.

Key management calls this module and nothing else in ``xfrm``::

    installer = GroupSaInstaller(XfrmSocket(netns), local=[my_address])
    installer.install(group_id, teks)        # after GROUPKEY-PULL
    installer.rollover(group_id, new_teks)   # after GROUPKEY-PUSH: make before break
    installer.remove(group_id, spis=[old])   # when old TEKs are done with
    groups = installer.adopt()               # on daemon start: what msec left in the kernel
    installer.installed(group_id)            # what the kernel holds for a group, as TEKs

A TEK is anything that is a :class:`TekSpec`: ``gkm.gdoi.GroupTek`` (what GROUPKEY-PULL/PUSH
hand over), or :class:`KernelTek` (what the kernel holds, read back). It has an SPI, a
:class:`policy.model.TrafficSelector`, mode, direction (:class:`policy.model.SaDirection`),
suite name (a key of :data:`policy.suites.ESP_SUITES`, the one table mapping suites to
crypto-API names, key and ICV lengths), ``keymat`` = TEK_ALGORITHM_KEY exactly as on the wire
(AES-GCM: key || salt, which is also what the kernel takes), the integrity key, the lifetime
and a replay window (0 for multi-sender group SAs, RFC 5374 section 3). Nothing is converted
or split on the way: the installer checks each TEK once (:func:`_check_tek`) and maps it to
kernel terms once (:meth:`GroupSaInstaller._plan`). Tunnel mode is installed with address
preservation of source and destination only; a TEK asking for another preservation is refused.

Reading the kernel: every change (:meth:`~GroupSaInstaller.install`,
:meth:`~GroupSaInstaller.send_on`, :meth:`~GroupSaInstaller.remove`) dumps the SAD and SPD
once and returns (or computes) the group's view from that dump and the changes it made.

What is installed, per TEK
    * one ESP state ``(dst = group address, SPI)``; its selector is the TEK's selector, its hard
      lifetime the TEK's lifetime (soft at 90 %), its replay window the TEK's. A state that
      sends has ``oseq_may_wrap`` (group SAs are shared; RFC 5374) and source = this host's
      address (the selector's source if that is one host, else the address of ``local`` in the
      selector's source network). A state that only receives has the selector's source if it is
      one host, else the unspecified address (inbound lookup is by destination and SPI only).
    * sender (SENDER_ONLY, SYMMETRIC): an outbound policy on the selector, template
      ``src = this host, dst = group, spi = the TEK's SPI``. Naming the SPI is what switches the
      sender to a new SA at rollover (the kernel would otherwise pick among same-reqid states by
      add time, with one-second resolution).
    * receiver (RECEIVER_ONLY, SYMMETRIC): an inbound policy on the selector (and a forward one
      with ``forward=True``), template ``src = sender or any, dst = group, spi = 0``, so every
      SPI of the group is accepted during a rollover. One policy serves all TEKs of a selector.
    * Tunnel mode is RFC 5374 address preservation: template addresses are the group's.

Ownership and per-group tagging
    Everything carries a reqid from the binding's owner range (:mod:`xfrm.owner`): states in
    their reqid, policies in their template's reqid. The group's reqid is
    ``owner.reqid(group_id % span)`` where span is the size of the owner's range (65,536 by
    default, so group ids 1..65535 map one to one). The reqid is the only tag: it changes no
    packet matching (a mark would). Group ids that share a slot cannot be used by one installer
    at once (refused with :class:`InvalidArgument`); :meth:`adopt` takes the configured group
    ids to map slots back to ids above the span. Nothing outside the group's reqid is ever
    changed or deleted; an update that would replace a foreign policy is refused.

Direction read back from the kernel (:meth:`installed`, :meth:`adopt`): a state with
``oseq_may_wrap`` sends; it also receives if an inbound policy of the group covers its
selector. So a host holding a sender-only TEK and a receiver-only TEK of the same selector in
one group reads back as symmetric (GDOI gives one member one direction per TEK anyway).

Order and failure: states are added in one batch before any policy changes (make before
break); if the state batch fails, the states it added are deleted again; if the policy batch
fails, the policies it added or replaced are restored, and the states added are deleted.
``remove`` changes policies before it deletes states. Removing a group's outbound policy means
the application's traffic to the group is no longer protected: that is leaving the group.
When the SA an outbound policy names reaches its hard lifetime, the kernel deletes it and the
policy stays: the group's outgoing traffic is dropped (fail closed; the kernel sends ACQUIRE)
until a rollover names a new SPI.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

from policy.model import Mode as TekMode
from policy.model import AddressPreservation, SaDirection, TrafficSelector
from policy.suites import ESP_SUITES, EspSuite

from .batch import Batch
from .errors import InvalidArgument, KernelError
from .model import (
    Address, Aead, Auth, Cipher, Direction, Lifetime, Mode, Policy, Selector, State, Template,
)
from .owner import Owner

__all__ = ["TekSpec", "KernelTek", "XfrmPort", "InstalledGroup", "GroupSaInstaller",
           "DEFAULT_PRIORITY", "suite_of_state"]

DEFAULT_PRIORITY = 1000
"""Priority of msec's policies (lower wins in XFRM); strongSwan's automatic priorities start
far higher, so a group's exact selectors take precedence over broad tunnels."""

_SENDS = (SaDirection.SENDER_ONLY, SaDirection.SYMMETRIC)
_RECEIVES = (SaDirection.RECEIVER_ONLY, SaDirection.SYMMETRIC)
_GONE = (errno.ENOENT, errno.ESRCH)


# --------------------------------------------------------------------------- input

@runtime_checkable
class TekSpec(Protocol):
    """What the installer reads from a TEK: the one hand-off between key management and the
    kernel. ``gkm.gdoi.GroupTek`` (what GROUPKEY-PULL/PUSH hand over) satisfies it, and so does
    :class:`KernelTek` (what :meth:`GroupSaInstaller.installed` reads back).

    ``keymat`` is TEK_ALGORITHM_KEY as the key server sent it (for AES-GCM the key followed by
    the 4-byte salt, RFC 4106 section 8.1: the kernel's ``rfc4106(gcm(aes))`` takes it as is),
    ``auth_key`` TEK_INTEGRITY_KEY (empty for AEAD suites), ``lifetime_s`` the remaining
    lifetime in seconds, ``replay_window`` 0 for multi-sender group SAs (RFC 5374 section 3).
    """

    group_id: int
    spi: int
    selector: TrafficSelector
    mode: TekMode
    address_preservation: AddressPreservation
    direction: SaDirection
    suite: str
    keymat: bytes
    auth_key: bytes
    lifetime_s: int
    replay_window: int


@dataclass(frozen=True, slots=True)
class KernelTek:
    """A TEK as the kernel holds it, read back from one of the group's states (keys included;
    left out of ``repr``). Installable again (it is a :class:`TekSpec`)."""

    group_id: int
    spi: int
    selector: TrafficSelector
    mode: TekMode
    direction: SaDirection
    suite: str
    keymat: bytes = field(repr=False)
    auth_key: bytes = field(default=b"", repr=False)
    lifetime_s: int = 3600
    replay_window: int = 0
    address_preservation: AddressPreservation = AddressPreservation.SOURCE_AND_DESTINATION


def _check_tek(tek: TekSpec, group_id: int, where: str) -> EspSuite:
    """Everything the kernel mapping needs of one TEK, checked before anything changes."""
    if not isinstance(tek, TekSpec):
        raise InvalidArgument(where, f"{type(tek).__name__} is not a TEK (xfrm.groupsa.TekSpec)")
    if tek.group_id != group_id:
        raise InvalidArgument(f"{where}.group_id", f"is {tek.group_id}, installing {group_id}")
    spi = tek.spi
    if not isinstance(spi, int) or not 0x100 <= spi <= 0xFFFFFFFF:
        raise InvalidArgument(f"{where}.spi", f"must be 256..2**32-1 (RFC 4303), got {spi!r}")
    sel = tek.selector
    if not isinstance(sel, TrafficSelector):
        raise InvalidArgument(f"{where}.selector", "must be a policy.model.TrafficSelector")
    if sel.dst.num_addresses != 1:
        raise InvalidArgument(f"{where}.selector.dst", f"{sel.dst} is not one address: the "
                              "kernel SA's destination is the group address")
    if not isinstance(tek.mode, TekMode):
        raise InvalidArgument(f"{where}.mode", "must be a policy.model.Mode")
    if tek.mode is TekMode.TUNNEL \
            and tek.address_preservation != AddressPreservation.SOURCE_AND_DESTINATION:
        raise InvalidArgument(f"{where}.address_preservation",
                              f"{tek.address_preservation!r}: tunnel-mode group SAs are "
                              "installed with source and destination preserved (RFC 5374)")
    if tek.direction not in tuple(SaDirection):
        raise InvalidArgument(f"{where}.direction", "must be a policy.model.SaDirection")
    suite = ESP_SUITES.get(tek.suite)
    if suite is None:
        raise InvalidArgument(f"{where}.suite", f"unknown suite {tek.suite!r}"
                              f" (known: {', '.join(sorted(ESP_SUITES))})")
    if not isinstance(tek.keymat, bytes) or len(tek.keymat) != suite.enc_key_bytes:
        raise InvalidArgument(f"{where}.keymat", f"{suite.name} takes {suite.enc_key_bytes} "
                              f"bytes, got {len(tek.keymat)}")
    if not isinstance(tek.auth_key, bytes) or len(tek.auth_key) != suite.integrity_key_bytes:
        raise InvalidArgument(f"{where}.auth_key", f"{suite.name} takes "
                              f"{suite.integrity_key_bytes} bytes, got {len(tek.auth_key)}")
    life = tek.lifetime_s
    if not isinstance(life, int) or not 0 < life < 2**32:
        raise InvalidArgument(f"{where}.lifetime_s", f"must be 1..2**32-1, got {life!r}")
    window = tek.replay_window
    if not isinstance(window, int) or not 0 <= window <= 4096:
        raise InvalidArgument(f"{where}.replay_window", f"must be 0..4096, got {window!r}")
    return suite


# --------------------------------------------------------------------------- the port

class XfrmPort(Protocol):
    """The narrow kernel port the installer uses: :class:`xfrm.XfrmSocket` or
    :class:`xfrm.memory.MemoryXfrm`."""

    owner: Owner

    def batch(self) -> Batch: ...

    def run(self, batch: Batch, ignore: Sequence[int] = ()) -> None: ...

    def dump_states(self, proto: int | None = None, owned: bool = False,
                    src: object = None, dst: object = None) -> list[State]: ...

    def dump_policies(self, owned: bool = False) -> list[Policy]: ...


# --------------------------------------------------------------------------- output

@dataclass(frozen=True, slots=True)
class InstalledGroup:
    """What the kernel holds for one group.

    ``teks`` are read back from the states (keys included; ``group_id`` is the one the slot
    maps to); ``sending`` maps each outbound selector to the SPI its policy uses now;
    ``states``/``policies`` are the raw kernel objects (a policy added by the change that made
    this view has index 0: the view is computed from the change, not dumped again).
    ``unknown`` are states of the group whose algorithms match no suite (not installed by this
    module).
    """

    group_id: int
    reqid: int
    teks: tuple[KernelTek, ...]
    sending: Mapping[TrafficSelector, int]
    states: tuple[State, ...] = field(repr=False)
    policies: tuple[Policy, ...] = field(repr=False)
    unknown: tuple[State, ...] = field(default=(), repr=False)
    added: frozenset[int] = frozenset()  # SPIs whose states the call that made this view added

    @property
    def spis(self) -> frozenset[int]:
        return frozenset(st.spi for st in self.states)


def suite_of_state(st: State) -> EspSuite | None:
    """The suite of policy/suites.py a state's algorithms and key lengths render, if any."""
    for s in ESP_SUITES.values():
        if s.xfrm_aead is not None:
            a = st.aead
            if (a is not None and a.name == s.xfrm_aead.name
                    and len(a.key) * 8 == s.xfrm_aead.key_bits
                    and a.icv_bits == s.xfrm_aead.icv_bits):
                return s
        elif st.cipher is not None and st.auth is not None and st.aead is None:
            if (st.cipher.name == s.xfrm_enc.name and len(st.cipher.key) * 8 == s.xfrm_enc.key_bits
                    and st.auth.name == s.xfrm_auth.name
                    and len(st.auth.key) * 8 == s.xfrm_auth.key_bits
                    and st.auth.trunc_bits == s.xfrm_auth.icv_bits):
                return s
    return None


def _unspecified(version: int) -> Address:
    return ipaddress.IPv4Address(0) if version == 4 else ipaddress.IPv6Address(0)


def _xfrm_selector(ts: TrafficSelector) -> Selector:
    return Selector(ts.src, ts.dst, ts.protocol, ts.src_port or None, ts.dst_port or None)


def _traffic_selector(sel: Selector) -> TrafficSelector:
    return TrafficSelector(sel.src, sel.dst, sel.proto, sel.sport or 0, sel.dport or 0)


@dataclass(frozen=True, slots=True)
class _Plan:
    states: tuple[State, ...]
    out: dict[Selector, list[Policy]]  # selector -> outbound policy per sending TEK, in order
    inbound: dict[Selector, Policy]  # selector -> inbound policy


# --------------------------------------------------------------------------- installer

class GroupSaInstaller:
    """Installs, rolls over, removes and adopts groups' SAs through an :class:`XfrmPort`.

    ``local`` are this host's addresses; one in a TEK selector's source network is the source
    of the SAs this host sends on when that source is a network (several senders). ``forward``
    adds ``dir fwd`` policies next to inbound ones (a member that routes group traffic on).
    """

    def __init__(self, port: XfrmPort, *, local: Iterable[Address | str] = (),
                 forward: bool = False, priority: int = DEFAULT_PRIORITY) -> None:
        self.port = port
        self.owner: Owner = port.owner
        self.local = tuple(ipaddress.ip_address(a) for a in local)
        self.forward = forward
        self.priority = priority
        self._span = self.owner.reqid_max - self.owner.reqid_min + 1
        self._slots: dict[int, int] = {}  # slot -> group id

    # -- tagging -----------------------------------------------------------------------------
    def reqid(self, group_id: int) -> int:
        """The reqid tagging ``group_id``'s states and policies (see the module doc)."""
        if not isinstance(group_id, int) or isinstance(group_id, bool) \
                or not 0 < group_id <= 0xFFFFFFFF:
            raise InvalidArgument("group_id", f"must be 1..2**32-1, got {group_id!r}")
        slot = group_id % self._span
        known = self._slots.setdefault(slot, group_id)
        if known != group_id:
            raise InvalidArgument("group_id", f"group {group_id} shares reqid slot {slot} with "
                                  f"group {known}; use group ids that differ modulo {self._span}")
        return self.owner.reqid(slot)

    # -- planning (no I/O) -------------------------------------------------------------------
    def _local_for(self, ts: TrafficSelector, where: str) -> Address:
        if ts.src.num_addresses == 1:
            return ts.src.network_address
        for a in self.local:
            if a.version == ts.src.version and a in ts.src:
                return a
        raise InvalidArgument(f"{where}.selector.src", f"this host sends on {ts.src} but none "
                              "of the installer's local addresses is in it")

    def _plan(self, group_id: int, teks: Sequence[TekSpec]) -> _Plan:
        reqid = self.reqid(group_id)
        states: list[State] = []
        out: dict[Selector, list[Policy]] = {}
        inbound: dict[Selector, Policy] = {}
        spis: set[tuple[Address, int]] = set()
        for i, tek in enumerate(teks):
            where = f"teks[{i}]"
            suite = _check_tek(tek, group_id, where)
            ts: TrafficSelector = tek.selector
            sel = _xfrm_selector(ts)
            group = ts.dst.network_address
            mode = Mode.TUNNEL if tek.mode is TekMode.TUNNEL else Mode.TRANSPORT
            sends, receives = tek.direction in _SENDS, tek.direction in _RECEIVES
            peer = (ts.src.network_address if ts.src.num_addresses == 1
                    else _unspecified(ts.src.version))
            src = self._local_for(ts, where) if sends else peer
            if (group, tek.spi) in spis:
                raise InvalidArgument(f"{where}.spi", f"0x{tek.spi:08x} twice for {group}")
            spis.add((group, tek.spi))
            enc, auth = tek.keymat, tek.auth_key
            if suite.aead:
                algs = dict(aead=Aead(suite.xfrm_aead.name, enc, suite.xfrm_aead.icv_bits))
            else:
                algs = dict(cipher=Cipher(suite.xfrm_enc.name, enc),
                            auth=Auth(suite.xfrm_auth.name, auth, suite.xfrm_auth.icv_bits))
            life = tek.lifetime_s
            states.append(State(src, group, tek.spi, mode, reqid, **algs,
                                replay_window=tek.replay_window,
                                oseq_may_wrap=sends, selector=sel,
                                lifetime=Lifetime(soft_add_seconds=(life * 9 // 10) or None,
                                                  hard_add_seconds=life)))
            if sends:
                out.setdefault(sel, []).append(self._out_policy(sel, src, group, mode, reqid,
                                                                tek.spi))
            if receives:
                tmpl = (Template(peer, group, mode, reqid),)
                inbound[sel] = Policy(sel, Direction.IN, priority=self.priority, templates=tmpl)
        return _Plan(tuple(states), out, inbound)

    def _out_policy(self, sel: Selector, src: Address, group: Address, mode: Mode, reqid: int,
                    spi: int) -> Policy:
        return Policy(sel, Direction.OUT, priority=self.priority, templates=(
            Template(src, group, mode, reqid, spi=spi),))

    # -- reading -----------------------------------------------------------------------------
    def _dump(self) -> tuple[list[State], list[Policy]]:
        return self.port.dump_states(owned=True), self.port.dump_policies()

    def _view(self, group_id: int, reqid: int, states: Iterable[State],
              policies: Iterable[Policy]) -> InstalledGroup:
        mine = tuple(sorted((s for s in states if s.reqid == reqid),
                            key=lambda s: (str(s.dst), s.spi)))
        pols = tuple(p for p in policies if self._policy_reqid(p) == reqid)
        recv_sels = {p.selector for p in pols if p.direction == Direction.IN}
        sending = {_traffic_selector(p.selector): p.templates[0].spi
                   for p in pols if p.direction == Direction.OUT and p.templates}
        teks, unknown = [], []
        for st in mine:
            suite = suite_of_state(st)
            if suite is None or st.selector is None:
                unknown.append(st)
                continue
            sends, receives = st.oseq_may_wrap, st.selector in recv_sels
            direction = (SaDirection.SYMMETRIC if sends and receives else
                         SaDirection.SENDER_ONLY if sends else SaDirection.RECEIVER_ONLY)
            if suite.aead:
                enc, auth = st.aead.key, b""
            else:
                enc, auth = st.cipher.key, st.auth.key
            try:
                teks.append(KernelTek(
                    group_id, st.spi, _traffic_selector(st.selector),
                    TekMode.TUNNEL if st.mode == Mode.TUNNEL else TekMode.TRANSPORT, direction,
                    suite.name, enc, auth, st.lifetime.hard_add_seconds or 0, st.replay_window))
            except ValueError:  # not installed by this module
                unknown.append(st)
        return InstalledGroup(group_id, reqid, tuple(teks), sending, mine, pols, tuple(unknown))

    def _policy_reqid(self, p: Policy) -> int | None:
        for t in p.templates:
            if self.owner.owns_reqid(t.reqid):
                return t.reqid
        return None

    def installed(self, group_id: int) -> InstalledGroup:
        """What the kernel holds now for ``group_id`` (expired states are gone from it)."""
        reqid = self.reqid(group_id)
        states, policies = self._dump()
        return self._view(group_id, reqid, states, policies)

    def adopt(self, groups: Iterable[int] = ()) -> dict[int, InstalledGroup]:
        """Find what msec installed earlier (e.g. before a daemon restart), per group, and
        take it over: nothing is removed. ``groups`` are the configured group ids, needed to
        name groups whose id is not below the reqid span; other slots are reported under the
        slot number itself."""
        for g in groups:
            self.reqid(g)
        states, policies = self._dump()
        reqids = {s.reqid for s in states} | {
            r for p in policies if (r := self._policy_reqid(p)) is not None}
        found = {}
        for reqid in sorted(reqids):
            slot = reqid - self.owner.reqid_min
            group_id = self._slots.get(slot, slot)
            if group_id == 0:
                continue  # slot 0 is no group (group ids start at 1)
            self.reqid(group_id)
            found[group_id] = self._view(group_id, reqid, states, policies)
        return found

    # -- changing ----------------------------------------------------------------------------
    def install(self, group_id: int, teks: Sequence[TekSpec], *,
                switch: bool = True) -> InstalledGroup:
        """Install ``teks`` for ``group_id``: states first, then policies.

        Idempotent: TEKs already installed with the same parameters are left alone (so a daemon
        can install again what :meth:`adopt` found, or what a re-registration hands back with a
        shorter remaining lifetime: the kernel's SA keeps counting from when it was added). An
        SPI installed with other parameters is refused: the kernel cannot change an SA's keys,
        and new keys come with a new SPI.
        Outbound: a selector without an outbound policy gets one naming its last listed sending
        TEK. With ``switch`` (the default) a selector's outbound policy moves to the last
        sending TEK *added by this call*; TEKs already installed never move it back. With
        ``switch=False`` new sending TEKs are installed but not used yet (:meth:`send_on`
        switches later), so every member can hold the new SA before any sender uses it.
        The kernel is read once; the returned view (``added``: the SPIs this call added) is
        that dump with the changes applied.
        """
        plan = self._plan(group_id, teks)
        reqid = self.reqid(group_id)
        states, policies = self._dump()
        have = {(s.dst, s.spi): s for s in states}
        new_states = []
        for st in plan.states:
            old = have.get((st.dst, st.spi))
            if old is None:
                new_states.append(st)
            elif _replace_lifetime(old, st.lifetime) != st:
                what = "another group's or another TEK's" if old.reqid != reqid else "other"
                raise InvalidArgument("teks.spi", f"0x{st.spi:08x} to {st.dst} is installed "
                                      f"with {what} parameters; new keys need a new SPI")
        foreign = {p.id: p for p in policies if self._policy_reqid(p) is None}
        mine = {p.id: p for p in policies if self._policy_reqid(p) == reqid}
        ours_other = {p.id: p for p in policies
                      if self._policy_reqid(p) not in (None, reqid)}
        added = {st.spi for st in new_states}
        held = {s.spi for s in states if s.reqid == reqid}
        wanted: list[Policy] = []
        for cands in plan.out.values():
            prev = mine.get(cands[0].id)
            fresh = [p for p in cands if p.templates[0].spi in added]
            if prev is None:
                wanted.append(cands[-1])
            elif fresh and switch:
                wanted.append(fresh[-1])
            elif prev.templates[0].spi not in held | added:  # names an SA that is gone
                wanted.append(cands[-1])
        for p in plan.inbound.values():
            wanted.append(p)
            if self.forward:
                wanted.append(Policy(p.selector, Direction.FWD, priority=p.priority,
                                     templates=p.templates))
        changes: list[tuple[Policy, Policy | None]] = []  # (new, previous of ours or None)
        for p in wanted:
            if p.id in foreign:
                raise InvalidArgument("teks.selector", f"{p.id} belongs to someone else")
            if p.id in ours_other:
                raise InvalidArgument("teks.selector", f"{p.id} belongs to another group")
            prev = mine.get(p.id)
            if prev is None or _without_index(prev) != p:
                changes.append((p, prev))

        self._add_states(reqid, new_states)
        try:
            self._apply_policies(reqid, changes)
        except BaseException:
            self._delete_states(reqid, new_states)
            raise
        return self._after(group_id, reqid, states, policies, new_states, changes)

    def _after(self, group_id: int, reqid: int, states: Sequence[State],
               policies: Sequence[Policy], new_states: Sequence[State],
               changes: Sequence[tuple[Policy, Policy | None]]) -> InstalledGroup:
        """The group's view after a change, from the dump taken before it (no second dump)."""
        replaced = {new.id: (new if prev is None else replace(new, index=prev.index))
                    for new, prev in changes}
        pols = [replaced.pop(p.id, p) for p in policies] + list(replaced.values())
        view = self._view(group_id, reqid, [*states, *new_states], pols)
        return replace(view, added=frozenset(st.spi for st in new_states))

    def rollover(self, group_id: int, new_teks: Sequence[TekSpec], *,
                 switch: bool = True) -> InstalledGroup:
        """Make before break: add the new TEKs' states, then (``switch``) move each outbound
        policy to its new SPI, and add inbound policies for new selectors. Old states stay
        (receivers keep taking packets still in flight under old SPIs) until :meth:`remove` or
        their hard lifetime; the returned view's ``sending`` shows the SPIs now used."""
        return self.install(group_id, new_teks, switch=switch)

    def send_on(self, group_id: int, spi: int) -> InstalledGroup:
        """Switch the outbound policy of the selector of the group's sending TEK ``spi`` to it
        (after ``rollover(..., switch=False)``)."""
        reqid = self.reqid(group_id)
        states, policies = self._dump()
        st = next((s for s in states if s.reqid == reqid and s.spi == spi and s.oseq_may_wrap
                   and s.selector is not None), None)
        if st is None:
            raise InvalidArgument("spi", f"group {group_id} has no sending TEK 0x{spi:08x}")
        pol = self._out_policy(st.selector, st.src, st.dst, st.mode, reqid, spi)
        prev = next((p for p in policies if p.id == pol.id), None)
        if prev is not None and self._policy_reqid(prev) != reqid:
            raise InvalidArgument("spi", f"{pol.id} belongs to someone else")
        changes = [] if prev is not None and _without_index(prev) == pol else [(pol, prev)]
        self._apply_policies(reqid, changes)
        return self._after(group_id, reqid, states, policies, (), changes)

    def remove(self, group_id: int, spis: Iterable[int] | None = None) -> tuple[int, int]:
        """Remove the group's states (all, or those with ``spis``) and the policies left
        without a purpose; returns (states, policies) removed.

        An outbound policy whose SPI goes is switched to a remaining sending state of the
        same selector if there is one, else removed; an inbound/forward policy goes when no
        state of its selector remains. Only the group's own objects are touched.
        """
        reqid = self.reqid(group_id)
        view = self.installed(group_id)
        drop = set(view.spis if spis is None else spis)
        gone = [s for s in view.states if s.spi in drop]
        left = [s for s in view.states if s.spi not in drop]
        b = self.port.batch()
        n_pol = 0
        for p in view.policies:
            if p.direction == Direction.OUT:
                if spis is not None and p.templates[0].spi not in drop:
                    continue
                spare = [s for s in left if s.oseq_may_wrap and s.selector == p.selector]
                if spis is not None and spare:
                    t = p.templates[0]
                    s = spare[-1]
                    b.update_policy(Policy(p.selector, p.direction, p.action, p.priority, (
                        Template(t.src, t.dst, t.mode, reqid, t.proto, s.spi),), p.mark,
                        p.if_id, p.lifetime))
                    continue
            elif spis is not None and any(s.selector == p.selector for s in left):
                continue
            b.delete_policy(p.id, p.index)
            n_pol += 1
        for st in gone:
            b.delete_state(st.id)
        self.port.run(b, ignore=_GONE)
        return len(gone), n_pol

    # -- batches with undo -------------------------------------------------------------------
    def _add_states(self, reqid: int, states: Sequence[State]) -> None:
        if not states:
            return
        b = self.port.batch()
        for st in states:
            b.add_state(st)
        try:
            self.port.run(b)
        except KernelError:
            self._delete_states(reqid, states)
            raise

    def _delete_states(self, reqid: int, states: Sequence[State]) -> None:
        """Delete those of ``states`` that the kernel holds under ``reqid`` (never others)."""
        keys = {(s.dst, s.spi) for s in states}
        b = self.port.batch()
        for st in self.port.dump_states(owned=True):
            if st.reqid == reqid and (st.dst, st.spi) in keys:
                b.delete_state(st.id)
        self.port.run(b, ignore=_GONE)

    def _apply_policies(self, reqid: int, changes: list[tuple[Policy, Policy | None]]) -> None:
        if not changes:
            return
        b = self.port.batch()
        for new, prev in changes:
            if prev is None:
                b.add_policy(new)
            else:
                b.update_policy(new)
        try:
            self.port.run(b)
        except KernelError:
            undo = self.port.batch()
            now = {p.id: p for p in self.port.dump_policies()
                   if self._policy_reqid(p) == reqid}
            for new, prev in changes:
                cur = now.get(new.id)
                if prev is not None:
                    undo.update_policy(_without_index(prev))
                elif cur is not None:
                    undo.delete_policy(cur.id, cur.index)
            self.port.run(undo, ignore=_GONE)
            raise


def _replace_lifetime(st: State, lifetime: Lifetime) -> State:
    return replace(st, lifetime=lifetime)


def _without_index(p: Policy) -> Policy:
    return replace(p, index=0) if p.index else p
