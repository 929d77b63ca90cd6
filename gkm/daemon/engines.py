"""Where msecd gets its engines and its SA installer: the only module that knows how
`gkm.gdoi` and `xfrm.groupsa` are constructed.  Unit tests pass their own factory to
`Daemon` instead.

``EngineFactory``:

* ``keyserver(settings, store, now, admit) -> engine``: a ``KeyServerEngine`` (phase 1
  responder + GROUPKEY-PULL responder) for the key server role, keys persisted in ``store``;
  ``admit(group, identity, phase1_sa) -> reason | None`` refuses members the policy admits
  (deny list, revoked certificate).  When a group lists ``g-ikev2`` in ``protocols``, behind
  a ``gkm.ikev2.gcks.ProtocolDemux``: IKEv2 datagrams on the same sockets go to a
  ``GcksEngine`` (G-IKEv2) over the same keys provider (GDOI-only configurations get the
  ``KeyServerEngine`` alone, as before: no IKEv2 exchange is answered);
* ``member(group, key_server, now, wall_time_offset=0) -> engine``: a started
  ``MemberRegistration`` towards ``key_server`` = (host, port), datagrams queued; with the
  group's ``protocol = "g-ikev2"`` a started ``gkm.ikev2.member_registration.GikeRegistration``
  (the same interface);
* ``installer() -> installer``: :class:`KernelInstaller` (``xfrm.groupsa`` on an
  ``XfrmSocket`` in the daemon's network namespace) or :class:`NullInstaller` with
  ``--no-kernel``.  The daemon's installer interface: ``install(group_id, teks, switch=True)
  -> "installed" | "rolled over" | "unchanged"``, ``send_on(group_id, spi)``,
  ``remove(group_id, spis=None)``, ``adopt(group_ids) -> {group_id: [spi, ...]}``,
  ``close()``, attribute ``kernel``.

GROUPKEY-PUSH (the business logic is the key server's group controllers, ``gkm.group``):

* ``push_signer(group) -> Signer | None``: the group's PUSH signing key, loaded (RekeyError);
* ``group_controller(group, state, now, signer=, signer_error=)``: a ``gkm.group.GroupController``;
* ``keys_changed(engine, group_id)``: a controller's commit changed the group's keys;
* ``push_receiver(group, registered) -> engine``: a ``PushReceiver`` from a ``Registered``
  event (KEK, SEQ, LKH path, TEKs).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["EngineFactory", "GdoiFactory", "KernelInstaller", "NullInstaller", "EngineUnavailable",
           "RekeyError", "StartupError", "local_addresses"]


class EngineUnavailable(RuntimeError):
    """This build of msec lacks a component the configuration needs."""


class StartupError(Exception):
    """The daemon cannot start (state dir locked, port in use, ...)."""


class RekeyError(RuntimeError):
    """A rekey cannot be done (no KEK policy, no keys yet, no signing key); nothing changed."""


class EngineFactory(Protocol):
    def keyserver(self, settings: Any, store: Any, now: float, admit: Any = None) -> Any: ...
    def update_keyserver_groups(self, engine: Any, groups: Any) -> bool: ...
    def member(self, group: Any, key_server: tuple[str, int], now: float, *,
               wall_time_offset: float = 0.0, local: tuple[str, int] | None = None) -> Any: ...
    def push_signer(self, group: Any) -> Any: ...
    def group_controller(self, group: Any, state: Any, now: float, *, signer: Any = None,
                         signer_error: str | None = None) -> Any: ...
    def keys_changed(self, engine: Any, group_id: int) -> None: ...
    def push_receiver(self, group: Any, registered: Any) -> Any: ...
    def installer(self) -> Any: ...


@dataclass(frozen=True)
class _GikePeer:
    """What the key server's ``admit`` hook reads of a GDOI phase 1 SA, for a G-IKEv2 member:
    the certificate its GSA_AUTH was signed with (None with a PSK)."""

    peer_certificate: Any = None


def _serves_g_ikev2(groups) -> bool:
    from gkm.ikev2.gcks import serves_g_ikev2
    return any(serves_g_ikev2(g) for g in groups)


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

        self.netns = netns
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

    def reqid(self, group_id: int) -> int:
        """The reqid tagging ``group_id``'s states (``xfrm.groupsa``)."""
        return self.sa.reqid(group_id)

    def views(self, group_ids) -> dict:
        """What the kernel holds for each group (``xfrm.groupsa.InstalledGroup``), read now."""
        return {g: self.sa.installed(g) for g in group_ids}

    def read_counters(self):
        """The counters of msec's states (``xfrm.SaCounters``), read through a netlink socket
        of its own: callable from another thread than the installer's (the metrics scrape)."""
        from xfrm import XfrmSocket

        with XfrmSocket(self.netns, owner=self.port.owner) as s:
            return s.dump_sa_counters(owned=True)

    def close(self) -> None:
        self.port.close()


