"""msecd GROUPKEY-PUSH plumbing with fake engines: `msecctl rekey` on the key server (plan from
the factory, sent to the rekey address and each member), the member's rekey socket and its
receiver's events (Rekeyed -> install + `group show`, PushRejected -> logged)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from types import SimpleNamespace

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gkm.group import ControllerRefused, ControllerState, GroupRekeyed, Push, RekeyResult
from gkm.gdoi.events import Registered
from gkm.gdoi.push import PushRejected, Rekeyed
from tests.unit.daemon_fakes import FakeFactory, fake_tek, free_udp_port, write_config
from tests.unit.test_daemon_core import _ctl, _daemon, _run, _until


class FakePushReceiver:
    """b"PUSH <seq> <spi>" -> Rekeyed if seq > last_seq, else PushRejected."""

    def receiver_state(self):
        return None  # the engine's KEK, SEQ and LKH path rebuild it, as GDOI's PushReceiver

    def __init__(self, group_id, last_seq):
        self.group_id = group_id
        self.last_seq = last_seq
        self.kek = SimpleNamespace(spi=b"K" * 16, ack_requested=0)
        self._events = []
        self.stats = {"accepted": 0}
        self.ack_address = None

    def acknowledge_as(self, address):
        self.ack_address = address

    def receive_datagram(self, data, addr, now):
        _, seq, spi = data.split()
        seq, spi = int(seq), int(spi)
        if seq <= self.last_seq:
            self._events.append(PushRejected(self.group_id, f"SEQ {seq} not greater than "
                                                            f"{self.last_seq} (replay)"))
            return
        self.last_seq = seq
        self._events.append(Rekeyed(self.group_id, (fake_tek(self.group_id, spi),), None, seq))

    def handle_timer(self, now):
        pass

    def datagrams_to_send(self):
        return []

    def next_event(self):
        return self._events.pop(0) if self._events else None

    def get_timer(self):
        return None


class FakeController:
    """A group controller whose rekey is b"PUSH <seq> <spi>" (no store changes), with the
    real controller's results, Push values and events."""

    def __init__(self, factory, group):
        self.factory, self.group_id = factory, group.group_id
        self.state = ControllerState.READY
        self._out, self._events = [], []

    def current_tek_spis(self):
        return frozenset()

    def pending_evictions(self):
        return ()

    def resync(self, state, now):
        pass

    def update_policy(self, policy, now, signer=None, signer_error=None):
        return None

    def rekey(self, now):
        f = self.factory
        if f.fail:
            raise ControllerRefused(f.fail)
        f.seq += 1
        spi = 0x5000 + f.seq
        self._out.append(Push(f.seq, b"K" * 16, b"PUSH %d %d" % (f.seq, spi)))
        self._events.append(GroupRekeyed(self.group_id, "operator", (f.seq,), (spi,)))
        return RekeyResult((f.seq,), (spi,))

    def announce(self, now):  # at the key server's start: no member registered yet
        raise ControllerRefused(f"group {self.group_id} has no keys yet: no member has "
                                "registered")

    def handle_timer(self, now):
        pass

    def pending_changes(self):
        return ()

    def datagrams_to_send(self):
        out, self._out = self._out, []
        return out

    def next_event(self):
        return self._events.pop(0) if self._events else None

    def get_timer(self):
        return None


class PushFactory(FakeFactory):
    def __init__(self, rekey_port, **kw):
        super().__init__(**kw)
        self.rekey_port = rekey_port
        self.seq = 0
        self.receivers = []
        self.fail = None

    def member(self, group, key_server, now, wall_time_offset=0.0, report_phase1=False):
        m = super().member(group, key_server, now)
        kek = SimpleNamespace(dst=ipaddress.ip_network("127.0.0.1/32"), dst_port=self.rekey_port,
                              lifetime_s=86400)
        nxt = m.next_event

        def next_event():
            ev = nxt()
            if isinstance(ev, Registered):
                return Registered(ev.group_id, ev.teks, kek, 0, None, ev.key_server)
            return ev
        m.next_event = next_event
        return m

    def group_controller(self, group, state, now, *, signer=None, signer_error=None):
        return FakeController(self, group)

    def push_receiver(self, group, registered):
        r = FakePushReceiver(group.group_id, registered.seq or 0)
        self.receivers.append(r)
        return r


