"""``msecctl sa``: msec's own SAs and policies in the kernel, per member group, with the
kernel's counters and each SA's expiry.  Read-only: one dump of states and policies (the
installer's :meth:`xfrm.groupsa.GroupSaInstaller.installed` per group) and one of counters
(keys are never decoded for the counters, and never put in the answer).

Each SA: SPI, direction (``out`` when a policy of the group sends on it, else ``in``),
suite, mode, selector, the kernel's byte and packet counts, replay and integrity drops, when
it was added and first used, and when its hard (and soft) lifetime ends (added + the add
lifetime, Unix seconds).  Each policy: selector, direction, priority and the SPI its template
names (0: any SA of the group's reqid).
"""

from __future__ import annotations

from typing import Any, Iterable

__all__ = ["group_sas"]


def _when(add_time: int, seconds: int | None) -> int | None:
    return add_time + seconds if add_time and seconds else None


def _selector(sel) -> dict[str, Any]:
    return {"src": str(sel.src), "dst": str(sel.dst), "proto": sel.proto}


def group_sas(group_id: int, name: str | None, view, counters: Iterable) -> dict[str, Any]:
    """One group's entry; ``view``: its ``InstalledGroup`` (None: no kernel installer);
    ``counters``: ``xfrm.SaCounters`` of msec's states (any group's)."""
    out: dict[str, Any] = {"id": group_id, "name": name, "sas": [], "policies": []}
    if view is None:
        return out
    by_spi = {c.spi: c for c in counters if c.reqid == view.reqid}
    teks = {t.spi: t for t in view.teks}
    sending = set(view.sending.values())
    for st in sorted(view.states, key=lambda s: s.spi):
        c = by_spi.get(st.spi)
        tek = teks.get(st.spi)
        added = c.add_time if c is not None else 0
        lt = st.lifetime
        out["sas"].append({
            "spi": f"0x{st.spi:08x}",
            "direction": "out" if st.spi in sending else "in",
            "suite": tek.suite if tek is not None else None,
            "mode": st.mode.name.lower(),
            "src": str(st.src), "dst": str(st.dst),
            "selector": (None if tek is None else
                         {"src": str(tek.selector.src), "dst": str(tek.selector.dst),
                          "proto": tek.selector.protocol}),
            "reqid": f"0x{st.reqid:08x}",
            "bytes": c.bytes if c is not None else None,
            "packets": c.packets if c is not None else None,
            "replay_dropped": c.replay_dropped if c is not None else None,
            "integrity_failed": c.integrity_failed if c is not None else None,
            "added": added or None,
            "first_used": (c.use_time or None) if c is not None else None,
            "soft_expires": _when(added, lt.soft_add_seconds),
            "expires": _when(added, lt.hard_add_seconds),
        })
    for p in view.policies:
        t = p.templates[0] if p.templates else None
        out["policies"].append({**_selector(p.selector), "direction": p.direction.name.lower(),
                                "priority": p.priority,
                                "spi": f"0x{t.spi:08x}" if t is not None else None})
    return out
