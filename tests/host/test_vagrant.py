"""The Vagrant lab (vagrant/): as far as it can be checked without a hypervisor.  Vagrant
itself (Debian's package, installed by tools/setup) validates the Vagrantfile, and the VMs'
provisioning script runs for real in a private network namespace holding a lab address."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.host
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VAGRANT_DIR = os.path.join(ROOT, "vagrant")


def test_vagrant_validates_the_vagrantfile(tmp_path):
    vagrant = shutil.which("vagrant")
    assert vagrant, "vagrant is missing: tools/setup installs it"
    env = {**os.environ, "VAGRANT_HOME": str(tmp_path / "home"),
           "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot"), "VAGRANT_CHECKPOINT_DISABLE": "1"}
    # --ignore-provider: no VirtualBox or libvirt here; everything else is checked
    r = subprocess.run([vagrant, "validate", "--ignore-provider"], cwd=VAGRANT_DIR, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Vagrantfile validated successfully" in r.stdout


def test_vagrantfile_provisions_with_the_shared_script():
    text = open(os.path.join(VAGRANT_DIR, "Vagrantfile")).read()
    assert 'path: "provision.sh", args: [name, addr]' in text
    assert '"MSEC_ROOT" => "/msec"' in text and '"..", "/msec"' in text
    for name, addr in (("ks", 10), ("m1", 11), ("m2", 12), ("m3", 13)):
        assert f'"{name}" => "192.168.77.{addr}"' in text
    script = open(os.path.join(VAGRANT_DIR, "provision.sh")).read()
    assert '"$root/tools/setup"' in script  # the one setup script, not a copy


def test_provision_routes_multicast_to_the_lab_interface(netns):
    script = os.path.join(VAGRANT_DIR, "provision.sh")
    netns.run("ip", "addr", "add", "192.168.77.11/24", "dev", "eth0")
    r = netns.run(script, "m1", "192.168.77.11", "--network-only", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "m1 ready: 192.168.77.11 on eth0" in r.stdout
    route = netns.run("ip", "-o", "route", "show", "224.0.0.0/4").stdout
    assert "dev eth0" in route
    # idempotent: a second provisioning run changes nothing and succeeds
    assert netns.run(script, "m1", "192.168.77.11", "--network-only", check=False).returncode == 0
    # an address no interface holds: a clear error, no route touched
    r = netns.run(script, "m2", "192.168.77.12", "--network-only", check=False)
    assert r.returncode == 1 and "no interface has the address 192.168.77.12" in r.stderr
