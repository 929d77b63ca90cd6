"""msecd's key log (``keylog_file``, gkm.daemon.keylog) as tshark options, and the capture
copy Wireshark needs to decrypt GDOI's phase 1.

Each ``TABLE: RECORD`` line becomes ``-o uat:TABLE:RECORD`` (tshark adds the record to that
decryption table for this run only; nothing is written to the Wireshark profile). Added too:
ESP decryption on (``esp.enable_encryption_decode``) and UDP 848 dissected as ISAKMP (GDOI's
port; Wireshark knows only 500 and 4500). Blank lines and lines starting with ``#`` are
skipped; any other line that is not ``TABLE: RECORD`` for a known table is an error naming
its line number.

Wireshark's ISAKMP dissector parses the proposal of a phase 1 SA payload only under DOI 1;
under DOI 2, which GDOI's phase 1 carries (RFC 6407 section 2.1; docs/decisions/wire.md §7),
it never learns the phase 1 cipher and hash and so decrypts nothing under that SA. With
``-r FILE`` the helper therefore reads a copy of the capture (pcap, as ``tcpdump -w`` writes)
in which the DOI of the SA payload of each unencrypted Main Mode message 1 and 2 reads 1, UDP
checksum adjusted (RFC 1624); nothing else changes. docs/decisions/operations.md §2.

    tools/keylog-tshark KEYLOG -r capture.pcap [more tshark arguments]
    python -m tools.keylog_tshark --print KEYLOG   # the options, one per line
"""

from __future__ import annotations

import os
import shutil
import subprocess
import struct
import sys
import tempfile

TABLES = ("ikev1_decryption_table", "esp_sa")
BASE_OPTIONS = ("-o", "esp.enable_encryption_decode:TRUE", "-d", "udp.port==848,isakmp")


class KeyLogError(ValueError):
    pass


def tshark_options(text: str) -> list[str]:
    out = list(BASE_OPTIONS)
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        table, sep, record = line.partition(": ")
        if not sep or table not in TABLES or not record:
            raise KeyLogError(f"key log line {n}: not 'TABLE: RECORD' with TABLE one of "
                              f"{', '.join(TABLES)}")
        out += ["-o", f"uat:{table}:{record}"]
    return out


_PCAP_MAGIC = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">",
               b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}  # usec / nsec
_ISAKMP_HDR = 28
_MAIN_MODE, _SA_PAYLOAD, _DOI_GDOI, _DOI_IPSEC = 2, 1, 2, 1


def _l3_offset(frame: bytes, linktype: int) -> int | None:
    if linktype == 1 and len(frame) >= 14:  # Ethernet, one optional 802.1Q tag
        etype, off = struct.unpack_from("!H", frame, 12)[0], 14
        if etype == 0x8100 and len(frame) >= 18:
            etype, off = struct.unpack_from("!H", frame, 16)[0], 18
        return off if etype in (0x0800, 0x86DD) else None
    if linktype == 113 and len(frame) >= 16:  # Linux cooked capture (tcpdump -i any)
        return 16 if struct.unpack_from("!H", frame, 14)[0] in (0x0800, 0x86DD) else None
    if linktype in (101, 12):  # raw IP
        return 0
    return None


def _udp_payload(frame: bytes, l3: int) -> int | None:
    """Offset of the UDP payload in ``frame`` (IPv4 without fragments, or IPv6 with UDP next)."""
    v = frame[l3] >> 4 if len(frame) > l3 else 0
    if v == 4 and len(frame) >= l3 + 20 and frame[l3 + 9] == 17:
        if struct.unpack_from("!H", frame, l3 + 6)[0] & 0x3FFF:
            return None  # a fragment
        return l3 + (frame[l3] & 0x0F) * 4 + 8
    if v == 6 and len(frame) >= l3 + 48 and frame[l3 + 6] == 17:
        return l3 + 48
    return None


