"""The XFRM messages declared on pyroute2's netlink marshalling (pyroute2 0.9.7 has none).

These classes are the generic, readable declaration of the same wire format the fast codec in
:mod:`xfrm.messages` packs by hand. They decode any XFRM message into pyroute2's dict-like
messages (``MarshalXfrm().parse(data)``), which the unit tests use as an independent oracle for
the fast codec, and which is handy for debugging. pyroute2 objects never leave ``xfrm``.

Nested C structs are flattened with prefixes (``sel_daddr``, ``id_spi``, ``lft_soft_byte_limit``)
because pyroute2 ``fields`` are flat; big-endian members use ``>`` formats.
"""

from __future__ import annotations

from pyroute2.netlink import nla, nlmsg
from pyroute2.netlink.marshal import Marshal

from . import messages as m

__all__ = ["MarshalXfrm", "xfrm_usersa_info_msg", "xfrm_userpolicy_info_msg"]

# struct xfrm_selector (56 bytes)
SELECTOR_FIELDS = (
    ("sel_daddr", "16s"), ("sel_saddr", "16s"),
    ("sel_dport", ">H"), ("sel_dport_mask", ">H"), ("sel_sport", ">H"), ("sel_sport_mask", ">H"),
    ("sel_family", "H"), ("sel_prefixlen_d", "B"), ("sel_prefixlen_s", "B"),
    ("sel_proto", "B"), ("__pad", "3x"), ("sel_ifindex", "i"), ("sel_user", "I"),
)
# struct xfrm_lifetime_cfg (64) + struct xfrm_lifetime_cur (32)
LIFETIME_FIELDS = tuple((f"lft_{n}", "Q") for n in (
    "soft_byte_limit", "hard_byte_limit", "soft_packet_limit", "hard_packet_limit",
    "soft_add_expires_seconds", "hard_add_expires_seconds",
    "soft_use_expires_seconds", "hard_use_expires_seconds")) + tuple(
    (f"curlft_{n}", "Q") for n in ("bytes", "packets", "add_time", "use_time"))