class GdoiFactory:
    """The real engines (gkm.gdoi) and installer (xfrm.groupsa)."""

    def __init__(self, *, kernel: bool = True, netns=None) -> None:
        self.kernel = kernel
        self.netns = netns
        self.provider = None  # the key server role's keys provider, once made
        #: the key server's rekey source (address, 848) for G-IKEv2's Rekey SA selectors, once
        #: the key server engine is made: registration and the group controllers' GSA_REKEY
        self.rekey_source: tuple[str, int] | None = None

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
        lid = phase1.local_id  # the rekey source as GDOI's engine has it (SA KEK SRC ID)
        self.rekey_source = (str(ipaddress.ip_address(lid.data)), 848) \
            if lid is not None and lid.type in (1, 5) else None
        engine = gdoi.KeyServerEngine(settings.groups, provider, phase1, admit=admit)
        if not _serves_g_ikev2(settings.groups):
            return engine  # GDOI only: exactly the engine of before, IKEv2 datagrams dropped
        return self._dual(engine, settings, provider, phase1, admit, self.rekey_source)

    @staticmethod
    def _dual(gdoi_engine, settings, provider, phase1, admit, source):
        """The GDOI engine and a G-IKEv2 GCKS over the same keys provider behind one socket."""
        from gkm.ikev2 import gcks, profile
        from gkm.ikev2.gcks_registration import gcks_auth_config

        auth = gcks_auth_config(settings, rekey_source=source,
                                wall_time_offset=phase1.wall_time_offset)

        def admit_ikev2(group, identity, certificate):
            # the shell's admit checks the certificate against the CRLs and remembers it (a
            # reload's new CRL then evicts its owner), as for a GDOI member's phase 1 SA
            return admit(group, identity, _GikePeer(certificate)) if admit is not None else None

        # N(USE_PPK) when the key server has PPKs (RFC 8784): the group is only known at GSA_AUTH
        g_ikev2 = gcks.GcksEngine(profile.sa_init_config(ppk=bool(settings.ppks)), auth, settings.groups, provider,
                                  admit=admit_ikev2)
        return gcks.ProtocolDemux(gdoi_engine, g_ikev2)

    def update_keyserver_groups(self, engine, groups) -> bool:
        """Give a running key server engine new group policies; False if it cannot (G-IKEv2
        served before and not now, or the other way round: a new engine is needed)."""
        from gkm.ikev2.gcks import ProtocolDemux
        if isinstance(engine, ProtocolDemux) != _serves_g_ikev2(groups):
            return False
        engine.update_groups(groups)
        return True

    def member(self, group, key_server: tuple[str, int], now: float, *,
               wall_time_offset: float = 0.0, report_phase1: bool = False,
               local: tuple[str, int] | None = None):
        """``now`` on the member engine's (monotonic) clock; ``wall_time_offset`` turns it into
        Unix time for certificate validity; ``report_phase1``: the engine passes the phase 1 SA
        on as an event (for the key log); ``local``: a G-IKEv2 member's address and port
        toward the key server (NAT detection)."""
        if group.protocol == "g-ikev2":
            from gkm.ikev2.member_registration import GikeRegistration
            engine = GikeRegistration(group, key_server, wall_time_offset=wall_time_offset, local=local)
            engine.start(now)
            return engine
        gdoi = self._gdoi()
        phase1 = gdoi.phase1_config(group, key_server=key_server,
                                    wall_time_offset=wall_time_offset)
        engine = gdoi.MemberRegistration(phase1, group.group_id, key_server,
                                         authorize_key_server=group.accepts_key_server,
                                         report_phase1=report_phase1)
        engine.start(now)
        return engine

    def push_signer(self, group):
        """The group's PUSH signing key (``kek.signing_key`` read and parsed here, not in the
        controller), or None without a KEK; RekeyError if it cannot be loaded."""
        if group.kek is None:
            return None
        from cryptography.hazmat.primitives import serialization

        from gkm.gdoi.provider import load_signing_public_key
        from gkm.group import Signer
        try:
            with open(group.kek.signing_key, "rb") as f:
                private = serialization.load_pem_private_key(f.read(), password=None)
            return Signer(private, load_signing_public_key(group.kek.signing_key))
        except (OSError, ValueError, TypeError) as e:
            raise RekeyError(f"group {group.group_id}: cannot load the PUSH signing key: "
                             f"{e}") from None

    def group_controller(self, group, state, now: float, *, signer=None, signer_error=None):
        """The group's controller (gkm.group) over ``state`` (gkm.group.storage.load_state)."""
        from gkm.group import GroupController
        return GroupController(group, state, now=now, signer=signer, signer_error=signer_error,
                               rekey_source=self.rekey_source)

    def keys_changed(self, engine, group_id: int) -> None:
        """A group controller changed the group's keys or tree in the store: the keys
        provider's cache of that group is dropped, so registrations hand out the new keys."""
        if self.provider is not None:
            self.provider.invalidate(group_id)

    def push_receiver(self, group, registered):
        """GROUPKEY-PUSH for a GDOI registration, GSA_REKEY for a G-IKEv2 one, GSA_INBAND_REKEY
        for a G-IKEv2 one without a Rekey SA (same interface); GDOI's or GSA_REKEY's from a
        saved state for a resumed member (``ResumedRegistration``)."""
        from gkm.gdoi.member import ResumedRegistration
        from gkm.gdoi.member_state import GikeRekeyState
        from gkm.ikev2.events import GikeRegistered
        from gkm.ikev2.member_inband import InbandReceiver
        from gkm.ikev2.member_rekey import GikePushReceiver
        match registered:
            case GikeRegistered() if registered.gsa.ike is not None:  # no Rekey SA: in band
                return InbandReceiver(group, registered.gsa)
            case GikeRegistered():
                return GikePushReceiver(group, registered.gsa)
            case ResumedRegistration(gike=GikeRekeyState() as saved):  # a restarted G-IKEv2 member
                return GikePushReceiver.resumed(group, registered.kek, saved)
        gdoi = self._gdoi()
        return gdoi.PushReceiver(group.group_id, registered.kek, registered.lkh,
                                 registered.seq or 0, teks=registered.teks)

    def installer(self):
        return KernelInstaller(self.netns) if self.kernel else NullInstaller()
