"""The opt-in Wireshark key log (gkm.daemon.keylog, ``daemon.keylog_file``): file mode, the
records Wireshark's ikev1_decryption_table and esp_sa tables take, the warning, the
configuration key, and the member registration engine passing its phase 1 SA on."""

from __future__ import annotations

import logging
import os
import stat
from ipaddress import ip_network

import pytest

from gkm.daemon.keylog import KeyLog, esp_record, ikev1_record
from gkm.gdoi import GroupTek
from gkm.ike import Phase1Established
from policy.config import ConfigError, parse_config
from policy.model import AddressPreservation, Mode, SaDirection, TrafficSelector
from policy.suites import ESP_SUITES


def tek(suite: str, dst: str = "239.1.1.1/32", spi: int = 0x1234ABCD) -> GroupTek:
    s = ESP_SUITES[suite]
    src = ip_network("fd00::/64" if ":" in dst else "10.0.0.0/24")
    return GroupTek(1001, spi, TrafficSelector(src, ip_network(dst), 17, 0, 5000),
                    Mode.TUNNEL, AddressPreservation.SOURCE_AND_DESTINATION, SaDirection.SYMMETRIC,
                    suite, bytes(range(s.enc_key_bytes)), bytes(range(100, 100 + s.integrity_key_bytes)),
                    3600)


def test_ikev1_record_is_wiresharks_uat_line():
    assert ikev1_record(bytes.fromhex("fafaeb49382a763c"), bytes.fromhex("735be0cb62f82675")) == \
        "ikev1_decryption_table: fafaeb49382a763c,735be0cb62f82675"
    with pytest.raises(ValueError):
        ikev1_record(b"short", b"k")


def test_esp_record_gcm_and_cbc():
    t = tek("aes-gcm-128")
    assert esp_record(t) == ('esp_sa: "IPv4","*","239.1.1.1","0x1234abcd",'
                             '"AES-GCM with 16 octet ICV [RFC4106]",'
                             f'"0x{t.keymat.hex()}","NULL",""')
    assert len(t.keymat) == 20  # key || salt, as Wireshark's GCM entry takes it
    t = tek("aes-cbc-256-hmac-sha384", dst="ff0e::1:3/128")
    assert esp_record(t) == ('esp_sa: "IPv6","*","ff0e::1:3","0x1234abcd","AES-CBC [RFC3602]",'
                             f'"0x{t.keymat.hex()}","HMAC-SHA-384-192 [RFC4868]",'
                             f'"0x{t.auth_key.hex()}"')
    assert '"*","*"' in esp_record(tek("aes-cbc-128-hmac-sha256", dst="239.1.0.0/16"))


@pytest.mark.parametrize("suite", sorted(ESP_SUITES))
def test_every_suite_has_a_wireshark_name(suite):
    assert "FIXX" not in esp_record(tek(suite))


def test_file_is_0600_appended_and_warned_without_keys(tmp_path, caplog):
    path = tmp_path / "keys.log"
    path.write_text("earlier\n")
    path.chmod(0o644)
    caplog.set_level(logging.WARNING)
    kl = KeyLog(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    t = tek("aes-gcm-256")
    kl.group_sa(t)
    kl.group_sa(t)  # once per SA

    class Sa:
        icookie, enc_key = bytes(range(8)), b"\x42" * 16
    kl.phase1(Sa)
    kl.close()
    kl.group_sa(tek("aes-gcm-128", spi=0x9999))  # closed: nothing
    lines = path.read_text().splitlines()
    assert lines == ["earlier", esp_record(t), ikev1_record(bytes(range(8)), b"\x42" * 16)]
    assert "key log is ON" in caplog.text and str(path) in caplog.text
    assert t.keymat.hex() not in caplog.text and "4242" not in caplog.text


def test_new_file_is_created_0600(tmp_path):
    old = os.umask(0)
    try:
        KeyLog(tmp_path / "new.log").close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "new.log").st_mode) == 0o600


MEMBER = """
[daemon]
{line}
[[member.group]]
id = 1
name = "g"
key_servers = ["192.0.2.1"]
credentials = {{ psk_identity = "gm1", psk_file = "psk" }}
"""


def test_config_keylog_file(tmp_path):
    c = parse_config(MEMBER.format(line=""), base_dir=tmp_path, check_files=False)
    assert c.daemon.keylog_file is None
    c = parse_config(MEMBER.format(line='keylog_file = "keys.log"'), base_dir=tmp_path,
                     check_files=False)
    assert c.daemon.keylog_file == tmp_path / "keys.log"
    with pytest.raises(ConfigError) as ei:
        parse_config(MEMBER.format(line='keylog_file = "nowhere/keys.log"'), base_dir=tmp_path,
                     check_files=False)
    assert [p.path for p in ei.value.problems] == ["daemon.keylog_file"]
    with pytest.raises(ConfigError):
        parse_config(MEMBER.format(line="keylog_file = 1"), base_dir=tmp_path, check_files=False)


