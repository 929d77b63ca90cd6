#!/bin/sh
# Init (PID 1) of the User-mode Linux kernel lab; started by tools/lab, not by hand.
#
# The kernel passes unknown `key=value` boot parameters to init as environment variables:
#   msec_run=/abs/host/dir   run folder (job.sh, rc, modules report); mounted read-write
#   msec_ovl=/abs/dir        optional: overlay this read-only tree with a throwaway tmpfs
#   msec_rw=/a:/b            optional: more host folders mounted read-write at the same path
#   msec_ro=/a:/b            optional: host folders below /tmp, /run or /var/tmp (hidden by the
#                            tmpfs mounts here) mounted again read-only at the same path
# The root file system is the host's, read-only (hostfs). stdout/stderr of the job are
# /dev/tty1 and /dev/tty2, which tools/lab wired to pipes on the host (con1/con2).
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH

poweroff_now() {
    sync
    echo o >/proc/sysrq-trigger 2>/dev/null
    sleep 2
    poweroff -f -f 2>/dev/null
    halt -f -f 2>/dev/null
    exit 0   # init exiting makes the kernel panic, and UML then exits too
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
# The kernel may have mounted devtmpfs on /dev already (CONFIG_DEVTMPFS_MOUNT).
[ -c /dev/tty1 ] || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null
mount -t tmpfs -o mode=1777 shm /dev/shm
mount -t tmpfs -o mode=1777 tmp /tmp
mount -t tmpfs -o mode=755 run /run
mount -t tmpfs -o mode=1777 vartmp /var/tmp
mkdir -p /run/netns /run/lock
[ -L /var/run ] || mount -t tmpfs -o mode=755 varrun /var/run
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null

if [ -n "$msec_ro" ]; then
    old_ifs=$IFS; IFS=:
    for d in $msec_ro; do
        mkdir -p "$d" && mount -r -t hostfs none "$d" -o "$d" \
            || echo "lab: cannot show $d inside the lab" >/dev/tty2
    done
    IFS=$old_ifs
fi

if [ -n "$msec_ovl" ] && [ -d "$msec_ovl" ]; then
    modprobe -q overlay 2>/dev/null
    mkdir -p /tmp/.ovl/up /tmp/.ovl/work
    mount -t overlay overlay -o "lowerdir=$msec_ovl,upperdir=/tmp/.ovl/up,workdir=/tmp/.ovl/work" "$msec_ovl" \
        2>/dev/null || echo "lab: overlay on $msec_ovl failed; it stays read-only" >/dev/tty2
fi

if ! mount -t hostfs none "$msec_run" -o "$msec_run"; then
    echo "lab: cannot mount the run folder $msec_run" >/dev/tty2
    poweroff_now
fi
if [ -n "$msec_rw" ]; then
    old_ifs=$IFS; IFS=:
    for d in $msec_rw; do
        mount -t hostfs none "$d" -o "$d" || echo "lab: cannot mount $d read-write" >/dev/tty2
    done
    IFS=$old_ifs
fi

hostname msec-lab 2>/dev/null
ip link set lo up 2>/dev/null

# Modules the project needs; a missing one is reported, not fatal.
: >"$msec_run/modules.missing"
mods=$(cat "$msec_run/modules" 2>/dev/null)
modprobe -q -a $mods 2>/dev/null
for m in $mods; do
    [ -d "/sys/module/$(echo "$m" | tr - _)" ] || modprobe -q -n "$m" 2>/dev/null \
        || echo "$m" >>"$msec_run/modules.missing"
done

stty -F /dev/tty1 raw -echo 2>/dev/null
stty -F /dev/tty2 raw -echo 2>/dev/null

# The job writes into pipes (as under a CI runner), not into the tty consoles directly: a
# program that sees a terminal would colour and page its output.
mkfifo /run/.lab-out /run/.lab-err
cat /run/.lab-out >/dev/tty1 &
out_pid=$!
cat /run/.lab-err >/dev/tty2 &
err_pid=$!
sh "$msec_run/job.sh" </dev/null >/run/.lab-out 2>/run/.lab-err
rc=$?
wait $out_pid $err_pid
echo $rc >"$msec_run/rc.tmp" && mv "$msec_run/rc.tmp" "$msec_run/rc"
poweroff_now
