#!/bin/sh
# vagrant/provision.sh NAME ADDRESS [--network-only]: provision one VM of the Vagrant lab.
#   1. tools/setup (the same script that prepares a development machine and CI);
#   2. multicast on the lab network: 224.0.0.0/4 routed to the interface holding ADDRESS (the
#      group's traffic and its rekeys go there, not to the VM's NAT interface).
# The Vagrantfile uploads and runs it with MSEC_ROOT=/msec (the synced folder);
# --network-only skips step 1 (tests/host/test_vagrant.py runs it in a namespace).
set -eu
name=$1
addr=$2
root=${MSEC_ROOT:-$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd)}
if [ "${3:-}" != --network-only ]; then
    "$root/tools/setup"
fi
dev=$(ip -o -4 addr show | awk -v a="$addr" '{ split($4, p, "/") } p[1] == a { print $2; exit }')
if [ -z "$dev" ]; then
    echo "provision: no interface has the address $addr (is the private network up?)" >&2
    exit 1
fi
ip route replace 224.0.0.0/4 dev "$dev"
echo "$name ready: $addr on $dev, multicast routed there; cd $root && sudo tools/test"