def _kek_config(tmp_path, port, rport):
    key = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "push.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    pem.chmod(0o600)
    tek = ('[[keyserver.group.tek]]\nname = "rtp"\nsrc = "10.1.0.0/16"\ndst = "239.1.1.1"\n'
           'cipher = "aes-gcm-128"\n'
           '[keyserver.group.kek]\ncipher = "aes-cbc-128"\nsignature = "ecdsa-p256"\n'
           f'signing_key = "{pem}"\nrekey_address = "239.192.0.1"\nrekey_port = {rport}\n'
           'lifetime = "1d"\n')
    return write_config(tmp_path, ks_port=port, member_port=port, tek=tek)


def _no_multicast(monkeypatch):
    """Unit tests stay on loopback: multicast sends are recorded, not made."""
    from gkm.daemon.rekey_transport import RekeyTransport

    real = RekeyTransport.send
    skipped = []

    def send(self, data, dest, opts=None):
        if ipaddress.ip_address(dest[0]).is_multicast:
            skipped.append(dest)
            return
        real(self, data, dest, *([opts] if opts is not None else []))
    monkeypatch.setattr(RekeyTransport, "send", send)
    return skipped


def test_rekey_command_push_received_and_shown(tmp_path, caplog, monkeypatch):
    caplog.set_level("INFO")
    multicast = _no_multicast(monkeypatch)
    port, rport = free_udp_port(), free_udp_port()
    cfg = _kek_config(tmp_path, port, rport)
    fac = PushFactory(rport)

    async def run():
        d = _daemon(cfg, fac)
        await d.start()
        sock = str(tmp_path / "run" / "control.sock")
        s = d.sessions[1001]
        await _until(lambda: "listening for GROUPKEY-PUSH" in caplog.text)
        assert s.describe()["last_seq"] == 0

        rc, out, err = await _ctl("--socket", sock, "--json", "rekey", "1001")
        r = json.loads(out)
        assert rc == 0 and r["ok"] and r["seq"] == 1 and r["teks"] == ["0x00005001"]
        # sent to the rekey address and (unicast) to the member's address
        assert r["sent_to"] == [f"239.192.0.1:{rport}", f"127.0.0.1:{rport}"]
        assert multicast == [("239.192.0.1", rport)]
        await _until(lambda: s.rekeys == 1)
        g = s.describe()
        # every TEK held is shown: the registration's (still sent on) and the PUSH's (inbound
        # now, sent on after the activation delay)
        assert g["last_seq"] == 1
        roles = {t["spi"]: (t["role"], t["inbound"], t["outbound"]) for t in g["teks"]}
        assert roles == {"0x00001234": ("previous", True, True),
                         "0x00005001": ("next", True, False)}
        assert ("install", 1001) == fac.inst.calls[-1][0:2]
        # the engine runs on the monotonic clock; what is shown is wall-clock time
        import time
        assert all(abs(t["expires_at"] - (time.time() + 3600)) < 60 for t in g["teks"])
        assert abs(g["registered_at"] - time.time()) < 60
        rc, out, _ = await _ctl("--socket", sock, "group", "show", "1001")
        assert "last SEQ: 1 (1 rekey(s))" in out and "TEK 0x00005001" in out
        assert "TEK 0x00001234" in out and "next" in out and "previous" in out

        rc, out, _ = await _ctl("--socket", sock, "rekey", "1001")
        assert rc == 0 and "group 1001 rekeyed: SEQ 2, new TEK SPI 0x00005002" in out
        await _until(lambda: s.rekeys == 2)
        # never more than two per TEK policy: the oldest went first, the sender moved on
        assert ("send_on", 1001, 0x5001) in fac.inst.calls
        assert ("remove", 1001, (0x1234,)) in fac.inst.calls
        assert {t["spi"] for t in s.describe()["teks"]} == {"0x00005001", "0x00005002"}

        # a replayed PUSH is rejected and logged
        import socket
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.sendto(b"PUSH 2 20482", ("127.0.0.1", rport))
        await _until(lambda: "GROUPKEY-PUSH rejected: SEQ 2 not greater than 2" in caplog.text)
        assert s.rekeys == 2

        fac.fail = "group 1001 has no keys yet: no member has registered"
        rc, out, err = await _ctl("--socket", sock, "rekey", "1001")
        assert rc == 1 and "no keys yet" in err
        rc, out, err = await _ctl("--socket", sock, "rekey", "77")
        assert rc == 1 and "not the key server of group 77" in err

        d.request_stop("test")
        await d.wait_stopped()
        await d.stop()
        assert s._listening is None and not d.rekey_sockets._socks
    _run(run())
    text = caplog.text
    assert "group m1001 (1001) rekeyed: SEQ 1, new TEK SPIs 0x00005001" in text
    assert "group g1001 (1001): rekeyed: SEQ 1, new TEK SPI 0x00005001" in text


