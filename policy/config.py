"""msecd configuration: one TOML file and its drop-ins -> `policy.model.DaemonConfig`,
validated as a whole.

`load_config` merges ``<file>.d/*.toml`` (`policy.dropin`: group and PSK entries only, what
``msecctl group create`` and ``msecctl join`` write) into the main document before the check,
so a restart, ``msecd --check`` and msecctl see the same configuration.

A file is accepted completely or refused completely. Every problem found is collected (type,
unknown key, range, syntax, cross-field, file checks) and `ConfigError` lists them all, one per
line, as ``FILE: KEY.PATH: reason``. Secret values (PSKs) are never echoed. Nothing outside this
call changes: the caller swaps the new `DaemonConfig` in only when it loaded.

Schema (see also examples/keyserver.toml and examples/member.toml)::

    [daemon]                                  # optional
    state_dir = "/var/lib/msec"               # default
    control_socket = "/run/msec/control.sock" # default
    state_anchor = "/var/lib/msec-anchor/gcks.anchor"  # optional; default
                                              # <state_dir>/gcks.anchor: the key server's
                                              # SEQ/key-generation anchor, kept apart from
                                              # the database (gkm.store_anchor)
    keylog_file = "/root/msec-keys.log"        # optional, off by default: phase 1 and group
                                              # ESP keys for Wireshark (gkm.daemon.keylog),
                                              # created 0600; for debugging only
    nat_keepalive = "20s"                     # default; 0: off. A G-IKEv2 member behind a
                                              # NAT that keeps its IKE SA for in-band rekeys
                                              # sends a NAT-keepalive this often (RFC 3948)

    [keyserver]                               # this daemon is GCKS for the groups below
    listen = ["0.0.0.0", "::"]                # default; IP literals
    port = 848                                # default (RFC 6407)
    g_ikev2_port = 500                        # optional; default: G-IKEv2 shares `port` with
                                              # GDOI (848: next to strongSwan's 500/4500);
                                              # else G-IKEv2 gets its own sockets on it (GDOI
                                              # stays on `port`); 500 also binds 4500 (NAT
                                              # traversal: IKE with the non-ESP marker);
                                              # 4500 itself is refused
    identity = "fqdn:ks.example.org"          # optional phase 1 ID with PSKs: key-id:, fqdn:,
                                              # address:; default: the address asked
    crl = ["ca.crl"]                          # optional: CRLs (PEM/DER), each signed by a
                                              # [keyserver.certificate] trust anchor; a
                                              # revoked member is refused at registration
                                              # and evicted at reload

    [[keyserver.psk]]                         # PSKs of members, by ID_KEY_ID identity
    identity = "gm1"
    secret_file = "secrets/gm1.psk"           # mode 0600; or secret = "..." inline (then
                                              # the config file itself must be mode 0600)
    addresses = ["192.0.2.10"]                # optional: Main Mode finds the PSK by source
                                              # address (else by bounded trial decryption)
    [[keyserver.ppk]]                         # optional: G-IKEv2 post-quantum preshared
    id = "gm1-ppk"                            # keys (RFC 8784), by the PPK_ID members send
    secret_file = "secrets/gm1.ppk"           # mode 0600, at least 32 octets (file only)
    [keyserver.certificate]                   # optional: certificate authentication
    cert_file = "ks.crt"
    key_file = "ks.key"                       # mode 0600
    trust_anchors = ["ca.crt"]

    [keyserver.phase1]                        # optional: Main Mode suites accepted; every
                                              # combination, preferred in this order:
    dh_groups = [19, 20, 21]                  # default; also 14 (MODP-2048, costly per DH)
    ciphers = ["aes-cbc-128", "aes-cbc-256"]  # default; also aes-cbc-192
    hashes = ["sha2-256", "sha2-384", "sha2-512"]  # default (hash and HMAC PRF)
    auth = ["psk", "certificate"]             # default: every configured credential
    lifetime = "1d"                           # default: longest phase 1 SA lifetime accepted
                                              # (a member's shorter one wins; a peer's 0 means
                                              # "none of its own": this one applies)

    [[keyserver.group]]
    id = 1001                                 # GDOI group id, 1..2^32-1 (ID_KEY_ID)
    name = "video"                            # optional local label
    protocols = ["gdoi", "g-ikev2"]           # default ["gdoi"]: registration protocols served
                                              # (G-IKEv2, RFC 9838, on the same port)
    mlkem = "required"                        # default "optional"; G-IKEv2: "required"
                                              # refuses (NO_PROPOSAL_CHOSEN, at GSA_AUTH) a
                                              # member whose IKE SA had no ML-KEM-768 key
                                              # exchange (RFC 9370); needs g-ikev2 in protocols
    ppk = "optional"                          # default; G-IKEv2: "required" refuses
                                              # (AUTHENTICATION_FAILED) a member whose GSA_AUTH
                                              # used no [[keyserver.ppk]] (RFC 8784)
    g_ikev2_rekey = "inband"                  # default "gsa_rekey" (multicast GSA_REKEY, LKH);
                                              # "inband": each G-IKEv2 member gets every rekey
                                              # as an acknowledged GSA_INBAND_REKEY over the
                                              # IKE SA its registration kept (small groups)
    activation_delay = "2s"                   # default; GAP ATD: senders switch to a rekey's
                                              # new TEKs this long after it arrives
    deactivation_delay = "6s"                 # default; GAP DTD: the TEKs it supersedes go
                                              # this long after it arrives (> ATD, < every
                                              # TEK lifetime; README: make before break)
    [keyserver.group.authorize]               # who may join: any rule admits
    psk_identities = ["gm1"]                  # exact ID_KEY_ID (must have a [[keyserver.psk]])
    fqdns = ["*.example.org"]                 # '*' within one label
    addresses = ["192.0.2.0/24"]              # peer address phase 1 came from
    subjects = ["O=Example, CN=gm-*"]         # certificate subject; '*' within one RDN value

    [[keyserver.group.tek]]                   # one or more data-security SAs
    name = "rtp"                              # optional, default "tek<N>"
    src = "10.1.0.0/16"                       # address or prefix
    dst = "239.1.1.1"                         # tunnel mode: one multicast address
    protocol = "udp"                          # name or number, default "any"
    src_port = 0                              # default 0 (any)
    dst_port = 5004
    mode = "tunnel"                           # tunnel (RFC 5374 address preservation) | transport
    cipher = "aes-gcm-128"                    # see policy.suites.ESP_SUITES
    lifetime = "1h"                           # seconds or "90s", "10m", "1h", "1d"
    replay_window = 0                         # must be 0 unless exactly one sender;
                                              # default: 64 with one sender, else 0
    senders = { psk_identities = ["gm1"] }    # optional, keys as in authorize; absent:
                                              # every member sends (SA direction symmetric)

    [keyserver.group.kek]                     # optional: rekey SA for GROUPKEY-PUSH
    cipher = "aes-cbc-128"                    # default; aes-cbc-128 | aes-cbc-256
    signature = "ecdsa-p256"                  # default rsa-pkcs1-sha256; rsa-pkcs1-sha256/
                                              # 384/512, ecdsa-p256/384/521
    signing_key = "ks-sign.pem"               # PEM, unencrypted, mode 0600, fits signature
    rekey_address = "239.192.0.1"             # multicast
    rekey_port = 848                          # default
    lifetime = "1d"                           # default
    tek_rekey_lead = "6m"                     # optional; push a TEK's successor this long before
                                              # it expires (default: 10% of the TEK lifetime, at
                                              # least activation + deactivation delay, at most
                                              # half the lifetime; > activation_delay)
    kek_rekey_lead = "2h"                     # optional; the KEK's, likewise (default: 10% of
                                              # its lifetime, at most half)
    lkh = true                                # default; LKH key tree: evictions cost O(log n)
                                              # keys; false: an eviction deletes KEK and TEKs
                                              # and every member registers again
    lkh_degree = 2                            # default; 2..64 children per tree node
    evict_batch_window = "0s"                 # default; evictions within it share one rekey
    rekey_ttl = 1                             # default; multicast hop limit of the PUSH, 1..255
    rekey_interface = "eth0"                  # optional; default: the routing table decides
    max_push_size = 8192                      # default; largest PUSH datagram (bytes,
                                              # 2048..65000); larger LKH updates are split
    rekey_delivery = "multicast"              # default; or "unicast": one copy per member,
                                              # acknowledged (RFC 8263 GROUPKEY-PUSH-ACK)
    rekey_copies = 2                          # default; multicast: copies of each rekey, 1..10
    rekey_copy_interval = "500ms"             # default; between two copies, 10ms..60s
    rekey_unicast_rate = 5000                 # default; unicast datagrams per second, at most
    rekey_ack_timeout = "10s"                 # default; unicast: first retransmission after
    rekey_ack_retries = 3                     # default; retransmissions per rekey (backoff x2)
    rekey_max_missed = 3                      # default; rekeys unacknowledged in a row before
                                              # a member is lost (no PUSH until it registers)

    [member]                                  # may be empty: groups joined later by msecctl
    [[member.group]]                          # this daemon joins these groups
    id = 1001
    name = "video"
    key_servers = ["192.0.2.1", "[2001:db8::1]:848", "ks.example.org:1848"]
    interface = "eth0"                        # optional
    protocol = "gdoi"                         # default; or "g-ikev2" (the key server's group
                                              # must list it in protocols); G-IKEv2 to a
                                              # key server on :500 floats to :4500 behind a
                                              # NAT; ":4500" uses the non-ESP marker at once
    # sender = true                           # G-IKEv2 only, default false: ask to send
                                              # (GROUP_SENDER) and install the TEKs both ways
    # mlkem = "off"                           # G-IKEv2 only, default "optional": offer
                                              # ML-KEM-768 (RFC 9370) after ECDH; "required":
                                              # refuse a key server that does not choose it;
                                              # "off": do not offer it
    # ppk = { id = "gm1-ppk", secret_file = "gm1.ppk", required = false }
                                              # G-IKEv2 only: a post-quantum preshared key
                                              # (RFC 8784) mixed into the IKE SA's keys at
                                              # GSA_AUTH (file mode 0600, >= 32 octets, the
                                              # key server's [[keyserver.ppk]] has the same);
                                              # required = true: no registration without it
    credentials = { psk_identity = "gm1", psk_file = "gm1.psk" }
    # or credentials = { cert_file = "gm.crt", key_file = "gm.key", trust_anchors = ["ca.crt"] }
    # or an inline psk = "..." (then the config file must be mode 0600)
    key_server_identity = { subjects = ["O=Example, CN=ks1"] }  # who may act as key server;
                                              # same keys as authorize; required with certificates
    phase1 = { dh_groups = [19], lifetime = "8h" }  # optional: suites offered, same keys and
                                              # defaults as [keyserver.phase1] except auth (the
                                              # credentials decide)

Relative paths are relative to the configuration file's directory (`base_dir` for
`parse_config`). `diff(old, new)` says what a reload changes; `advisories(config)` lists valid
but questionable settings.

Layout: this module is the public face; the section-by-section checks live in
`policy._checker`, `Problem`/`ConfigError` in `policy.errors`, `diff`/`advisories` in
`policy.reload`.

Files msecd trusts (this file, PSK and private key files) are refused when another user could
change them: writable by others, owned by neither root nor msecd's uid, or in a directory others
can write to without the sticky bit (`policy._checker.unsafe_location`).
"""

