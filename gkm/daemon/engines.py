"""Where msecd gets its engines and its SA installer: the only module that knows how
`gkm.gdoi` and `xfrm.groupsa` are constructed.  Unit tests pass their own factory to
`Daemon` instead.

``EngineFactory``:

* ``keyserver(settings, store, now, admit) -> engine``: a ``KeyServerEngine`` (phase 1
  responder + GROUPKEY-PULL responder) for the key server role, keys persisted in ``store``;
  ``admit(group, identity, phase1_sa) -> reason | None`` refuses members the policy admits
  (deny list, revoked certificate);
* ``member(group, key_server, now, wall_time_offset=0) -> engine``: a started
  ``MemberRegistration`` towards ``key_server`` = (host, port), datagrams queued;
* ``installer() -> installer``: :class:`KernelInstaller` (``xfrm.groupsa`` on an
  ``XfrmSocket`` in the daemon's network namespace) or :class:`NullInstaller` with
  ``--no-kernel``.  The daemon's installer interface: ``install(group_id, teks, switch=True)
  -> "installed" | "rolled over" | "unchanged"``, ``send_on(group_id, spi)``,
  ``remove(group_id, spis=None)``, ``adopt(group_ids) -> {group_id: [spi, ...]}``,
  ``close()``, attribute ``kernel``.

GROUPKEY-PUSH:

* ``rekey(group, store, now) -> RekeyPlan``: new TEKs for ``group`` persisted as current (the
  old ones kept as 'old'), SEQ reserved (durable) and the signed PUSH datagram built;
* ``push_receiver(group, registered) -> engine``: a ``PushReceiver`` from a ``Registered``
  event (KEK, SEQ, LKH path, TEKs).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["EngineFactory", "GdoiFactory", "KernelInstaller", "NullInstaller", "EngineUnavailable",
           "RekeyError", "RekeyPlan", "EvictionPlan", "StartupError", "local_addresses"]


class EngineUnavailable(RuntimeError):
    """This build of msec lacks a component the configuration needs."""


class StartupError(Exception):
    """The daemon cannot start (state dir locked, port in use, ...)."""


class RekeyError(RuntimeError):
    """A rekey cannot be done (no KEK policy, no keys yet); nothing was changed."""


@dataclass(frozen=True)
class RekeyPlan:
    """A GROUPKEY-PUSH ready to send: its SEQ, the new TEK SPIs, the datagram."""

    group_id: int
    seq: int
    spis: tuple[int, ...]
    datagram: bytes

    def __repr__(self) -> str:
        return f"RekeyPlan(group={self.group_id}, seq={self.seq}, spis={self.spis})"


@dataclass(frozen=True)
class EvictionPlan:
    """An eviction, durable in the store: who left, who was only put on the deny list (not
    registered), and the GROUPKEY-PUSH datagrams to send, in order (SEQ, datagram)."""

    group_id: int
    evicted: tuple[str, ...]
    not_members: tuple[str, ...]
    pushes: tuple[tuple[int, bytes], ...]
    spis: tuple[int, ...]

    def __repr__(self) -> str:
        return (f"EvictionPlan(group={self.group_id}, evicted={self.evicted}, "
                f"seqs={tuple(s for s, _ in self.pushes)}, spis={self.spis})")


class EngineFactory(Protocol):
    def keyserver(self, settings: Any, store: Any, now: float, admit: Any = None) -> Any: ...
    def update_keyserver_groups(self, engine: Any, groups: Any) -> bool: ...
    def member(self, group: Any, key_server: tuple[str, int], now: float, *,
               wall_time_offset: float = 0.0) -> Any: ...
    def rekey(self, group: Any, store: Any, now: float) -> "RekeyPlan": ...
    def evict(self, group: Any, store: Any, identities: Any, reason: str,
              now: float) -> "EvictionPlan": ...
    def push_receiver(self, group: Any, registered: Any) -> Any: ...
    def installer(self) -> Any: ...


class NullInstaller:
    """``--no-kernel``: remembers what would be installed and touches no kernel state."""

    kernel = False

    def __init__(self) -> None:
        self._groups: dict[int, frozenset[int]] = {}

    def install(self, group_id: int, teks, *, switch: bool = True) -> str:
        spis = frozenset(t.spi for t in teks)
        have = self._groups.get(group_id, frozenset())
        self._groups[group_id] = have | spis
        return "unchanged" if spis <= have else ("rolled over" if have else "installed")

    def send_on(self, group_id: int, spi: int) -> None:
        if spi not in self._groups.get(group_id, frozenset()):
            raise ValueError(f"group {group_id} has no TEK 0x{spi:08x}")

    def remove(self, group_id: int, spis=None) -> None:
        if spis is None:
            self._groups.pop(group_id, None)
        elif group_id in self._groups:
            self._groups[group_id] = self._groups[group_id] - frozenset(spis)

    def adopt(self, group_ids=()) -> dict[int, list[int]]:
        return {}

    def close(self) -> None:
        pass


def local_addresses() -> list[str]:
    """This network namespace's unicast addresses (``ip -j addr``), for the installer to pick
    a sender's source address inside a TEK's source network."""
    try:
        out = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True,
                             timeout=10, check=True).stdout
        links = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError):
        return []
    addrs = []
    for link in links:
        for a in link.get("addr_info", []):
            if a.get("family") in ("inet", "inet6") and a.get("scope") != "link" \
                    and "local" in a:
                addrs.append(a["local"])
    return addrs


class KernelInstaller:
    """msecd's use of ``xfrm.groupsa.GroupSaInstaller`` on an ``XfrmSocket`` in the daemon's
    network namespace: msec's states and policies carry msec's reqid range (``xfrm.owner``).

    gkm.gdoi's ``GroupTek`` is an ``xfrm.groupsa.TekSpec`` and goes to the installer as it is
    (TEK_ALGORITHM_KEY whole, replay window 0: multicast group SAs are shared by several
    senders, RFC 5374 section 3).  Every call reads the kernel once.  SPIs already in the
    kernel are left alone (an SA's parameters cannot change); new SPIs are added make before
    break.
    """

    kernel = True

    def __init__(self, netns=None) -> None:
        try:
            from xfrm.groupsa import GroupSaInstaller
        except ImportError as e:  # pragma: no cover
            raise EngineUnavailable(f"xfrm.groupsa is not available: {e}") from None
        from xfrm import XfrmSocket

        self.port = XfrmSocket(netns)
        self.sa = GroupSaInstaller(self.port, local=local_addresses())

    def install(self, group_id: int, teks, *, switch: bool = True) -> str:
        view = self.sa.install(group_id, teks, switch=switch)
        if not view.added:
            return "unchanged"
        return "rolled over" if view.spis - view.added else "installed"

    def send_on(self, group_id: int, spi: int) -> None:
        self.sa.send_on(group_id, spi)

    def remove(self, group_id: int, spis=None) -> None:
        self.sa.remove(group_id, spis)

    def adopt(self, group_ids=()) -> dict[int, list[int]]:
        return {g: sorted(v.spis) for g, v in self.sa.adopt(group_ids).items()}

    def close(self) -> None:
        self.port.close()


class GdoiFactory:
    """The real engines (gkm.gdoi) and installer (xfrm.groupsa)."""

    def __init__(self, *, kernel: bool = True, netns=None) -> None:
        self.kernel = kernel
        self.netns = netns
        self.provider = None  # the key server role's keys provider, once made

    @staticmethod
    def _gdoi():
        try:
            import gkm.gdoi as gdoi
        except ImportError as e:  # pragma: no cover - depends on the build
            raise EngineUnavailable(f"gkm.gdoi is not available: {e}") from None
        return gdoi

    def keyserver(self, settings, store, now: float, admit=None):
        """``admit(group, identity, phase1_sa) -> reason | None``: the shell's own refusals
        (deny list, revoked certificate) after the group policy admitted a member."""
        gdoi = self._gdoi()
        # LKH for every group with a KEK: evicting a member costs O(log n) keys
        provider = gdoi.StoreKeysProvider(store, lkh=True)
        self.provider = provider  # the key server role's (one per daemon): rekey invalidates it
        phase1 = gdoi.phase1_config(settings)
        return gdoi.KeyServerEngine(settings.groups, provider, phase1, admit=admit)

    def update_keyserver_groups(self, engine, groups) -> bool:
        """Give a running key server engine new group policies; False if it cannot."""
        engine.update_groups(groups)
        return True

    def member(self, group, key_server: tuple[str, int], now: float, *,
               wall_time_offset: float = 0.0):
        """``now`` on the member engine's (monotonic) clock; ``wall_time_offset`` turns it into
        Unix time for certificate validity."""
        gdoi = self._gdoi()
        phase1 = gdoi.phase1_config(group, key_server=key_server,
                                    wall_time_offset=wall_time_offset)
        engine = gdoi.MemberRegistration(phase1, group.group_id, key_server,
                                         authorize_key_server=group.accepts_key_server)
        engine.start(now)
        return engine

    def rekey(self, group, store, now: float) -> RekeyPlan:
        """New TEKs for every TEK policy of ``group``: persisted as current (the previous ones
        become 'old', kept until their lifetime ends), then SEQ (``store.next_seq``, durable),
        then the signed, KEK-encrypted GROUPKEY-PUSH.  The keys provider's cache is dropped so
        registrations hand out the new TEKs."""
        from cryptography.hazmat.primitives import serialization

        from gkm.gdoi.keys import new_tek_keymat, random_spi
        from gkm.gdoi.provider import KekKeys, TekKeys, load_signing_public_key, tek_label
        from gkm.store import KeyState

        gdoi = self._gdoi()
        gid = group.group_id
        now = int(now)
        if group.kek is None:
            raise RekeyError(f"group {gid} has no KEK policy ([keyserver.group.kek]): "
                             "no GROUPKEY-PUSH")
        k = store.current_kek(gid) if store.group(gid) is not None else None
        if k is None or k.algorithm != group.kek.cipher.name:
            raise RekeyError(f"group {gid} has no keys yet: no member has registered")
        try:
            signing = serialization.load_pem_private_key(
                open(group.kek.signing_key, "rb").read(), password=None)
            pub = load_signing_public_key(group.kek.signing_key)
        except (OSError, ValueError) as e:
            raise RekeyError(f"group {gid}: cannot load the PUSH signing key: {e}") from None
        kek = KekKeys(k.spi, k.algorithm, k.key, k.expires, pub)
        taken = {t.spi for g in store.groups() for t in store.teks(g.group_id)}
        teks = []
        for tp in group.teks:
            spi = random_spi(lambda s: s in taken, os.urandom)
            taken.add(spi)
            enc, auth = new_tek_keymat(tp.suite, os.urandom)
            teks.append(TekKeys(tp.name, spi, tp.suite.name, enc, auth, now + tp.lifetime_s))
        with store.transaction():
            for tk in teks:
                store.add_tek(gid, tk.spi, tek_label(tk.name, tk.suite), tk.enc_keymat,
                              auth_key=tk.auth_key or None, created=now, expires=tk.expires,
                              state=KeyState.NEXT)
            store.rotate_teks(gid)
        if self.provider is not None:
            self.provider.invalidate(gid)
        seq = store.next_seq(gid)  # committed and fsync'ed before the PUSH exists
        data = gdoi.build_push(group, kek=kek, signing_key=signing, seq=seq, new_teks=teks,
                               now=now)
        return RekeyPlan(gid, seq, tuple(t.spi for t in teks), data)

    def evict(self, group, store, identities, reason: str, now: float) -> "EvictionPlan":
        """Evict registered members (store keys ``kind:value``) from ``group`` and put every
        named identity on the deny list.  With the group's LKH tree (RFC 2627, RFC 6407
        section 4.4) GROUPKEY-PUSH datagrams, in this order: (1) under the current KEK, the
        LKH update and the new KEK's SA (its key derived from the new tree root, which the
        evicted members cannot compute), in parts with consecutive SEQs when one datagram of
        ``kek.max_push_size`` bytes cannot hold it (``gdoi.lkh_update_parts``); (2) under the new KEK (SEQ 1), new TEKs for every
        TEK policy and the deletion of the old ones.  The evicted members can read (1) but
        learn neither the new KEK nor anything in (2).  Members registered without an LKH
        leaf (no tree): one PUSH deleting the KEK and every TEK, so every member registers
        again and the evicted ones are refused.  Everything is durable (one transaction, SEQs
        reserved with ``store.next_seq``) before a datagram exists."""
        from cryptography.hazmat.primitives import serialization

        from gkm.gdoi.keys import new_tek_keymat, random_spi
        from gkm.gdoi.provider import KekKeys, TekKeys, load_signing_public_key, tek_label
        from gkm.gdoi.push import lkh_kek_keymat
        from gkm.store import KeyState

        gdoi = self._gdoi()
        gid = group.group_id
        now = int(now)
        members = {m.identity: m for m in store.members(gid)} if store.group(gid) else {}
        gone = [i for i in identities if i in members]
        with store.transaction():
            for i in identities:
                store.deny(gid, i, at=now, reason=reason)
        if not gone:
            return EvictionPlan(gid, (), tuple(identities), (), ())
        k = store.current_kek(gid) if group.kek is not None else None
        if k is None:
            # no Rekey SA: nothing can be pushed; the members leave the store (and are refused
            # from now on), but keep the current TEKs until they expire
            with store.transaction():
                store.remove_members(gid, gone)
            if self.provider is not None:
                self.provider.invalidate(gid)
            return EvictionPlan(gid, tuple(gone), tuple(i for i in identities if i not in gone),
                                (), ())
        try:
            signing = serialization.load_pem_private_key(
                open(group.kek.signing_key, "rb").read(), password=None)
            pub = load_signing_public_key(group.kek.signing_key)
        except (OSError, ValueError) as e:
            raise RekeyError(f"group {gid}: cannot load the PUSH signing key: {e}") from None
        old_kek = KekKeys(k.spi, k.algorithm, k.key, k.expires, pub)
        old_spis = [t.spi for t in store.teks(gid) if t.state is not KeyState.OLD]
        tree = store.load_lkh(gid)
        with_leaf = [i for i in gone if members[i].leaf is not None]
        if tree is None or len(with_leaf) != len(gone):
            seq = store.next_seq(gid)
            with store.transaction():
                store.remove_members(gid, gone)
                for t in store.teks(gid):
                    if t.state is not KeyState.OLD:
                        store.set_tek_state(gid, t.spi, KeyState.OLD)
                store.delete_kek(gid, k.spi)
                if tree is not None:
                    store.delete_lkh(gid)
            if self.provider is not None:
                self.provider.invalidate(gid)
            data = gdoi.build_push(group, kek=old_kek, signing_key=signing, seq=seq,
                                   deletes=[0], delete_kek=True, now=now)
            return EvictionPlan(gid, tuple(gone), tuple(i for i in identities if i not in gone),
                                ((seq, data),), ())
        update = tree.evict(gone)
        _, root_key = tree.group_key()
        spi = os.urandom(16)
        while not any(spi[:8]) or not any(spi[8:]) or spi == k.spi:
            spi = os.urandom(16)
        new_kek = KekKeys(spi, group.kek.cipher.name,
                          lkh_kek_keymat(root_key, spi, group.kek.cipher.name),
                          now + group.kek.lifetime_s, pub)
        taken = {t.spi for g in store.groups() for t in store.teks(g.group_id)}
        teks = []
        for tp in group.teks:
            tspi = random_spi(lambda x: x in taken, os.urandom)
            taken.add(tspi)
            enc, auth = new_tek_keymat(tp.suite, os.urandom)
            teks.append(TekKeys(tp.name, tspi, tp.suite.name, enc, auth, now + tp.lifetime_s))
        # an update too large for one datagram (kek.max_push_size) goes out in parts
        parts = gdoi.lkh_update_parts(group, update, kek=old_kek, new_kek=new_kek,
                                      signing_key=signing, now=now)
        seqs = [store.next_seq(gid) for _ in parts]  # under the current KEK, durable, consecutive
        with store.transaction():
            store.remove_members(gid, gone)
            store.save_lkh(gid, tree)
            store.add_kek(gid, new_kek.spi, new_kek.cipher, new_kek.keymat, created=now,
                          expires=new_kek.expires, state=KeyState.NEXT)
            store.activate_kek(gid, new_kek.spi)
            for tk in teks:
                store.add_tek(gid, tk.spi, tek_label(tk.name, tk.suite), tk.enc_keymat,
                              auth_key=tk.auth_key or None, created=now, expires=tk.expires,
                              state=KeyState.NEXT)
            store.rotate_teks(gid)
        if self.provider is not None:
            self.provider.invalidate(gid)
        seq2 = store.next_seq(gid)  # 1: the first PUSH under the new KEK
        lkh_pushes = tuple(
            (seq, gdoi.build_push(group, kek=old_kek, signing_key=signing, seq=seq,
                                  new_kek=new_kek, lkh_update=part, lkh_root_key=root_key,
                                  lkh_part=(i, len(parts)), now=now))
            for i, (seq, part) in enumerate(zip(seqs, parts), 1))
        tek_push = gdoi.build_push(group, kek=new_kek, signing_key=signing, seq=seq2,
                                   new_teks=teks, deletes=old_spis, now=now)
        return EvictionPlan(gid, tuple(gone), tuple(i for i in identities if i not in gone),
                            (*lkh_pushes, (seq2, tek_push)), tuple(t.spi for t in teks))

    def push_receiver(self, group, registered):
        gdoi = self._gdoi()
        return gdoi.PushReceiver(group.group_id, registered.kek, registered.lkh,
                                 registered.seq or 0, teks=registered.teks)

    def installer(self):
        return KernelInstaller(self.netns) if self.kernel else NullInstaller()
