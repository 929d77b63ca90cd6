"""BB3: group policy.

- `policy.model`: immutable group policy in protocol terms (groups, TEKs, KEK, authorization,
  credentials, daemon and role settings). No I/O.
- `policy.suites`: the algorithm table read by both the GDOI wire mapping and the XFRM installer.
- `policy.config`: TOML -> `DaemonConfig`, validated as a whole (`ConfigError` lists every
  problem), and `diff(old, new)` for reloads. The schema is documented there and in examples/.
"""

from policy.config import (
    Advisory,
    ConfigDiff,
    ConfigError,
    GroupChange,
    Problem,
    advisories,
    diff,
    load_config,
    parse_config,
)
from policy.model import DaemonConfig, Decision, GroupPolicy, Identity, IdKind, MemberGroup, TekPolicy

__all__ = [
    "Advisory",
    "advisories",
    "ConfigDiff",
    "ConfigError",
    "GroupChange",
    "Problem",
    "diff",
    "load_config",
    "parse_config",
    "DaemonConfig",
    "Decision",
    "GroupPolicy",
    "Identity",
    "IdKind",
    "MemberGroup",
    "TekPolicy",
]
