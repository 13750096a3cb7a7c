#!/bin/bash
# build-guest.sh: builds the rig's guest, a stock Debian 12 kernel plus a tiny busybox initramfs,
# into $RIG_CACHE (default /var/tmp/storagenode-rig). Idempotent: silent when the guest is already
# built and up to date. Part of StorageNode's test rig (tests/rig/README.md).
#
# Why: the machine we run on has a kernel without nvme-tcp, nvmet, rdma_rxe or configfs, and no
# usable KVM. So tests boot Debian's own kernel under QEMU (TCG), where all of those are modules.
# The guest mounts the host's root read-only over 9p and runs a test script from it (run-guest.sh),
# so every tool the host has (nvme-cli, fio, perftest, dotnet, ...) is usable inside the guest.
set -euo pipefail
RIG_CACHE=${RIG_CACHE:-/var/tmp/storagenode-rig}
here=$(cd "$(dirname "$0")" && pwd)

# 1. Host packages: QEMU, the static busybox for the initramfs, and the user-space tools the guest
#    runs from the shared host root.
need="qemu-system-x86 busybox-static socat nvme-cli fio kmod cpio e2fsprogs iproute2 jq
      rdma-core ibverbs-utils perftest rdmacm-utils"
missing=$(for p in $need; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
  echo "build-guest: installing" $missing
  sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# 2. Modules the guest loads, in this order (modprobe resolves their dependencies below).
#    configfs/nvmet*: Linux target; nvme-tcp/nvme-rdma: Linux host (native multipath is built into
#    nvme-core); rdma_rxe: soft-RoCE, which needs crc32_generic at load time; null_blk and loop:
#    RAM-backed namespaces; 9p/virtio: the host root and the rig's I/O share.
mods="virtio_pci virtio_net 9pnet_virtio 9p configfs crc32_generic crc32-pclmul crc32c_generic
      crc32c-intel loop null_blk ext4 nvme-tcp nvme-rdma nvmet nvmet-tcp nvmet-rdma
      rdma_rxe ib_uverbs rdma_ucm"

# The kernel: Debian's current 6.1 image unless RIG_KERNEL_PKG names one (e.g. linux-image-6.1.0-56-amd64).
kpkg=${RIG_KERNEL_PKG:-$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')}
[ -n "$kpkg" ] || { apt-get update -qq; kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}'); }
stamp="$kpkg $(cat "$here/build-guest.sh" "$here/guest-init" | md5sum | cut -c1-12)"
[ -f "$RIG_CACHE/initrd.gz" ] && [ "$(cat "$RIG_CACHE/stamp" 2>/dev/null)" = "$stamp" ] && exit 0

# 3. The kernel package (about 70 MB, kept in the cache), unpacked for the build only (400 MB).
mkdir -p "$RIG_CACHE"; cd "$RIG_CACHE"
if ! ls "${kpkg}"_*.deb >/dev/null 2>&1; then
  rm -f ./*.deb   # (apt's package lists may be stale: update them and try again)
  apt-get download -qq -o APT::Sandbox::User=root "$kpkg" ||
    { apt-get update -qq && apt-get download -qq -o APT::Sandbox::User=root "$kpkg"; }
fi
rm -rf kernel initrd; mkdir kernel; dpkg -x "${kpkg}"_*.deb kernel
kver=$(ls kernel/lib/modules)
depmod -b kernel "$kver"
cp "kernel/boot/vmlinuz-$kver" vmlinuz

# 4. The initramfs: busybox, the modules (dependencies first) and /init.
mkdir -p initrd/{bin,dev,proc,sys,mnt/root,lib/modules}
for m in $mods; do
  modprobe -d kernel -S "$kver" --show-depends "$m" | awk '$1 == "insmod" {print $2}'
done | awk '!seen[$0]++' > modules.txt
while read -r ko; do cp "$ko" initrd/lib/modules/; done < modules.txt
xargs -n1 basename < modules.txt > initrd/lib/modules/order
cp /bin/busybox initrd/bin/busybox
cp "$here/guest-init" initrd/init; chmod 755 initrd/init
(cd initrd && find . | cpio -o -H newc --quiet | gzip -1 > ../initrd.gz)
rm -rf initrd kernel
echo "$stamp" > stamp
echo "build-guest: kernel $kver ($kpkg), $(wc -l < modules.txt) modules, in $RIG_CACHE"
