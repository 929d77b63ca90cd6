"""Our GROUPKEY-PULL messages, decrypted, read by Wireshark's ISAKMP dissector (tshark) as we do.

The four messages of a real in-process registration are decrypted with the phase 1 SA and
dissected with the E flag cleared.  Message 2 is dissected without its SA TEKs: Wireshark reads
the SA TEK ID Data Len as 2 octets, against RFC 6407 section 5.5.1 (docs/decisions/wire.md §7; asserted
in tests/unit/test_wire_tshark.py).
"""

from __future__ import annotations

from gkm.wire import Gap, GdoiSa, SaKek, decode_message, encode_message
from tests.unit.test_gdoi_support import events, key_server, member, member_addr, register
from tests.unit.test_gdoi_wire import PULL, _decrypt_exchange
from tests.unit.test_wire_tshark import _cleartext, _compare, dissect, expected_fields


def test_pull_messages_match_tshark(tmp_path):
    ks, _store = key_server(tmp_path)
    m = member(tmp_path, "gm1")
    log = register(ks, {member_addr(0): m})
    assert events(m)
    msgs = [data for _d, _a, data in log if data[18] == PULL]
    _mid, pts = _decrypt_exchange(m.phase1_sa, msgs)
    decoded = [decode_message(data[:28] + pt, block_size=16) for data, pt in zip(msgs, pts)]
    out = []
    for i, msg in enumerate(decoded):
        payloads = msg.payloads
        if i == 1:
            sa = payloads[2]
            assert isinstance(sa, GdoiSa) and isinstance(sa.payloads[0], SaKek)
            assert isinstance(sa.payloads[1], Gap)  # ATD/DTD: tshark 4.0 reads past it, no error
            payloads = payloads[:2] + (GdoiSa(sa.payloads[:2]),)
        out.append(encode_message(_cleartext(msg.header), payloads))
    for data, (fields, problems) in zip(out, dissect(tmp_path, out, 848)):
        assert problems == []
        _compare(fields, expected_fields(decode_message(data), data))