def _patch_frame(frame: bytearray, linktype: int) -> bool:
    """DOI 2 -> 1 in the SA payload of an unencrypted Main Mode message; True if changed."""
    l3 = _l3_offset(frame, linktype)
    up = None if l3 is None else _udp_payload(frame, l3)
    if up is None:
        return False
    csum_at = up - 8 + 6  # the UDP header's checksum field
    if len(frame) >= up + 4 and frame[up:up + 4] == b"\0\0\0\0":
        up += 4  # NAT-T non-ESP marker (port 4500)
    doi_at = up + _ISAKMP_HDR + 4
    if len(frame) < doi_at + 4:
        return False
    next_payload, version, exchange, flags = frame[up + 16:up + 20]
    if (next_payload, version >> 4, exchange) != (_SA_PAYLOAD, 1, _MAIN_MODE) or flags & 1:
        return False
    if struct.unpack_from("!I", frame, doi_at)[0] != _DOI_GDOI:
        return False
    struct.pack_into("!I", frame, doi_at, _DOI_IPSEC)
    # the 16-bit word holding the DOI's low octets went from 2 to 1: update the checksum
    # (RFC 1624 eqn. 3) unless it is 0 (IPv4: not computed)
    csum = struct.unpack_from("!H", frame, csum_at)[0]
    if csum:
        old_word, new_word = _DOI_GDOI, _DOI_IPSEC  # the DOI's low 16 bits
        c = (~csum & 0xFFFF) + (~old_word & 0xFFFF) + new_word
        c = (c & 0xFFFF) + (c >> 16)
        c = (c & 0xFFFF) + (c >> 16)
        struct.pack_into("!H", frame, csum_at, ~c & 0xFFFF or 0xFFFF)
    return True


def rewrite_gdoi_phase1_doi(src: str, dst: str) -> int:
    """Copy the pcap ``src`` to ``dst`` with GDOI's phase 1 SA DOI reading 1 (see above);
    the number of frames changed. A pcapng file is refused (convert: editcap -F pcap)."""
    with open(src, "rb") as f:
        data = f.read()
    endian = _PCAP_MAGIC.get(data[:4])
    if endian is None or len(data) < 24:
        raise KeyLogError(f"{src}: not a pcap file (pcapng? convert it: editcap -F pcap IN OUT)")
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    out, off, n = bytearray(data[:24]), 24, 0
    while off + 16 <= len(data):
        incl = struct.unpack_from(endian + "I", data, off + 8)[0]
        frame = bytearray(data[off + 16:off + 16 + incl])
        n += _patch_frame(frame, linktype)
        out += data[off:off + 16] + frame
        off += 16 + incl
    with open(dst, "wb") as f:
        f.write(out)
    return n


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "--print":
        with open(argv[1], encoding="ascii") as f:
            print("\n".join(tshark_options(f.read())))
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[-2].strip(), file=sys.stderr)
        return 2
    try:
        with open(argv[0], encoding="ascii") as f:
            opts = tshark_options(f.read())
    except (OSError, KeyLogError) as e:
        print(f"keylog-tshark: {e}", file=sys.stderr)
        return 1
    tshark = shutil.which("tshark")
    if tshark is None:
        print("keylog-tshark: tshark is not installed", file=sys.stderr)
        return 1
    args = list(argv[1:])
    tmp = None
    if "-r" in args[:-1]:
        i = args.index("-r") + 1
        fd, tmp = tempfile.mkstemp(prefix="keylog-tshark-", suffix=".pcap")
        os.close(fd)
        try:
            rewrite_gdoi_phase1_doi(args[i], tmp)
        except (OSError, KeyLogError) as e:
            os.unlink(tmp)
            print(f"keylog-tshark: {e}", file=sys.stderr)
            return 1
        args[i] = tmp
    try:
        return subprocess.run([tshark, *opts, *args]).returncode
    finally:
        if tmp:
            os.unlink(tmp)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
