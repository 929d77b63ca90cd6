"""Kernel tier: runs inside the kernel lab (tools/lab exec), a kernel that carries ESP.
Topologies: the `netlab` / `netlab_factory` fixtures (tools/netlab.py), e.g.

    def test_x(netlab):
        h1, h2, h3 = netlab.hosts
        h1.run("ip", "xfrm", "state", "add", ...)
        rx = h2.listen("239.1.1.1", 5000); h1.send("239.1.1.1", 5000, b"x")
        with netlab.capture() as cap: ...
        assert cap.protocols() == {"esp": 1}
"""
import os


def _loaded(mod: str) -> bool:
    try:
        with open("/proc/modules") as f:
            return any(line.split()[0] == mod for line in f)
    except OSError:
        return False


def pytest_report_header(config):
    esp = "loaded" if _loaded("esp4") else (
        "built in" if os.path.isdir("/sys/module/esp4") else "NOT loaded")
    return [f"kernel lab: {os.environ.get('MSEC_LAB_KERNEL', 'not in the lab')}, "
            f"kernel {os.uname().release}, esp4 {esp}"]
