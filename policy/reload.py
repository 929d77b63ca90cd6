"""What a reload changes (`diff`) and what in a valid configuration deserves a second look
(`advisories`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from policy import model as m

__all__ = ["Advisory", "advisories", "PSK_TRIAL_LIMIT", "GroupChange", "ConfigDiff", "diff"]


PSK_TRIAL_LIMIT = 16
"""How many PSKs without addresses Main Mode tries (gkm.ike.PskStore.max_trials default)."""


@dataclass(frozen=True, slots=True)
class Advisory:
    """Something valid but worth a second look (printed by msecctl, logged by msecd)."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


def advisories(config: m.DaemonConfig) -> list[Advisory]:
    """Non-fatal remarks on a loaded configuration."""
    out: list[Advisory] = []
    ks = config.keyserver
    if ks is not None:
        unaddressed = [p for p in ks.psks if not p.addresses]
        if len(unaddressed) > PSK_TRIAL_LIMIT:
            # the key server tries the PSKs without addresses in file order (gkm.gdoi.phase1)
            beyond = [p.identity for p in unaddressed[PSK_TRIAL_LIMIT:]]
            shown = ", ".join(beyond[:5]) + (f" and {len(beyond) - 5} more" if len(beyond) > 5 else "")
            out.append(Advisory(
                "keyserver.psk",
                f"{len(unaddressed)} PSKs have no addresses; Main Mode tries at most "
                f"{PSK_TRIAL_LIMIT} by trial decryption, so members connecting from an address "
                f"no PSK lists fail phase 1 with AUTHENTICATION-FAILED if their PSK is one of "
                f"{shown}; give members' PSKs their addresses"))
        for i, g in enumerate(ks.groups):
            gp = f"keyserver.group[{i}]"
            if g.kek is None:
                out.append(Advisory(
                    gp, "no [kek]: no GROUPKEY-PUSH; members re-register before TEKs expire and "
                        "an evicted member keeps the keys until the TEK lifetime ends"))
            for rule in g.authorization.rules:
                if isinstance(rule, m.FqdnMatch):
                    out.append(Advisory(
                        f"{gp}.authorize.fqdns",
                        f"{rule} admits nobody: a member is authorized as what its credential "
                        f"proves, a PSK identity (psk_identities) or a certificate subject "
                        f"(subjects), never as an FQDN it merely presents"))
                    break
            for rule in g.authorization.rules:
                if isinstance(rule, m.AddressMatch) and rule.network.prefixlen == 0:
                    out.append(Advisory(
                        f"{gp}.authorize.addresses",
                        f"{rule.network} admits every peer that completes phase 1 with any "
                        f"configured PSK or any certificate under the trust anchors"))
            if g.mlkem == "required" and "gdoi" in g.protocols:
                out.append(Advisory(
                    f"{gp}.mlkem",
                    "ML-KEM-768 is required of G-IKEv2 members, but the group also serves GDOI, "
                    "whose members get the same keys over IKEv1 without post-quantum protection"))
            for j, t in enumerate(g.teks):
                if t.suite.counter_mode and t.multi_sender:
                    out.append(Advisory(
                        f"{gp}.tek[{j}].cipher",
                        f"{t.suite.name} with several senders sharing one key: IV uniqueness "
                        f"across senders rests on the kernel's random per-SA IV offset (no "
                        f"RFC 6054 sender IDs yet); prefer aes-cbc-*-hmac-* for large groups"))
    return out


# --------------------------------------------------------------------------- reload


@dataclass(frozen=True, slots=True)
class GroupChange:
    """A group present before and after a reload, and which of its fields differ.

    Field names are those of `GroupPolicy` (key server role) or `MemberGroup` (member role).
    """

    group_id: int
    fields: tuple[str, ...]

    @property
    def needs_rekey(self) -> bool:
        """Key server: TEK or KEK policy changed; members need new SAs (push or re-pull)."""
        return bool({"teks", "kek"} & set(self.fields))

    @property
    def needs_reauthorization(self) -> bool:
        """Key server: who may join (or send) changed; current members must be re-checked,
        and any no longer admitted evicted (which itself needs a rekey)."""
        return "authorization" in self.fields or "teks" in self.fields

    @property
    def needs_reregistration(self) -> bool:
        """Member: key servers, credentials or the protocol (or what its IKE SA offers, its
        PPK) changed; register again with the new ones."""
        return bool({"key_servers", "credentials", "key_server_authorization", "phase1", "protocol", "sender",
                     "mlkem", "ppk"}
                    & set(self.fields))


@dataclass(frozen=True, slots=True)
class ConfigDiff:
    """What a reload changes. Group ids per role; settings as dotted names."""

    keyserver_added: tuple[int, ...] = ()
    keyserver_removed: tuple[int, ...] = ()
    keyserver_changed: tuple[GroupChange, ...] = ()
    member_added: tuple[int, ...] = ()
    member_removed: tuple[int, ...] = ()
    member_changed: tuple[GroupChange, ...] = ()
    settings_changed: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not any(getattr(self, f.name) for f in dataclasses.fields(self))


def _diff_groups(old, new) -> tuple[tuple[int, ...], tuple[int, ...], tuple[GroupChange, ...]]:
    o = {g.group_id: g for g in old}
    n = {g.group_id: g for g in new}
    added = tuple(sorted(n.keys() - o.keys()))
    removed = tuple(sorted(o.keys() - n.keys()))
    changed = []
    for gid in sorted(o.keys() & n.keys()):
        if o[gid] != n[gid]:
            fields = tuple(f.name for f in dataclasses.fields(o[gid])
                           if getattr(o[gid], f.name) != getattr(n[gid], f.name))
            changed.append(GroupChange(gid, fields))
    return added, removed, tuple(changed)


def diff(old: m.DaemonConfig, new: m.DaemonConfig) -> ConfigDiff:
    """Groups added, removed and changed per role, and changed daemon/role settings.

    A group whose role disappears entirely counts as removed. `settings_changed` names fields
    outside the groups (e.g. "daemon.state_dir", "keyserver.listen", "keyserver.psks") and the
    appearance or disappearance of a role ("keyserver", "member").

    Intended reload semantics (the daemon applies them): removed key server groups stop
    (their members' SAs expire or are deleted by a push); added ones start; changed ones
    rekey when `needs_rekey` and re-check members when `needs_reauthorization`; a change of
    "daemon.*", "keyserver.listen" or "keyserver.port" rebinds sockets; "keyserver.psks" and
    "keyserver.certificate" apply to new phase 1 exchanges only.
    """
    settings: list[str] = []
    for f in dataclasses.fields(m.DaemonSettings):
        if getattr(old.daemon, f.name) != getattr(new.daemon, f.name):
            settings.append(f"daemon.{f.name}")
    ok, nk = old.keyserver, new.keyserver
    if (ok is None) != (nk is None):
        settings.append("keyserver")
    elif ok is not None and nk is not None:
        for f in dataclasses.fields(m.KeyServerSettings):
            if f.name != "groups" and getattr(ok, f.name) != getattr(nk, f.name):
                settings.append(f"keyserver.{f.name}")
    om, nm = old.member, new.member
    if (om is None) != (nm is None):
        settings.append("member")
    ks = _diff_groups(ok.groups if ok else (), nk.groups if nk else ())
    mg = _diff_groups(om.groups if om else (), nm.groups if nm else ())
    return ConfigDiff(
        keyserver_added=ks[0], keyserver_removed=ks[1], keyserver_changed=ks[2],
        member_added=mg[0], member_removed=mg[1], member_changed=mg[2],
        settings_changed=tuple(settings),
    )