def test_rekey_refused_by_the_factory_is_an_error(tmp_path):
    port, rport = free_udp_port(), free_udp_port()
    cfg = _kek_config(tmp_path, port, rport)

    async def run():
        d = _daemon(cfg, FakeFactory())
        await d.start()
        r = await d.handle_request({"cmd": "rekey", "id": 1001})
        assert r["ok"] is False and "no GROUPKEY-PUSH" in r["error"]
        r = await d.handle_request({"cmd": "rekey"})
        assert r["ok"] is False and "needs" in r["error"]
        d.request_stop("test")
        await d.wait_stopped()
        await d.stop()
    _run(run())


def test_groups_sharing_a_rekey_port_share_one_exclusive_socket():
    """Two member groups with the same rekey port: one socket, each PUSH to the group whose KEK
    SPI its cookies carry, unknown cookies dropped; nobody else can bind the port; the socket
    closes with its last group."""
    import errno
    import socket

    from gkm.daemon.member import RekeySockets

    class Session:
        def __init__(self, label, spi):
            self.label = label
            self.engine = SimpleNamespace(kek_spi=spi)
            self.got = []

        def on_push_datagram(self, data, addr):
            self.got.append(data)

    async def run():
        loop = asyncio.get_running_loop()
        rs = RekeySockets(loop)
        port = free_udp_port()
        a, b = Session("a", b"A" * 16), Session("b", b"B" * 16)
        rs.join(a, "127.0.0.1", port, None)
        rs.join(b, "127.0.0.1", port, None)
        assert len(rs._socks) == 1
        other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            other.bind(("0.0.0.0", port))
        except OSError as e:
            assert e.errno == errno.EADDRINUSE
        else:
            raise AssertionError("another socket bound the rekey port")
        finally:
            other.close()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            for data in (b"A" * 16 + b"1", b"B" * 16 + b"2", b"C" * 16 + b"3", b"A" * 16 + b"4"):
                u.sendto(data, ("127.0.0.1", port))
        await _until(lambda: len(a.got) + len(b.got) + rs.unclaimed >= 4)
        assert a.got == [b"A" * 16 + b"1", b"A" * 16 + b"4"] and b.got == [b"B" * 16 + b"2"]
        assert rs.unclaimed == 1
        rs.leave(a)
        assert len(rs._socks) == 1
        rs.leave(b)
        assert rs._socks == {}
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
            again.bind(("0.0.0.0", port))  # free again
        rs.close()
    _run(run())
