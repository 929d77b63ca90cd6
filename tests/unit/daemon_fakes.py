"""Tiny fake engines and installer for the daemon's unit tests (they emit the real event
classes) (the real gkm.gdoi engines are
exercised by the host and kernel tiers).  Same shape as the real ones: sans-I/O,
``receive_datagram(data, addr, now)``, ``handle_timer(now)``, pulled outputs."""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
from pathlib import Path

from gkm.gdoi.events import MemberRefused, MemberRegistered, Registered, RegistrationFailed
from gkm.gdoi.keys import GroupTek
from gkm.daemon.engines import RekeyError
from policy.model import AddressPreservation, IdKind, Identity, Mode, SaDirection, TrafficSelector

GM1 = Identity(IdKind.KEY_ID, "gm1")  # the identity FakeKeyServer's events carry


def fake_tek(group_id: int, spi: int, lifetime_s: int = 3600) -> GroupTek:
    """A real gkm.gdoi TEK (AES-GCM-128, tunnel mode) with a throwaway key."""
    sel = TrafficSelector(ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("239.1.1.1/32"),
                          17, 0, 5000)
    return GroupTek(group_id, spi, sel, Mode.TUNNEL, AddressPreservation.SOURCE_AND_DESTINATION,
                    SaDirection.SYMMETRIC, "aes-gcm-128", b"\x11" * 16 + b"\x22" * 4, b"",
                    lifetime_s)


class FakeMember:
    """Sends b"PULL <gid>" (retransmitted every `rto` s), waits for b"OK <spi>" / b"NO why"."""

    def __init__(self, group, ks, now, rto=0.05, tries=3, lifetime=3600):
        self.group_id = group.group_id
        self.ks = ks
        self.rto = rto
        self.tries = tries
        self.lifetime = lifetime
        self._out = [(b"PULL %d" % self.group_id, ks)]
        self._events = []
        self._timer = now + rto
        self.done = False

    def receive_datagram(self, data, addr, now):
        if self.done:
            return
        word, _, rest = data.partition(b" ")
        self.done = True
        self._timer = None
        if word == b"OK":
            tek = fake_tek(self.group_id, int(rest), self.lifetime)
            self._events.append(Registered(self.group_id, (tek,), None, None, None, self.ks))
        else:
            self._events.append(RegistrationFailed(self.group_id, rest.decode()))

    def handle_timer(self, now):
        if self._timer is None or now < self._timer:
            return
        self.tries -= 1
        if self.tries <= 0:
            self.done = True
            self._timer = None
            self._events.append(RegistrationFailed(self.group_id, "no answer from key server"))
        else:
            self._out.append((b"PULL %d" % self.group_id, self.ks))
            self._timer = now + self.rto

    def datagrams_to_send(self):
        out, self._out = self._out, []
        return out

    def next_event(self):
        return self._events.pop(0) if self._events else None

    def get_timer(self):
        return self._timer


class FakeKeyServer:
    """Answers b"PULL <gid>" with b"OK <spi>" for configured groups, b"NO ..." otherwise."""

    def __init__(self, settings, store, now):
        self.settings = settings
        self.store = store
        self._out = []
        self._events = []
        self.refuse = set()
        self.half_open = 0  # what KeyServerEngine.half_open says (no phase 1 here)

    def receive_datagram(self, data, addr, now):
        word, _, rest = data.partition(b" ")
        if word != b"PULL":
            return
        gid = int(rest)
        if self.settings.group(gid) is None or gid in self.refuse:
            self._out.append((b"NO not authorized", addr))
            self._events.append(MemberRefused(gid, GM1, addr, "not authorized",
                                              cause="not_authorized"))
            return
        if self.store.group(gid) is None:
            self.store.add_group(gid, b"digest")
        if not self.store.teks(gid):
            self.store.add_tek(gid, 0x1234, "aes-gcm-128", os.urandom(20), created=int(now),
                               expires=int(now) + 3600, state="current")
        if self.store.member(gid, "gm1") is None:
            self.store.add_member(gid, "gm1", addr[0], registered_at=int(now))
        spi = self.store.teks(gid)[0].spi
        self._out.append((b"OK %d" % spi, addr))
        self._events.append(MemberRegistered(gid, GM1, addr))

    def handle_timer(self, now):
        pass

    def commit(self, now):
        pass  # it records its members at once

    def datagrams_to_send(self):
        out, self._out = self._out, []
        return out

    def next_event(self):
        return self._events.pop(0) if self._events else None

    def get_timer(self):
        return None


