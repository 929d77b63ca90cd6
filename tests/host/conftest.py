"""Host tier: root, real netlink, private network namespaces, the host's kernel (XFRM policies
work there; ESP states may not: those tests belong in tests/kernel)."""
import os


def pytest_report_header(config):
    return [f"host tier: kernel {os.uname().release}, "
            f"{'root' if os.geteuid() == 0 else 'NOT root (host tests will fail)'}"]