def test_member_registration_reports_phase1_only_when_asked(tmp_path):
    from gkm.gdoi import Registered
    from tests.unit.test_gdoi_support import events, key_server, member, member_addr, register

    ks, _store = key_server(tmp_path)
    quiet = member(tmp_path, "gm1")
    asked = member(tmp_path, "gm2", report_phase1=True)
    register(ks, {member_addr(0): quiet, member_addr(1): asked})
    assert [type(e) for e in events(quiet)] == [Registered]
    evs = events(asked)
    assert [type(e) for e in evs] == [Phase1Established, Registered]
    assert len(evs[0].sa.icookie) == 8 and evs[0].sa.enc_key
    assert evs[0].sa.enc_key.hex() not in repr(evs[0])


# ------------------------------------------------------------------ tools/keylog_tshark

def test_tshark_options_from_the_key_log():
    from tools.keylog_tshark import BASE_OPTIONS, KeyLogError, tshark_options
    t = tek("aes-gcm-128")
    text = f"# a comment\n\n{ikev1_record(bytes(8), b'k' * 16)}\n{esp_record(t)}\n"
    opts = tshark_options(text)
    assert opts[:len(BASE_OPTIONS)] == list(BASE_OPTIONS)
    assert opts[len(BASE_OPTIONS):] == [
        "-o", f"uat:ikev1_decryption_table:{'00' * 8},{(b'k' * 16).hex()}",
        "-o", "uat:" + esp_record(t).replace(": ", ":", 1)]
    for bad in ("esp_sa", "ssl_keys: x", "ikev1_decryption_table:x"):
        with pytest.raises(KeyLogError, match="line 1"):
            tshark_options(bad)


def _udp_checksum(src: bytes, dst: bytes, udp: bytes) -> int:
    data = src + dst + bytes([0, 17]) + len(udp).to_bytes(2, "big") + udp
    data += b"\0" * (len(data) % 2)
    s = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _pcap_with(isakmp: bytes, *, checksum: bool) -> bytes:
    import struct
    src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    udp = struct.pack("!HHHH", 848, 848, 8 + len(isakmp), 0) + isakmp
    if checksum:
        udp = udp[:6] + _udp_checksum(src, dst, udp).to_bytes(2, "big") + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, src, dst) + udp
    frame = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip
    head = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    return head + struct.pack("<IIII", 0, 0, len(frame), len(frame)) + frame


def _main_mode_1(doi: int, flags: int = 0, exchange: int = 2) -> bytes:
    import struct
    sa = struct.pack("!BBHII", 0, 0, 12, doi, 0)
    return (bytes(range(1, 9)) + bytes(8) + bytes([1, 0x10, exchange, flags]) + bytes(4)
            + struct.pack("!I", 28 + len(sa)) + sa)


@pytest.mark.parametrize("checksum", [True, False])
def test_rewrite_gdoi_phase1_doi(tmp_path, checksum):
    from tools.keylog_tshark import rewrite_gdoi_phase1_doi
    from tools.netlab import read_pcap
    src, dst = tmp_path / "in.pcap", tmp_path / "out.pcap"
    src.write_bytes(_pcap_with(_main_mode_1(2), checksum=checksum))
    assert rewrite_gdoi_phase1_doi(str(src), str(dst)) == 1
    ((_, frame, _),) = read_pcap(str(dst))
    udp = frame[34:]
    assert udp[8 + 32:8 + 36] == b"\0\0\0\x01"  # the SA payload's DOI now reads 1
    if checksum:  # still a valid UDP checksum (0 folded is sent as 0xffff)
        zeroed = udp[:6] + b"\0\0" + udp[8:]
        assert int.from_bytes(udp[6:8], "big") == (_udp_checksum(frame[26:30], frame[30:34], zeroed) or 0xFFFF)
    else:
        assert udp[6:8] == b"\0\0"
    before = src.read_bytes()[40:]
    # nothing else changed: the frame up to the UDP checksum, and from it to the DOI
    assert frame[:40] == before[:40] and frame[42:34 + 8 + 32] == before[42:34 + 8 + 32]


@pytest.mark.parametrize("isakmp", [_main_mode_1(1), _main_mode_1(2, flags=1),
                                    _main_mode_1(2, exchange=32)],
                         ids=["doi-1", "encrypted", "not-main-mode"])
def test_rewrite_leaves_other_messages_alone(tmp_path, isakmp):
    from tools.keylog_tshark import rewrite_gdoi_phase1_doi
    src, dst = tmp_path / "in.pcap", tmp_path / "out.pcap"
    src.write_bytes(_pcap_with(isakmp, checksum=True))
    assert rewrite_gdoi_phase1_doi(str(src), str(dst)) == 0
    assert dst.read_bytes() == src.read_bytes()


def test_rewrite_refuses_pcapng(tmp_path):
    from tools.keylog_tshark import KeyLogError, rewrite_gdoi_phase1_doi
    p = tmp_path / "x.pcapng"
    p.write_bytes(b"\x0a\x0d\x0d\x0a" + bytes(40))
    with pytest.raises(KeyLogError, match="editcap"):
        rewrite_gdoi_phase1_doi(str(p), str(tmp_path / "o"))