class RecordingInstaller:
    kernel = True

    def __init__(self, fail: Exception | None = None, adopted=None):
        self.calls = []
        self.fail = fail
        self._groups = {g: set(v) for g, v in (adopted or {}).items()}

    def install(self, group_id, teks, switch=True):
        self.calls.append(("install", group_id, tuple(teks)))
        if self.fail:
            raise self.fail
        have = self._groups.setdefault(group_id, set())
        new = {t.spi for t in teks} - have
        action = "unchanged" if not new else ("rolled over" if have else "installed")
        have |= new
        return action

    def send_on(self, group_id, spi):
        self.calls.append(("send_on", group_id, spi))

    def remove(self, group_id, spis=None):
        if spis is None:
            self.calls.append(("remove", group_id))
            self._groups.pop(group_id, None)
        else:
            self.calls.append(("remove", group_id, tuple(spis)))
            self._groups.get(group_id, set()).difference_update(spis)

    def adopt(self, group_ids=()):
        self.calls.append(("adopt", tuple(group_ids)))
        return {g: sorted(v) for g, v in self._groups.items()}

    def close(self):
        self.calls.append(("close",))


class FakeFactory:
    def __init__(self, installer=None, member_kwargs=None):
        self.inst = installer or RecordingInstaller()
        self.members = []
        self.keyservers = []
        self.member_kwargs = member_kwargs or {}

    def keyserver(self, settings, store, now, admit=None):
        ks = FakeKeyServer(settings, store, now)
        self.keyservers.append(ks)
        return ks

    def member(self, group, key_server, now, wall_time_offset=0.0, report_phase1=False):
        m = FakeMember(group, key_server, now, **self.member_kwargs)
        self.members.append(m)
        return m

    def update_keyserver_groups(self, engine, groups):
        return False

    def push_signer(self, group):
        return None

    def group_controller(self, group, state, now, *, signer=None, signer_error=None):
        raise RekeyError("the fake factory has no GROUPKEY-PUSH")

    def keys_changed(self, engine, group_id):
        pass

    def push_receiver(self, group, registered):
        raise RekeyError("the fake factory has no GROUPKEY-PUSH")

    def installer(self):
        return self.inst


PSK = "0123456789abcdef0123456789abcdef"


def free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def write_config(tmp: Path, *, ks_port: int | None = None, member_port: int | None = None,
                 member_groups=(1001,), ks_groups=(1001,), extra: str = "",
                 name: str = "msecd.toml", ks_psks: dict[str, str] | None = None,
                 authorize=("gm1",), identity: str = "gm1", psk: str = PSK,
                 listen: str = "127.0.0.1", ks_host: str = "127.0.0.1",
                 tek: str = "") -> Path:
    """A config in `tmp` (mode 0600: inline PSKs) with a key server and/or member role."""
    text = (f'[daemon]\nstate_dir = "{tmp}/state"\n'
            f'control_socket = "{tmp}/run/control.sock"\n\n')
    if ks_port is not None:
        text += f'[keyserver]\nlisten = ["{listen}"]\nport = {ks_port}\n'
        for ident, secret in (ks_psks or {"gm1": PSK}).items():
            text += f'[[keyserver.psk]]\nidentity = "{ident}"\nsecret = "{secret}"\n'
        auth = ", ".join(f'"{a}"' for a in authorize)
        for gid in ks_groups:
            text += (f'[[keyserver.group]]\nid = {gid}\nname = "g{gid}"\n'
                     f'authorize = {{ psk_identities = [{auth}] }}\n'
                     + (tek or f'[[keyserver.group.tek]]\nname = "rtp"\nsrc = "10.1.0.0/16"\n'
                               f'dst = "239.1.1.{gid % 250}"\ncipher = "aes-gcm-128"\n'))
    if member_port is not None:
        for gid in member_groups:
            text += (f'[[member.group]]\nid = {gid}\nname = "m{gid}"\n'
                     f'key_servers = ["{ks_host}:{member_port}"]\n'
                     f'credentials = {{ psk_identity = "{identity}", psk = "{psk}" }}\n')
    text += extra
    p = tmp / name
    p.write_text(text)
    os.chmod(p, stat.S_IRUSR | stat.S_IWUSR)
    return p