from __future__ import annotations

import re
import stat
import tomllib
from pathlib import Path
from typing import Mapping

from policy import model as m
from policy._checker import PROTOCOLS, Checker, unsafe_location
from policy.dropin import dropin_dir, dropin_names, merge, relocate
from policy.errors import ConfigError, Problem
from policy.reload import (
    PSK_TRIAL_LIMIT,
    Advisory,
    ConfigDiff,
    GroupChange,
    advisories,
    diff,
)

__all__ = [
    "Problem",
    "ConfigError",
    "load_config",
    "parse_config",
    "GroupChange",
    "ConfigDiff",
    "diff",
    "Advisory",
    "advisories",
    "PSK_TRIAL_LIMIT",
    "PROTOCOLS",
]


def parse_config(
    text: str,
    source_name: str = "<config>",
    *,
    base_dir: Path | str | None = None,
    check_files: bool = True,
    _file_mode: int | None = None,
) -> m.DaemonConfig:
    """Parse and validate configuration text; raise ConfigError listing every problem.

    Relative paths resolve against `base_dir` (default: the current directory). With
    `check_files=False` referenced files are neither examined nor read (for linting a file
    meant for another host); PSKs from files are then placeholders.
    """
    doc = _toml(text, source_name)
    return _check(doc, source_name, base_dir, check_files, _file_mode, {})


