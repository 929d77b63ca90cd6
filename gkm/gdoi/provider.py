"""Group keys for the key server: the "group keys provider" interface and its store-backed form.

The GROUPKEY-PULL responder asks for keys twice:

* :meth:`GroupKeysProvider.peek` when it builds message 2 (the SA payload needs the SPIs).  It
  must change **no persistent state** (RFC 6407 section 3.2: nothing changes before the
  member proves liveness with HASH(3)).  When the group has no keys yet, the store-backed
  provider generates them *tentatively*, in memory only, and hands the same tentative keys to
  every concurrent first registration, so they all see the same SPIs.
* :meth:`GroupKeysProvider.enroll` after a valid message 3: persist the tentative keys (if
  still tentative), record the member, join it to the LKH tree; all in one store transaction,
  committed (fsync'ed) before it returns, i.e. before message 4 is sent.  A restarted key
  server therefore hands out the same TEKs/KEK.

Store conventions (``gkm.store``; the rekey engine must use the same): a TEK row's
``algorithm`` is ``"<TekPolicy.name>/<suite name>"`` (a group may have several TEKs with the
same suite), ``key`` is TEK_ALGORITHM_KEY (AES-GCM: key || salt) and ``auth_key`` the
TEK_INTEGRITY_KEY; a KEK row's ``algorithm`` is the KEK cipher name and ``key`` is
KEK_ALGORITHM_KEY = IV || key.  SPIs are random 32-bit values >= 256, unique across every TEK
in the store (so also per group and destination).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Protocol

from cryptography.hazmat.primitives import serialization

from gkm.lkh import KEY_TYPE_AES_KEYWRAP, LkhTree, LkhUpdate
from gkm.store import KeyState, KeyStore, StoreError
from policy.model import GroupPolicy, tek_rekey_lead

from .keys import new_kek_keymat, new_tek_keymat, random_spi

log = logging.getLogger("gkm.gdoi")

__all__ = ["TekKeys", "KekKeys", "GroupKeys", "Enrollment", "GroupKeysProvider", "StoreKeysProvider", "StaleKeys", "tek_label", "load_signing_public_key"]


class StaleKeys(Exception):
    """The keys announced in message 2 are no longer the group's current keys."""


@dataclass(frozen=True, slots=True)
class TekKeys:
    name: str  # TekPolicy.name
    spi: int
    suite: str
    enc_keymat: bytes = field(repr=False)  # TEK_ALGORITHM_KEY
    auth_key: bytes = field(repr=False)  # TEK_INTEGRITY_KEY (b"" for AEAD)
    expires: int  # Unix seconds


@dataclass(frozen=True, slots=True)
class KekKeys:
    spi: bytes
    cipher: str
    keymat: bytes = field(repr=False)  # IV || key
    expires: int
    public_key: bytes  # DER SubjectPublicKeyInfo of the PUSH signing key


@dataclass(frozen=True, slots=True)
class GroupKeys:
    group_id: int
    teks: tuple[TekKeys, ...]
    kek: KekKeys | None
    tentative: bool  # generated for message 2, not persisted yet

    def tek(self, name: str) -> TekKeys:
        return next(t for t in self.teks if t.name == name)


@dataclass(frozen=True, slots=True)
class Enrollment:
    """What message 4 needs beyond the keys: SEQ (None without a KEK) and the LKH path."""

    seq: int | None
    lkh_path: tuple[tuple[int, int, bytes], ...] | None = field(default=None, repr=False)
    lkh_key_type: int = KEY_TYPE_AES_KEYWRAP
    lkh_update: LkhUpdate | None = None  # for the existing members (tree grew / backward secrecy)


class GroupKeysProvider(Protocol):
    def peek(self, group: GroupPolicy, now: int) -> GroupKeys:
        """Current keys of the group (tentative if new).  No persistent change."""

    def enroll(self, group: GroupPolicy, keys: GroupKeys, member: str, address: str, now: int,
               protocol: str = "gdoi") -> Enrollment:
        """Persist ``keys`` if tentative, record the member (LKH join) with the ``protocol`` it
        registered with; durable on return (inside :meth:`batch`: durable when the batch ends).
        Raises :class:`StaleKeys`, before changing anything, if ``keys`` are no longer current."""

    def batch(self) -> ContextManager[object]:
        """Group several :meth:`enroll` calls into one durable commit (at the end of the block;
        an exception undoes them all)."""

    def allocate_sender_ids(self, group: GroupPolicy, n: int, limit: int) -> tuple[int, ...]:
        """``n`` new Sender-IDs of the group below ``limit`` (RFC 9838 section 2.5.1: never
        handed out twice); durable like :meth:`enroll`.  StoreError when exhausted."""


