"""One msec group for kernel-lab tests that run msecd next to something else (strongSwan,
tshark): a key server config and member configs, PSK authentication, group 1001 "video",
239.1.1.1 udp 5000 in tunnel mode with AES-GCM-128."""

from __future__ import annotations

import os
import stat

GROUP = "239.1.1.1"
GROUP_PORT = 5000
PSKS = {"gm2": "a2" * 16, "gm3": "a3" * 16}


def _write(path, text):
    path.write_text(text)
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    return path


def ks_config(d, ks_ip):
    text = (f'[daemon]\nstate_dir = "{d}/state"\ncontrol_socket = "{d}/run/control.sock"\n'
            f'[keyserver]\nlisten = ["{ks_ip}"]\nport = 848\n')
    for ident, secret in PSKS.items():
        text += f'[[keyserver.psk]]\nidentity = "{ident}"\nsecret = "{secret}"\n'
    text += ('[[keyserver.group]]\nid = 1001\nname = "video"\n'
             'authorize = { psk_identities = ["gm2", "gm3"] }\n'
             '[[keyserver.group.tek]]\nname = "rtp"\nsrc = "10.77.0.0/24"\n'
             f'dst = "{GROUP}"\nprotocol = "udp"\ndst_port = {GROUP_PORT}\nmode = "tunnel"\n'
             'cipher = "aes-gcm-128"\nlifetime = "1h"\n')
    return _write(d / "msecd.toml", text)


def gm_config(d, ks_ip, ident):
    text = (f'[daemon]\nstate_dir = "{d}/state"\ncontrol_socket = "{d}/run/control.sock"\n'
            f'[[member.group]]\nid = 1001\nname = "video"\nkey_servers = ["{ks_ip}"]\n'
            f'credentials = {{ psk_identity = "{ident}", psk = "{PSKS[ident]}" }}\n')
    return _write(d / "msecd.toml", text)
