"""The opt-in key log (``keylog_file`` in ``[daemon]``): the keys Wireshark needs to read a
capture of msec's own traffic, written for debugging only.

One line per key, ``TABLE: RECORD``, where TABLE names one of Wireshark's decryption tables
(a UAT, "user accessible table") and RECORD is that table's line as Wireshark stores it in a
file of the same name in its profile:

* ``ikev1_decryption_table: ICOOKIE,KEY`` for each IKEv1 phase 1 SA (the key server's and the
  member's): the initiator cookie and the encryption key (``Phase1SA.enc_key``), both hex.
  With it Wireshark decrypts Main Mode messages 5 and 6 and every exchange under that SA
  (GROUPKEY-PULL, Informational); it computes the IVs itself from the captured KE payloads.
* ``esp_sa: "IPv4","*","239.1.1.1","0x12345678","AES-GCM with 16 octet ICV [RFC4106]",
  "0x<key||salt>","NULL",""`` for each group SA a member installs: protocol, source (``*``:
  a group SA has any sender), destination (the group address, ``*`` for a TEK whose
  destination is a network), SPI, encryption algorithm and key, authentication algorithm and
  key, with Wireshark's names for the algorithms (packet-ipsec.c's value strings).

``tools/keylog-tshark`` turns the file into ``tshark -o uat:TABLE:RECORD`` options (README,
"Reading a capture"). GROUPKEY-PUSH messages are encrypted under the KEK, which Wireshark has
no table for; they are not in the log.

The file is created 0600 (an existing file is made 0600 and appended to) and msecd warns in
its log that the key log is on. Nothing else: keys are never in msecd's own log.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from policy.suites import ESP_SUITES

log = logging.getLogger("msec.keylog")

__all__ = ["KeyLog", "esp_record", "ikev1_record"]

#: XFRM algorithm -> Wireshark's ESP encryption algorithm name (AEAD: by ICV bits)
_ESP_ENC = {("rfc4106(gcm(aes))", 64): "AES-GCM with 8 octet ICV [RFC4106]",
            ("rfc4106(gcm(aes))", 96): "AES-GCM with 12 octet ICV [RFC4106]",
            ("rfc4106(gcm(aes))", 128): "AES-GCM with 16 octet ICV [RFC4106]",
            ("cbc(aes)", 0): "AES-CBC [RFC3602]"}
#: XFRM authentication algorithm and truncation bits -> Wireshark's name
_ESP_AUTH = {("hmac(sha1)", 96): "HMAC-SHA-1-96 [RFC2404]",
             ("hmac(sha256)", 128): "HMAC-SHA-256-128 [RFC4868]",
             ("hmac(sha384)", 192): "HMAC-SHA-384-192 [RFC4868]",
             ("hmac(sha512)", 256): "HMAC-SHA-512-256 [RFC4868]"}


def ikev1_record(icookie: bytes, enc_key: bytes) -> str:
    if len(icookie) != 8:
        raise ValueError(f"an initiator cookie has 8 bytes, not {len(icookie)}")
    return f"ikev1_decryption_table: {icookie.hex()},{enc_key.hex()}"


def esp_record(tek) -> str:
    """The esp_sa line of a group TEK (a ``gkm.gdoi.GroupTek``)."""
    suite = ESP_SUITES[tek.suite]
    dst_net = tek.selector.dst
    proto = "IPv4" if dst_net.version == 4 else "IPv6"
    dst = str(dst_net.network_address) if dst_net.prefixlen == dst_net.max_prefixlen else "*"
    if suite.aead:
        enc = _ESP_ENC[(suite.xfrm_aead.name, suite.xfrm_aead.icv_bits)]
        auth, auth_key = "NULL", ""
    else:
        enc = _ESP_ENC[(suite.xfrm_enc.name, 0)]
        auth = _ESP_AUTH[(suite.xfrm_auth.name, suite.xfrm_auth.icv_bits)]
        auth_key = "0x" + tek.auth_key.hex()
    fields = (proto, "*", dst, f"0x{tek.spi:08x}", enc, "0x" + tek.keymat.hex(), auth, auth_key)
    return "esp_sa: " + ",".join(f'"{f}"' for f in fields)


class KeyLog:
    """The open key log file; each record is written (and flushed) once."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # an existing file keeps no wider mode
        except BaseException:
            os.close(fd)
            raise
        self._file = os.fdopen(fd, "a", encoding="ascii")
        self._written: set[str] = set()
        log.warning("key log is ON: phase 1 and group ESP keys are written to %s; anyone who "
                    "reads it can decrypt msec's traffic (turn keylog_file off when done)",
                    self.path)

    def phase1(self, sa) -> None:
        """An established phase 1 SA (``gkm.ike.Phase1SA``)."""
        self._write(ikev1_record(sa.icookie, sa.enc_key))

    def group_sa(self, tek) -> None:
        self._write(esp_record(tek))

    def _write(self, line: str) -> None:
        if line in self._written or self._file.closed:
            return
        self._written.add(line)
        self._file.write(line + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
