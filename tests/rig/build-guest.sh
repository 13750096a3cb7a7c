#!/bin/bash
# build-guest.sh: builds the rig's guest, a stock Debian 12 kernel plus a tiny busybox initramfs,
# into $RIG_CACHE (default /var/tmp/storagenode-rig). Idempotent: silent when the guest is already
# built and up to date. Part of StorageNode's test rig (tests/rig/README.md).
#
# Why: the machine we run on has a kernel without nvme-tcp, nvmet, rdma_rxe or configfs, and no
# usable KVM. So tests boot Debian's own kernel under QEMU (TCG), where all of those are modules.
# The guest mounts the host's root read-only over 9p and runs a test script from it (run-guest.sh),
# so every tool the host has (nvme-cli, fio, perftest, dotnet, ...) is usable inside the guest.
#
# Exit status: 0 when the guest is ready (vmlinuz, initrd.gz and kver in $RIG_CACHE), else non-zero
# with the reason on stderr. Environment: RIG_CACHE; RIG_KERNEL_PKG (pin a kernel package, e.g.
# linux-image-6.1.0-56-amd64); RIG_BUILD_WAIT (seconds to wait for a concurrent build, default 900).
set -euo pipefail
RIG_CACHE=${RIG_CACHE:-/var/tmp/storagenode-rig}
here=$(cd "$(dirname "$0")" && pwd)
die() { echo "build-guest: $*" >&2; exit 1; }
sudo=; [ "$(id -u)" = 0 ] || sudo=sudo

# 1. Host packages: QEMU, the static busybox for the initramfs, and the user-space tools the guest
#    runs from the shared host root. Installed only when missing (apt-get update only then).
need="qemu-system-x86 busybox-static socat nvme-cli fio kmod cpio e2fsprogs iproute2 jq util-linux
      rdma-core ibverbs-utils perftest rdmacm-utils"
missing=$(for p in $need; do
  [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || echo "$p"; done)
if [ -n "$missing" ]; then
  echo "build-guest: installing" $missing >&2
  [ -z "$sudo" ] || command -v sudo >/dev/null || die "need root (or sudo) to install:" $missing
  $sudo apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null ||
    die "could not install:" $missing
fi
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found after installing qemu-system-x86"

# 2. Modules the guest loads, in this order (modprobe resolves their dependencies below).
#    configfs/nvmet*: Linux target; nvme-tcp/nvme-rdma: Linux host (native multipath is built into
#    nvme-core); crc32*/crc32c*: rdma_rxe asks for a crc32 driver at load time and NVMe/TCP digests
#    for crc32c, which the initramfs (no modprobe) cannot load on demand; null_blk and loop:
#    RAM-backed namespaces; ext4: file system tests; 9p/virtio: the host root and the run folder.
mods="virtio_pci virtio_net 9pnet_virtio 9p configfs crc32_generic crc32-pclmul crc32c_generic
      crc32c-intel loop null_blk ext4 nvme-tcp nvme-rdma nvmet nvmet-tcp nvmet-rdma
      rdma_rxe ib_uverbs rdma_ucm"

mkdir -p "$RIG_CACHE"; cd "$RIG_CACHE"
# One build at a time per cache (two test processes may start at once); the lock waits, bounded.
exec 9> "$RIG_CACHE/.build.lock"
flock -w "${RIG_BUILD_WAIT:-900}" 9 || die "another build of $RIG_CACHE did not finish within ${RIG_BUILD_WAIT:-900} s"

# The kernel: Debian's current 6.1 image unless RIG_KERNEL_PKG names one. Without package lists
# (fresh machine) apt-get update runs; offline, the package of the image already built is kept.
kdep() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}'; }
kpkg=${RIG_KERNEL_PKG:-$(kdep)}
[ -n "$kpkg" ] || kpkg=$(cut -d' ' -f1 stamp 2>/dev/null || true)
[ -n "$kpkg" ] || { $sudo apt-get update -qq || true; kpkg=$(kdep); }
[ -n "$kpkg" ] || die "cannot tell which kernel package to use (apt-cache depends linux-image-amd64 is empty; set RIG_KERNEL_PKG)"
# Inputs: the kernel package, these scripts, the busybox build. Any change rebuilds the image.
stamp="$kpkg $(cat "$here/build-guest.sh" "$here/guest-init" | md5sum | cut -c1-12) $(dpkg-query -W -f='${Version}' busybox-static)"
[ -f initrd.gz ] && [ -f vmlinuz ] && [ -f kver ] && [ "$(cat stamp 2>/dev/null)" = "$stamp" ] && exit 0

# 3. The kernel package (about 70 MB, kept in the cache), unpacked for the build only (400 MB).
if ! ls "${kpkg}"_*.deb >/dev/null 2>&1; then
  # (apt's package lists may be stale: update them and try again)
  if ! apt-get download -qq -o APT::Sandbox::User=root "$kpkg" &&
     ! { $sudo apt-get update -qq && apt-get download -qq -o APT::Sandbox::User=root "$kpkg"; }; then
    old=$(cat stamp 2>/dev/null || true)
    # Offline with an image built from these same scripts: keep it (its kernel is older, not wrong).
    if [ -f initrd.gz ] && [ -f vmlinuz ] && [ -f kver ] && [ -n "$old" ] && [ "${old#* }" = "${stamp#* }" ]; then
      echo "build-guest: could not download $kpkg; keeping the image built from ${old%% *}" >&2; exit 0
    fi
    die "could not download $kpkg"
  fi
  find . -maxdepth 1 -name '*.deb' ! -name "${kpkg}_*.deb" -delete   # the previous kernel's package
fi
work=$(mktemp -d "$RIG_CACHE/build.XXXXXX"); trap 'rm -rf "$work"' EXIT
mkdir "$work/kernel"; dpkg -x "${kpkg}"_*.deb "$work/kernel"
kver=$(ls "$work/kernel/lib/modules")
depmod -b "$work/kernel" "$kver"

# 4. The initramfs: busybox, the modules (dependencies first) and /init.
I=$work/initrd
mkdir -p "$I"/{bin,dev,proc,sys,mnt/root,lib/modules}
for m in $mods; do
  modprobe -d "$work/kernel" -S "$kver" --show-depends "$m" | awk '$1 == "insmod" {print $2}'
done | awk '!seen[$0]++' > "$work/modules.txt"
[ -s "$work/modules.txt" ] || die "no modules found in $kpkg"
while read -r ko; do cp "$ko" "$I/lib/modules/"; done < "$work/modules.txt"
xargs -n1 basename < "$work/modules.txt" > "$I/lib/modules/order"
cp /bin/busybox "$I/bin/busybox"
cp "$here/guest-init" "$I/init"; chmod 755 "$I/init"
(cd "$I" && find . | cpio -o -H newc --quiet | gzip -1 > "$work/initrd.gz")
cp "$work/kernel/boot/vmlinuz-$kver" "$work/vmlinuz"
echo "$kver" > "$work/kver"
# Replace the image atomically (a guest starting now reads either the old or the new one).
sed -i "s|^$work/kernel||" "$work/modules.txt"
for f in modules.txt vmlinuz initrd.gz kver; do mv -f "$work/$f" "$RIG_CACHE/$f"; done
echo "$stamp" > stamp.new && mv -f stamp.new stamp
echo "build-guest: kernel $kver ($kpkg), $(wc -l < modules.txt) modules, in $RIG_CACHE"