class xfrm_attrs:
    """Attribute classes and the numbered map shared by the SA and policy messages."""

    nla_map = (
        (m.XFRMA_ALG_AUTH, "XFRMA_ALG_AUTH", "xfrm_algo"),
        (m.XFRMA_ALG_CRYPT, "XFRMA_ALG_CRYPT", "xfrm_algo"),
        (m.XFRMA_TMPL, "XFRMA_TMPL", "xfrm_user_tmpls"),
        (m.XFRMA_ALG_AEAD, "XFRMA_ALG_AEAD", "xfrm_algo_aead"),
        (m.XFRMA_ALG_AUTH_TRUNC, "XFRMA_ALG_AUTH_TRUNC", "xfrm_algo_aead"),
        (m.XFRMA_MARK, "XFRMA_MARK", "xfrm_mark"),
        (m.XFRMA_REPLAY_ESN_VAL, "XFRMA_REPLAY_ESN_VAL", "xfrm_replay_state_esn"),
        (m.XFRMA_SA_EXTRA_FLAGS, "XFRMA_SA_EXTRA_FLAGS", "uint32"),
        (m.XFRMA_PROTO, "XFRMA_PROTO", "uint8"),
        (m.XFRMA_IF_ID, "XFRMA_IF_ID", "uint32"),
    )

    class xfrm_algo(nla):
        """struct xfrm_algo { char alg_name[64]; __u32 alg_key_len; char alg_key[]; }"""

        fields = (("alg_name", "64s"), ("alg_key_len", "I"))

        def decode(self):
            nla.decode(self)
            start = self.offset + 4 + 68
            self["alg_key"] = bytes(self.data[start:start + self["alg_key_len"] // 8])

    class xfrm_algo_aead(nla):
        """struct xfrm_algo_aead/_auth { name[64]; key_len; icv_len|trunc_len; key[]; }"""

        fields = (("alg_name", "64s"), ("alg_key_len", "I"), ("alg_icv_len", "I"))

        def decode(self):
            nla.decode(self)
            start = self.offset + 4 + 72
            self["alg_key"] = bytes(self.data[start:start + self["alg_key_len"] // 8])

    class xfrm_mark(nla):
        fields = (("v", "I"), ("m", "I"))

    class xfrm_replay_state_esn(nla):
        fields = (("bmp_len", "I"), ("oseq", "I"), ("seq", "I"), ("oseq_hi", "I"),
                  ("seq_hi", "I"), ("replay_window", "I"))

    class xfrm_user_tmpls(nla):
        """XFRMA_TMPL: an array of struct xfrm_user_tmpl (64 bytes each), no cell headers."""

        fields = ()
        cell_fields = (
            ("id_daddr", "16s"), ("id_spi", ">I"), ("id_proto", "B"), ("__pad", "3x"),
            ("family", "H"), ("__pad", "2x"), ("saddr", "16s"), ("reqid", "I"),
            ("mode", "B"), ("share", "B"), ("optional", "B"), ("__pad", "x"),
            ("aalgos", "I"), ("ealgos", "I"), ("calgos", "I"),
        )

        def decode(self):
            nla.decode(self)
            cells = []
            off, end = self.offset + 4, self.offset + self.length
            while off + 64 <= end:
                cell = {}
                for name, fmt in self.cell_fields:
                    value, off = self.decode_field(fmt, self.data, off)
                    if not name.startswith("__"):
                        cell[name] = value
                cells.append(cell)
            self.value = cells


class xfrm_usersa_info_msg(xfrm_attrs, nlmsg):
    """XFRM_MSG_NEWSA/UPDSA: struct xfrm_usersa_info (224 bytes) + attributes."""

    fields = SELECTOR_FIELDS + (
        ("id_daddr", "16s"), ("id_spi", ">I"), ("id_proto", "B"), ("__pad", "3x"),
        ("saddr", "16s"),
    ) + LIFETIME_FIELDS + (
        ("stats_replay_window", "I"), ("stats_replay", "I"), ("stats_integrity_failed", "I"),
        ("seq", "I"), ("reqid", "I"), ("family", "H"), ("mode", "B"), ("replay_window", "B"),
        ("flags", "B"), ("__pad", "7x"),
    )


class xfrm_userpolicy_info_msg(xfrm_attrs, nlmsg):
    """XFRM_MSG_NEWPOLICY/UPDPOLICY: struct xfrm_userpolicy_info (168 bytes) + attributes."""

    fields = SELECTOR_FIELDS + LIFETIME_FIELDS + (
        ("priority", "I"), ("index", "I"), ("dir", "B"), ("action", "B"), ("flags", "B"),
        ("share", "B"), ("__pad", "4x"),
    )


class xfrm_usersa_id_msg(xfrm_attrs, nlmsg):
    """XFRM_MSG_GETSA/DELSA: struct xfrm_usersa_id (24 bytes) + attributes."""

    fields = (("daddr", "16s"), ("spi", ">I"), ("family", "H"), ("proto", "B"), ("__pad", "x"))


class xfrm_userpolicy_id_msg(xfrm_attrs, nlmsg):
    """XFRM_MSG_GETPOLICY/DELPOLICY: struct xfrm_userpolicy_id (64 bytes) + attributes."""

    fields = SELECTOR_FIELDS + (("index", "I"), ("dir", "B"), ("__pad", "3x"))


class MarshalXfrm(Marshal):
    msg_map = {
        m.XFRM_MSG_NEWSA: xfrm_usersa_info_msg,
        m.XFRM_MSG_UPDSA: xfrm_usersa_info_msg,
        m.XFRM_MSG_GETSA: xfrm_usersa_id_msg,
        m.XFRM_MSG_DELSA: xfrm_usersa_id_msg,
        m.XFRM_MSG_NEWPOLICY: xfrm_userpolicy_info_msg,
        m.XFRM_MSG_UPDPOLICY: xfrm_userpolicy_info_msg,
        m.XFRM_MSG_GETPOLICY: xfrm_userpolicy_id_msg,
        m.XFRM_MSG_DELPOLICY: xfrm_userpolicy_id_msg,
    }