def tek_label(name: str, suite: str) -> str:
    return f"{name}/{suite}"


_PUBKEY_CACHE: dict[tuple, bytes] = {}


def load_signing_public_key(path: Path) -> bytes:
    """DER SubjectPublicKeyInfo of the PEM private key at ``path`` (the PUSH signing key);
    cached while the file is unchanged (same inode, size and mtime)."""
    path = Path(path)
    st = path.stat()
    ck = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    der = _PUBKEY_CACHE.get(ck)
    if der is None:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if len(_PUBKEY_CACHE) > 64:
            _PUBKEY_CACHE.clear()
        _PUBKEY_CACHE[ck] = der
    return der


def tek_renewal_margin(lifetime_s: int, rekey_lead_s: int | None = None) -> int:
    """Seconds before its expiry from which a stored TEK is no longer handed to a registering
    member (a tenth of the TEK policy's lifetime, at least 1 s): it gets a fresh TEK instead,
    with its full lifetime, rather than one its kernel drops moments later.  In a group with
    a KEK the group controller pushes the TEK's successor ``rekey_lead_s`` before expiry; the
    margin stays under half of that, so a registration renews a TEK only when that rotation
    could not happen (the key server was down)."""
    margin = max(1, int(lifetime_s) // 10)
    if rekey_lead_s is not None:
        margin = max(1, min(margin, rekey_lead_s // 2))
    return margin


def _margins(group: GroupPolicy) -> dict[str, int]:
    return {tp.name: tek_renewal_margin(tp.lifetime_s, tek_rekey_lead(group, tp)
                                        if group.kek is not None else None)
            for tp in group.teks}


def _usable(expires: int, margin: int, now: int) -> bool:
    return expires - now > margin


def _policy_digest(group: GroupPolicy) -> bytes:
    return hashlib.sha256(repr(group).encode()).digest()


class StoreKeysProvider:
    """:class:`GroupKeysProvider` over :class:`gkm.store.KeyStore`.

    ``lkh``: groups with a KEK and ``kek.lkh`` get an LKH tree of degree ``kek.lkh_degree``
    (created on the first enrollment); a group whose tree is already in the store always uses
    it.  ``signing_public_key(group)`` gives the DER
    public key sent in the KD KEK packet (default: derived from ``KekPolicy.signing_key``).
    """

    #: how long (wall seconds) keys read from the store are reused without reading again
    CACHE_SECONDS = 2

    def __init__(
        self,
        store: KeyStore,
        *,
        lkh: bool = False,
        backward_secrecy: bool = False,
        signing_public_key: Callable[[GroupPolicy], bytes] | None = None,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.store = store
        self._lkh = lkh
        self._backward_secrecy = backward_secrecy
        self._pubkey = signing_public_key or (lambda g: load_signing_public_key(g.kek.signing_key))
        self._random = random
        self._tentative: dict[int, GroupKeys] = {}
        self._trees: dict[int, LkhTree | None] = {}
        self._cache: dict[int, tuple[GroupPolicy, GroupKeys, int]] = {}  # group -> (policy, keys, read at)
        self._checked: dict[int, tuple[GroupKeys, int | None]] | None = None  # inside batch(): group -> (keys, SEQ)

    def invalidate(self, group_id: int | None = None) -> None:
        """Forget cached keys (all groups with None).  Whoever changes a group's keys in the
        store (rekey) calls this; without it the cache is trusted for ``CACHE_SECONDS`` and a
        registration that raced a rekey ends in :class:`StaleKeys` (the member retries)."""
        if group_id is None:
            self._cache.clear()
            self._trees.clear()
        else:
            self._cache.pop(group_id, None)
            self._trees.pop(group_id, None)  # an eviction changed the tree in the store

    # -- GroupKeysProvider

    def allocate_sender_ids(self, group: GroupPolicy, n: int, limit: int) -> tuple[int, ...]:
        return self.store.allocate_sender_ids(group.group_id, n, limit)

    def peek(self, group: GroupPolicy, now: int) -> GroupKeys:
        gid = group.group_id
        t = self._tentative.get(gid)
        if t is not None and self._fits(group, t) and self._fresh(group, t, now):
            return t
        c = self._cache.get(gid)
        if c is not None and c[0] is group and 0 <= now - c[2] < self.CACHE_SECONDS \
                and self._fresh(group, c[1], now):
            return c[1]
        stored = self._stored(group, now)
        if stored is not None:
            self._tentative.pop(gid, None)
            self._cache[gid] = (group, stored, now)
            return stored
        t = self._generate(group, now)
        self._tentative[gid] = t
        return t

    def enroll(self, group: GroupPolicy, keys: GroupKeys, member: str, address: str, now: int,
               protocol: str = "gdoi") -> Enrollment:
        gid = group.group_id
        st = self.store
        checked = self._checked.get(gid) if self._checked is not None else None
        if checked is not None and checked[0] is keys:
            # same batch, same keys already checked and persisted by an earlier enrollment, no
            # LKH tree: only the member's row changes (SEQ cannot change inside the batch's
            # transaction: KeyStore.next_seq refuses to run in one)
            try:
                st.put_member(gid, member, address, registered_at=now, protocol=protocol)
            except StoreError:
                pass  # e.g. an earlier record with an LKH leaf: the general path below
            else:
                return Enrollment(checked[1], None, KEY_TYPE_AES_KEYWRAP, None)
        tree = None
        try:
            with st.transaction():
                known = st.group(gid) is not None
                current = {t.algorithm: t for t in st.teks(gid, KeyState.CURRENT)} if known else {}
                ck = st.current_kek(gid) if known and keys.kek is not None else None
                # check everything before the first write (a batch must not keep half of it)
                margins = _margins(group)
                expiring = []  # stored current TEKs a tentative fresh TEK replaces
                for tk in keys.teks:
                    cur = current.get(tek_label(tk.name, tk.suite))
                    if cur is not None and cur.spi != tk.spi and keys.tentative \
                            and not _usable(cur.expires, margins.get(tk.name, 1), now):
                        expiring.append(cur)
                    elif (cur is None and not keys.tentative) or (cur is not None and cur.spi != tk.spi):
                        raise StaleKeys(f"group {gid}: TEK {tk.name} changed since message 2")
                # a tentative KEK with another cipher than the stored one: the policy changed it
                replace_kek = keys.kek is not None and keys.tentative and ck is not None and ck.algorithm != keys.kek.cipher
                if keys.kek is not None and not replace_kek and (
                        (ck is None and not keys.tentative) or (ck is not None and ck.spi != keys.kek.spi)):
                    raise StaleKeys(f"group {gid}: KEK changed since message 2")
                if not known:
                    st.add_group(gid, _policy_digest(group))
                for cur in expiring:
                    st.set_tek_state(gid, cur.spi, KeyState.OLD)
                    del current[cur.algorithm]
                for tk in keys.teks:
                    if tek_label(tk.name, tk.suite) not in current:
                        st.add_tek(gid, tk.spi, tek_label(tk.name, tk.suite), tk.enc_keymat, auth_key=tk.auth_key or None,
                                   created=now, expires=tk.expires, state=KeyState.CURRENT)
                if keys.kek is not None and (ck is None or replace_kek):
                    st.add_kek(gid, keys.kek.spi, keys.kek.cipher, keys.kek.keymat, created=now,
                               expires=keys.kek.expires, state=KeyState.CURRENT)
                # the tree first: loading it checks it against the members table, which
                # must still hold this member's row (and leaf) when it re-registers
                tree = self._tree(group) if keys.kek is not None else None
                old = st.member(gid, member)
                if old is not None:
                    st.remove_member(gid, member)
                lkh_path = update = None
                leaf = None
                if tree is not None:
                    if member in tree:
                        leaf = tree.leaf_of(member)
                        epoch = tree.epoch
                    else:
                        jr = tree.join(member)
                        leaf, update, epoch = jr.leaf, jr.update, jr.epoch
                    lkh_path = tuple((kid.level, kid.handle, key) for kid, key in tree.path(member))
                st.add_member(gid, member, address, registered_at=now, leaf=leaf, protocol=protocol)
                if tree is not None:
                    st.save_lkh(gid, tree)
                seq = st.current_seq(gid) if keys.kek is not None else None
        except StaleKeys:
            self._cache.pop(gid, None)
            raise  # nothing was changed
        except BaseException:
            self._trees.pop(gid, None)  # the in-memory tree may be ahead of the store: reload
            raise
        if keys.tentative:
            self._tentative.pop(gid, None)
            self._cache.pop(gid, None)
        if self._checked is not None and tree is None:
            self._checked[gid] = (keys, seq)
        return Enrollment(seq, lkh_path, KEY_TYPE_AES_KEYWRAP, update)

    @contextlib.contextmanager
    def batch(self) -> Iterator["StoreKeysProvider"]:
        """One transaction for several :meth:`enroll` calls.  Inside it, the keys an enrollment
        checked (and persisted) are not checked again for the group's next members: nothing
        else writes to the store while the batch runs (one writer, the daemon's loop)."""
        outer = self._checked is None
        if outer:
            self._checked = {}
        tentative = dict(self._tentative)
        try:
            with self.store.transaction():
                yield self
        except BaseException:
            self._trees.clear()  # trees may hold joins that were rolled back: reload from the store
            if outer:
                # keys read or persisted inside the batch are not in the store: the tentative
                # keys it persisted are tentative again (the next enrollment persists them)
                self._cache.clear()
                self._tentative = tentative
            raise
        finally:
            if outer:
                self._checked = None

    # -- internals

    def _fits(self, group: GroupPolicy, keys: GroupKeys) -> bool:
        names = {(t.name, t.suite.name) for t in group.teks}
        have = {(t.name, t.suite) for t in keys.teks}
        kek_ok = (group.kek is None) == (keys.kek is None) and (keys.kek is None or keys.kek.cipher == group.kek.cipher.name)
        return names == have and kek_ok

    @staticmethod
    def _fresh(group: GroupPolicy, keys: GroupKeys, now: int) -> bool:
        """No TEK of ``keys`` is within its renewal margin of expiry (:func:`tek_renewal_margin`)."""
        margins = _margins(group)
        return all(_usable(t.expires, margins.get(t.name, 1), now) for t in keys.teks)

    def _stored(self, group: GroupPolicy, now: int) -> GroupKeys | None:
        gid = group.group_id
        st = self.store
        if st.group(gid) is None:
            return None
        current = {t.algorithm: t for t in st.teks(gid, KeyState.CURRENT)}
        margins = _margins(group)
        teks = []
        for tp in group.teks:
            t = current.get(tek_label(tp.name, tp.suite.name))
            if t is None or not _usable(t.expires, margins[tp.name], now):
                return None  # missing or (nearly) expired: fresh tentative keys
            teks.append(TekKeys(tp.name, t.spi, tp.suite.name, t.key, t.auth_key or b"", t.expires))
        kek = None
        if group.kek is not None:
            k = st.current_kek(gid)
            if k is None or k.algorithm != group.kek.cipher.name:
                return None
            kek = KekKeys(k.spi, k.algorithm, k.key, k.expires, self._pubkey(group))
        return GroupKeys(gid, tuple(teks), kek, False)

    def _taken(self, extra: set[int]) -> Callable[[int], bool]:
        st = self.store
        in_store: set[int] = set()
        for g in st.groups():
            in_store.update(t.spi for t in st.teks(g.group_id))
        for tk in self._tentative.values():
            in_store.update(t.spi for t in tk.teks)
        return lambda spi: spi in in_store or spi in extra

    def _generate(self, group: GroupPolicy, now: int) -> GroupKeys:
        """Tentative keys: the stored current ones where they exist and are not (nearly)
        expired, fresh ones for the rest."""
        gid = group.group_id
        st = self.store
        known = st.group(gid) is not None
        current = {t.algorithm: t for t in st.teks(gid, KeyState.CURRENT)} if known else {}
        used: set[int] = set()
        taken = self._taken(used)
        margins = _margins(group)
        teks = []
        for tp in group.teks:
            t = current.get(tek_label(tp.name, tp.suite.name))
            if t is not None and _usable(t.expires, margins[tp.name], now):
                teks.append(TekKeys(tp.name, t.spi, tp.suite.name, t.key, t.auth_key or b"", t.expires))
                continue
            spi = random_spi(taken, self._random)
            used.add(spi)
            enc, auth = new_tek_keymat(tp.suite, self._random)
            teks.append(TekKeys(tp.name, spi, tp.suite.name, enc, auth, now + tp.lifetime_s))
        kek = None
        if group.kek is not None:
            k = st.current_kek(gid) if known else None
            if k is not None and k.algorithm == group.kek.cipher.name:
                kek = KekKeys(k.spi, k.algorithm, k.key, k.expires, self._pubkey(group))
            else:
                spi = self._random(16)
                while not any(spi[:8]) or not any(spi[8:]):
                    spi = self._random(16)
                kek = KekKeys(spi, group.kek.cipher.name, new_kek_keymat(group.kek.cipher, self._random),
                              now + group.kek.lifetime_s, self._pubkey(group))
        log.info("gdoi: group %s: new %s keys generated (persisted at the first registration)",
                 group.label, "TEK/KEK" if kek else "TEK")
        return GroupKeys(gid, tuple(teks), kek, True)

    def _tree(self, group: GroupPolicy) -> LkhTree | None:
        gid = group.group_id
        if gid in self._trees:
            return self._trees[gid]
        tree = self.store.load_lkh(gid)
        if tree is None and self._lkh and group.kek is not None and group.kek.lkh:
            tree = LkhTree(degree=group.kek.lkh_degree, backward_secrecy=self._backward_secrecy,
                           random=self._random)
        self._trees[gid] = tree
        return tree

