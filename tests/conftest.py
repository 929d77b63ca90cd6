"""Test tiers (see README.md, "Tests").

- unit:   tests/unit, pure Python, anywhere.
- host:   tests/host (marker `host`, added automatically): root and real netlink in private
          network namespaces on the host kernel. Without root they FAIL, never skip.
- kernel: tests/kernel (marker `kernel`, added automatically): need a kernel with ESP; they run
          only inside the kernel lab (MSEC_LAB=1, set by tools/lab). Outside it they are
          deselected with a message; tools/test runs them with
          `tools/lab exec -- .venv/bin/python -m pytest tests/kernel`.
"""
import os
import subprocess
import uuid

import pytest

from tools.netlab import netlab, netlab_factory  # noqa: F401  (fixtures)

IN_LAB = os.environ.get("MSEC_LAB") == "1"
TESTS = os.path.dirname(os.path.abspath(__file__))
_deselected_kernel: list = []


def _tier(item) -> str | None:
    rel = os.path.relpath(str(item.path), TESTS).split(os.sep)
    return rel[0] if rel and rel[0] in ("host", "kernel") else None


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = _tier(item)
        if tier and not item.get_closest_marker(tier):
            item.add_marker(getattr(pytest.mark, tier))
    if IN_LAB:
        return
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker("kernel") else keep).append(item)
    if drop:
        _deselected_kernel.extend(drop)
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_terminal_summary(terminalreporter):
    if _deselected_kernel:
        terminalreporter.write_line(
            f"NOTE: {len(_deselected_kernel)} kernel-tier test(s) deselected: they need a kernel "
            "with ESP and run inside the kernel lab (tools/test does that; or "
            "tools/lab exec -- .venv/bin/python -m pytest tests/kernel).", yellow=True)


def pytest_runtest_setup(item):
    if item.get_closest_marker("host") or item.get_closest_marker("kernel"):
        if os.geteuid() != 0:
            pytest.fail(f"{item.nodeid} needs root (network namespaces, netlink): this tier "
                        "cannot run unprivileged; run it as root (tools/test does)",
                        pytrace=False)


@pytest.fixture
def netns(netlab_factory):
    """A private network namespace (a one-host netlab: eth0 on a bridge, lo up).
    The value is the tools.netlab.Host: .ns is its name, .run()/.call()/.inside() work there."""
    return netlab_factory(1).hosts[0]


@pytest.fixture
def xns():
    """A private, empty network namespace (its name), for XFRM tests that need no interfaces."""
    name = f"msec-test-{uuid.uuid4().hex[:10]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
