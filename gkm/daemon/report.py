"""What msecd shows about addresses and keys in logs and ``msecctl`` replies: never key material."""

from __future__ import annotations

import ipaddress
import time
from typing import Any

from gkm.gdoi.keys import GroupTek

__all__ = ["fmt_addr", "fmt_time_utc", "host_of", "tek_summary", "tek_expiry"]


def fmt_addr(addr: Any) -> str:
    """("192.0.2.1", 848) -> "192.0.2.1:848", IPv6 in brackets; anything else as ``str``."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = str(addr[0])
        return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
    return str(addr)


def fmt_time_utc(t: float) -> str:
    """Unix seconds as "2026-01-02 03:04:05 UTC"."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def host_of(address: str) -> str | None:
    """A member's stored address ("a.b.c.d", "a.b.c.d:port", "[v6]:port", "v6") -> host."""
    a = str(address).strip()
    for cand in (a, a.rsplit(":", 1)[0].strip("[]")):
        try:
            return str(ipaddress.ip_address(cand))
        except ValueError:
            continue
    return None


def tek_summary(t: GroupTek, registered_at: float | None = None) -> dict[str, Any]:
    """What may be shown about a TEK: SPI, selector, suite, mode, direction, lifetime."""
    out: dict[str, Any] = {
        "spi": f"0x{t.spi:08x}", "suite": t.suite, "mode": t.mode.value,
        "direction": t.direction.name.lower(), "src": str(t.selector.src),
        "dst": str(t.selector.dst),
        "lifetime_s": t.lifetime_s,
    }
    if registered_at is not None:
        out["expires_at"] = registered_at + t.lifetime_s
    return out


def tek_expiry(t: GroupTek, received_at: float) -> float:
    """When a TEK received at ``received_at`` (with its remaining lifetime) expires."""
    return received_at + t.lifetime_s