def _toml(text: str, source_name: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # tomllib's messages carry line and column; a few quote the offending character,
        # which may sit inside a secret: drop it
        msg = re.sub(r"(character) (?:'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")", r"\1", str(e))
        raise ConfigError([Problem(source_name, "", f"not valid TOML: {msg}")]) from None


def _check(doc: dict, source_name: str, base_dir, check_files: bool, file_mode: int | None,
           origins) -> m.DaemonConfig:
    checker = Checker(source_name, Path(base_dir) if base_dir else Path.cwd(), file_mode,
                      check_files)
    config = checker.document(doc)
    if checker.problems or config is None:
        problems = checker.problems or [Problem(source_name, "", "invalid")]
        if origins:
            problems = [Problem(*relocate(p.source, p.path, origins, p.source), p.reason)
                        for p in problems]
        raise ConfigError(problems)
    return config


def _read(p: Path) -> tuple[str, int]:
    try:
        st = p.stat()
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError([Problem(str(p), "", f"cannot read: {e.strerror}")]) from None
    try:
        return data.decode("utf-8"), stat.S_IMODE(st.st_mode)
    except UnicodeDecodeError as e:
        raise ConfigError([Problem(str(p), "", f"not UTF-8 (byte {e.start})")]) from None


def load_config(path: Path | str, *, check_files: bool = True,
                dropins: Mapping[str, str | None] | None = None) -> m.DaemonConfig:
    """Read and validate a configuration file and its drop-ins (`policy.dropin`:
    ``<path>.d/*.toml``, merged, then validated as one document); raise ConfigError listing
    every problem.

    `dropins` validates a would-be configuration without touching the disk: drop-in file name
    -> the text it would have, or None for a drop-in that would be removed."""
    p = Path(path)
    text, mode = _read(p)
    # the file itself, as secret files are: another user who can change it controls msecd
    unsafe = [Problem(str(p), "", f"refused: {why}") for why in unsafe_location(p)] \
        if check_files else []
    problems: list[Problem] = []
    d = dropin_dir(p)
    texts: dict[str, tuple[str, int]] = {}
    for name in dropin_names(d):
        fp = d / name
        try:
            texts[str(fp)] = _read(fp)
        except ConfigError as e:
            problems += e.problems
            continue
        if check_files:
            unsafe += [Problem(str(fp), "", f"refused: {why}") for why in unsafe_location(fp)]
    for name, new in (dropins or {}).items():
        fp = str(d / name)
        if new is None:
            texts.pop(fp, None)
        else:
            texts[fp] = (new, 0o600)
    try:
        main = _toml(text, str(p))
    except ConfigError as e:
        problems += e.problems
        main = None
    parsed = []
    for src in sorted(texts):
        try:
            parsed.append((src, _toml(texts[src][0], src)))
        except ConfigError as e:
            problems += e.problems
    if main is not None:
        doc, bad, origins = merge(main, parsed)
        problems += [Problem(*b) for b in bad]
    if problems:
        raise ConfigError(unsafe + problems)
    for _t, fmode in texts.values():
        mode |= fmode  # an inline secret only where no file read is open to others
    try:
        config = _check(doc, str(p), p.resolve().parent, check_files, mode, origins)
    except ConfigError as e:
        raise ConfigError(unsafe + list(e.problems)) from None
    if unsafe:
        raise ConfigError(unsafe)
    return config
