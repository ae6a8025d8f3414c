#!/bin/bash
# Boots Debian's own kernel under qemu (TCG) with the host's root shared
# read-only over 9p, and runs the cgroup tests inside it against a real,
# pure cgroup v2 hierarchy (every controller free). Our build hosts bind
# memory/cpu/pids to cgroup v1, so this is the only place the v2 backend
# meets a real kernel. docs/CGROUPS.md says what it covers.
#
# Usage: scripts/vm/run-vm-tests.sh [COMMAND...]
#   With no command it runs the swift-testing suites whose names match
#   $VM_TEST_FILTER (default "Cgroup|HostID|KernelCount|SpecDevicesTests|
#   DeviceAccessTests": budgets, the cgroup namespace, host id ranges,
#   kernel counts, the OCI runtime's lifecycle (OCICgroupLifecycleTests) and
#   its device allowlist as the eBPF device program: read-only rules,
#   update) from the debug test binary.
#   Result lines go to the serial console (stdout here); the exit status is
#   the tests' (1 when the VM gave no result at all).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${VM_WORK:-$ROOT/.build/vm}
TIMEOUT=${VM_TIMEOUT:-600}
FILTER=${VM_TEST_FILTER:-Cgroup|HostID|KernelCount|SpecDevicesTests|DeviceAccessTests}
TESTBIN=${VM_TEST_BINARY:-$ROOT/.build/debug/stockadePackageTests.xctest}

KERNEL=${VM_KERNEL:-$(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V | tail -1)}
[ -n "$KERNEL" ] && [ -r "$KERNEL" ] || { echo "run-vm-tests: no readable /boot/vmlinuz-* (install linux-image-amd64)" >&2; exit 1; }
KVER=${KERNEL#/boot/vmlinuz-}
MODDIR=/lib/modules/$KVER
[ -d "$MODDIR" ] || { echo "run-vm-tests: $MODDIR missing for $KERNEL" >&2; exit 1; }
# A dynamic busybox has an ELF interpreter (the loader); the static one has none.
BUSYBOX=${VM_BUSYBOX:-/bin/busybox}
[ -x "$BUSYBOX" ] && ! readelf -l "$BUSYBOX" 2>/dev/null | grep -q INTERP || { echo "run-vm-tests: need a static busybox at $BUSYBOX (apt install busybox-static)" >&2; exit 1; }
command -v qemu-system-x86_64 >/dev/null || { echo "run-vm-tests: qemu-system-x86_64 missing (apt install qemu-system-x86)" >&2; exit 1; }

if [ $# -gt 0 ]; then
	CMD="$*"
else
	[ -x "$TESTBIN" ] || { echo "run-vm-tests: $TESTBIN missing; run 'swift build --build-tests' first" >&2; exit 1; }
	CMD="$TESTBIN --testing-library swift-testing --filter '$FILTER'"
fi

# The static workload program the tests run (the tree is read-only in the VM).
WORKLOAD=$ROOT/.build/stockade-workload
if [ ! -x "$WORKLOAD" ] || [ "$ROOT/Tests/Workloads/workload.c" -nt "$WORKLOAD" ]; then
	mkdir -p "$ROOT/.build"
	cc -static -O2 -Wall -Wextra -o "$WORKLOAD" "$ROOT/Tests/Workloads/workload.c"
fi

# The initramfs: busybox, the virtio/9p modules, and /init.
rm -rf "$WORK/initramfs"
mkdir -p "$WORK/initramfs"/{bin,dev,proc,sys,host,modules}
cp "$BUSYBOX" "$WORK/initramfs/bin/busybox"
MODULES="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk netfs fscache 9pnet 9pnet_virtio 9p"
for m in $MODULES; do
	f=$(find "$MODDIR/kernel" -name "$m.ko*" | head -1)
	if [ -z "$f" ]; then continue; fi   # built in on this kernel
	case "$f" in
	*.ko.xz) xz -dc "$f" > "$WORK/initramfs/modules/$m.ko" ;;
	*.ko.zst) zstd -qdc "$f" > "$WORK/initramfs/modules/$m.ko" ;;
	*.ko.gz) gzip -dc "$f" > "$WORK/initramfs/modules/$m.ko" ;;
	*) cp "$f" "$WORK/initramfs/modules/$m.ko" ;;
	esac
