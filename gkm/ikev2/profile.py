"""msec's one G-IKEv2 IKE SA profile, the same for both roles (member and GCKS), so two msec
peers always agree: AES-GCM-16/256 with PRF HMAC-SHA2-256, ECDH P-256 (X25519 also accepted),
ML-KEM-768 as the RFC 9370 additional key exchange when both offer it, and the key wrap
algorithms KW_5649_256 / KW_5649_128 (RFC 9838 §4.4.3).

Decisions: the GCKS always uses this profile with ML-KEM-768 ``optional`` (it cannot know the
group before GSA_AUTH names it); a key server group with ``mlkem = "required"`` refuses, at
GSA_AUTH, a member whose IKE SA was made without it (:mod:`.registration`).  The member offers
ML-KEM-768 as its group's ``mlkem`` says (``optional`` by default, so between msec peers the
IKE SA is post-quantum hybrid; ``required``; ``off`` for peers without it:
:mod:`.member_registration`).  A configurable proposal (suites, groups) is a follow-up.
"""

from __future__ import annotations

from .constants import Encr, KeyExchangeMethod, KeyWrap, Prf
from .keys import Suite
from .sa_init import SaInitConfig

__all__ = ["SUITE", "KWA", "sa_init_config"]

SUITE = Suite(Prf.HMAC_SHA2_256, Encr.AES_GCM_16, 256)
KWA = (KeyWrap.KW_5649_256, KeyWrap.KW_5649_128)


def sa_init_config(mlkem: str = "optional", ppk: bool = False) -> SaInitConfig:
    """``ppk``: announce N(USE_PPK) (RFC 8784; the member has a PPK, the GCKS has PPKs)."""
    return SaInitConfig(SUITE, (KeyExchangeMethod.ECP256, KeyExchangeMethod.CURVE25519), mlkem, kwa=KWA, ppk=ppk)
