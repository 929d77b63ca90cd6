"""The group controller's GSA_REKEY twins of LKH evictions (gkm.ikev2.group_rekey), read by a
real G-IKEv2 member receiver: a small eviction renews the Rekey SA through WRAP_KEYs that a
remaining member opens with its Key Path; one too large for a single GSA_REKEY (RFC 9838 has no
split) deletes every TEK and the Rekey SA instead, so G-IKEv2 members register again."""

from __future__ import annotations

import dataclasses
import random

from gkm.group import GroupController
from gkm.ikev2.constants import GcAuth
from gkm.ikev2.group_rekey import signature_for
from gkm.ikev2.gsa_map import rekey_kwa, rekey_sa_of
from gkm.ikev2.lkh_map import member_path
from gkm.ikev2.rekey import MemberConfig, RekeyApplied, RekeyReceiver
from policy.model import AddressPreservation, Mode, SaDirection
from tools.benchmarks.evict import NOW, identity, make_group


def _receiver(g, member: str) -> RekeyReceiver:
    """A G-IKEv2 member as registration would have left it: the current Rekey SA, the PUSH
    signing key as AUTH_KEY, its LKH path as Key Path."""
    k = g.state.current_kek()
    sa = rekey_sa_of(g.policy, bytes(k.spi), k.key, k.expires, rekey_kwa(g.policy, g.state.tree.key_len), NOW,
                     None, k.seq)
    cfg = MemberConfig(g.policy.group_id, Mode.TUNNEL, AddressPreservation.SOURCE_AND_DESTINATION,
                       SaDirection.RECEIVER_ONLY)
    return RekeyReceiver(cfg, sa, gcauth=GcAuth.DIGITAL_SIGNATURE, signature=signature_for(g.signer.private_key),
                         auth_key=g.signer.public_key, key_path=member_path(g.before, member))


def _evict(g, gone):
    ctl = GroupController(g.policy, g.state, now=NOW, signer=g.signer)
    ev = ctl.evict(gone, "test", NOW)
    ctl.committed(NOW)
    return ev, ctl.datagrams_to_send()


def test_lkh_evictions_as_gsa_rekey_small_and_too_large(tmp_path):
    g = make_group(4096, tmp_path)
    g.policy = dataclasses.replace(g.policy, protocols=("gdoi", "g-ikev2"))
    stay = identity(4095)
    rx = _receiver(g, stay)
    ev, pushes = _evict(g, [identity(0)])
    assert ev.mode == "lkh" and all(p.gike is not None for p in pushes)
    [applied] = rx.receive(pushes[0].gike)
    assert isinstance(applied, RekeyApplied) and applied.rekey_sa is not None  # the new Rekey SA
    assert applied.rekey_sa.spi == pushes[-1].kek_spi
    [teks] = rx.receive(pushes[-1].gike)  # then the TEKs on it
    assert isinstance(teks, RekeyApplied) and [t.spi for t in teks.teks] == list(ev.tek_spis)

    g.before = g.state.tree  # (paths of the tree as it is now)
    rx = _receiver(g, stay)
    gone = random.Random(1).sample([identity(i) for i in range(1, 4095)], 400)
    ev, pushes = _evict(g, gone)
    assert ev.mode == "lkh" and len(pushes) > 2  # GDOI: the update in several PUSHes
    assert pushes[0].gike is not None and all(p.gike is None for p in pushes[1:])
    assert len(pushes[0].gike) < 1500
    [applied] = rx.receive(pushes[0].gike)
    assert isinstance(applied, RekeyApplied)
    assert applied.delete_all_teks and applied.rekey_sa_deleted and not applied.teks