done

# The command runs in the host's tree (read-only) as root (PID 1), with a fresh
# cgroup2 hierarchy at /sys/fs/cgroup and tmpfs wherever it must write.
cat > "$WORK/initramfs/run-in-vm.sh" <<INNER
#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp TMPDIR=/tmp
export STOCKADE_EXPECT_CGROUP=v2 STOCKADE_WORKLOAD="$WORKLOAD" NO_COLOR=1
cd "$ROOT"
echo "vm: kernel \$(uname -r), cgroup2 controllers: \$(cat /sys/fs/cgroup/cgroup.controllers)"
# /dev/fuse and /dev/net/tun: the device tests' harmless nodes (modules here).
modprobe -q fuse 2>/dev/null; modprobe -q tun 2>/dev/null
$CMD
echo "VM-RESULT rc=\$?"
sync
echo o > /proc/sysrq-trigger
sleep 10 2>/dev/null
INNER

cat > "$WORK/initramfs/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk netfs fscache 9pnet 9pnet_virtio 9p; do
	[ -f /modules/$m.ko ] && insmod /modules/$m.ko
done
if ! mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /host; then
	echo "VM-RESULT rc=97 (9p mount failed)"; poweroff -f
fi
# The checkout may itself live under /tmp, /run or /root (a CI clone often
# does); the tmpfs mounts below would hide it, so hold it aside and bind it
# back on top afterwards.
ROOT=$(cat /root-path)
case "$ROOT" in
/tmp/*|/run/*|/root/*) mkdir -p /keep && mount -o bind "/host$ROOT" /keep && KEEP=1 ;;
esac
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t cgroup2 none /host/sys/fs/cgroup
mount -t devtmpfs dev /host/dev
mkdir -p /host/dev/pts /host/dev/shm 2>/dev/null
mount -t tmpfs -o size=512m,mode=1777 tmp /host/tmp
mount -t tmpfs tmp /host/run
mount -t tmpfs -o size=512m tmp /host/root 2>/dev/null
if [ -n "$KEEP" ]; then
	mkdir -p "/host$ROOT" && mount -o bind /keep "/host$ROOT"
fi
cp /run-in-vm.sh /host/tmp/run-in-vm.sh
# switch_root, not chroot: the kernel refuses new user namespaces to a
# chrooted process, and the jails need them. The script runs as PID 1 and
# powers the VM off itself.
exec switch_root /host /bin/sh /tmp/run-in-vm.sh
INIT
chmod +x "$WORK/initramfs/init"
printf '%s\n' "$ROOT" > "$WORK/initramfs/root-path"
(cd "$WORK/initramfs" && find . | cpio -o -H newc --quiet | gzip -1) > "$WORK/initramfs.cpio.gz"

# A small empty disk, so that io.max has a block device to limit.
truncate -s 1M "$WORK/disk.img"

LOG="$WORK/console.log"
echo "run-vm-tests: booting $KERNEL (TCG, 2 vCPUs, 2 GiB), running: $CMD"
set +e
timeout --foreground "$TIMEOUT" qemu-system-x86_64 -accel tcg,thread=multi -cpu max -m 2048 -smp 2 \
	-nographic -no-reboot -kernel "$KERNEL" -initrd "$WORK/initramfs.cpio.gz" \
	-append "console=ttyS0 quiet panic=-1" \
	-fsdev local,id=r,path=/,security_model=none,readonly=on,multidevs=remap \
	-device virtio-9p-pci,fsdev=r,mount_tag=hostroot \
	-drive file="$WORK/disk.img",if=virtio,format=raw </dev/null 2>&1 | tee "$LOG"
qrc=${PIPESTATUS[0]}
set -e
result=$(grep -a -o 'VM-RESULT rc=[0-9]*' "$LOG" | tail -1 | sed 's/.*rc=//')
if [ -z "$result" ]; then
	echo "run-vm-tests: the VM gave no result (qemu exit $qrc; 124 means it ran past ${TIMEOUT}s)" >&2
	exit 1
fi
exit "$result"
