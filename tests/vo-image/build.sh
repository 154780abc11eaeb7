#!/usr/bin/env bash
# Builds the skygrid VO worker image: a debootstrapped Debian 12 (minbase) with slurmd, munge,
# slurm-client and skygrid-firstboot (a small cloud-init-compatible NoCloud reader), booted by
# busybox init; packed as a compressed qcow2 and booted by direct kernel boot with Debian's
# kernel and a busybox initramfs that mounts the image's root from /dev/vda.
#
# Output (cached): ${SKYGRID_CACHE:-/var/cache/skygrid}/vo-image/
#   vo-worker.qcow2  the image (ext4 root file system, no partition table, label vo-root)
#   vmlinuz          Debian's kernel (linux-image-amd64, unpacked, never installed)
#   initrd.img       busybox initramfs: virtio + ext4 + isofs modules, mounts root=, switch_root
#   sha512           `sha512sum` line of vo-worker.qcow2 (what an image list's sl:checksum:sha512 needs)
#   build-info       kernel, package versions, sizes, build time;  cache-key
# The cache key is the sha256 of this script, of every file under overlay/ (path, mode, content),
# of the package list and of the kernel package version: with an unchanged key nothing is rebuilt.
# FORCE=1 rebuilds anyway (e.g. to pick up Debian security updates). Downloaded .debs are kept in
# vo-image/debs (kernel) and vo-image/debootstrap-cache, so a rebuild does not download them again.
#
# Environment: SKYGRID_CACHE, FORCE=1, MIRROR (default: the first bookworm mirror in
# /etc/apt/sources.list*, else http://deb.debian.org/debian), SIZE_MB (virtual size of the root
# file system, default 2048; a VM's disk may be larger, skygrid-firstboot grows the file system).
# Needs root, debootstrap, e2fsprogs >= 1.43 (mkfs.ext4 -d), qemu-utils, busybox-static, cpio,
# kmod, apt (package lists present: apt-get update).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
OVERLAY=$HERE/overlay
INITRAMFS_INIT=$OVERLAY/usr/lib/skygrid-vo/initramfs-init
OUT=${SKYGRID_CACHE:-/var/cache/skygrid}/vo-image
SUITE=bookworm
SIZE_MB=${SIZE_MB:-2048}
BUSYBOX=${BUSYBOX:-/bin/busybox}
KERNEL_META=linux-image-amd64
# What goes into the image (debootstrap --variant=minbase adds the Essential set and apt).
# python3-yaml: skygrid-firstboot parses YAML user-data. busybox: init, udhcpc, acpid.
# libxml2: the pbs_mom copied from the Torque build links it.
PACKAGES=(slurmd munge slurm-client iproute2 kmod busybox procps python3-minimal python3-yaml libxml2)
# pbs_mom from the project's TORQUE 6.1.3 build (scripts/torque/build.sh), copied into the image under
# the same prefix (its RUNPATH names it) when that build exists; TORQUE_PREFIX= (empty) leaves it out.
TORQUE_PREFIX=${TORQUE_PREFIX-${SKYGRID_TORQUE_PREFIX:-/opt/skygrid/torque-6.1.3}}
TORQUE_FILES=(sbin/pbs_mom sbin/pbs_demux sbin/momctl lib/libtorque.so.2.0.0)
if [[ -n $TORQUE_PREFIX && ! -x $TORQUE_PREFIX/sbin/pbs_mom ]]; then
  TORQUE_PREFIX=""
fi
# Modules the initramfs loads, in this order (dependencies are added from modules.dep).
# crc32c_generic: ext4 asks for the crc32c crypto driver at mount time (metadata_csum).
INITRD_MODULES=(virtio_pci virtio_blk virtio_net virtio_rng crc32c_generic ext4 isofs button evdev)
# Also installed into the image's /lib/modules (with depmod), loadable there with modprobe.
IMAGE_MODULES=("${INITRD_MODULES[@]}" vfat nls_cp437 nls_iso8859_1 fuse overlay squashfs loop)

T0=$SECONDS
say() { echo "vo-image: [$((SECONDS - T0))s] $*"; }
die() { echo "vo-image: ERROR: $*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root (debootstrap, chroot, file ownership in the image)"
for tool in debootstrap mkfs.ext4 qemu-img apt-cache apt-get dpkg-deb cpio gzip sha256sum sha512sum \
  depmod chroot flock; do
  command -v "$tool" >/dev/null || die "$tool not found"
done
if [[ ! -x $BUSYBOX ]] || LC_ALL=C ldd "$BUSYBOX" >/dev/null 2>&1; then
  die "$BUSYBOX missing or not static (apt-get install busybox-static)"
fi
[[ $(mkfs.ext4 2>&1 || true) == *"[-d root-directory]"* ]] || die "mkfs.ext4 has no -d (need e2fsprogs >= 1.43)"

if [[ -z ${MIRROR:-} ]]; then
  # The first deb822 or one-line source that carries the bookworm suite (not -security/-updates).
  MIRROR=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    awk -v s="$SUITE" '
      /^deb[ \t]/ { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { if ($(i+1) == s) { print $i; exit } } }
      /^URIs:/    { uri = $2 }
      /^Suites:/  { for (i = 2; i <= NF; i++) if ($i == s && uri != "") { print uri; exit } }
      /^$/        { uri = "" }' || true)
  MIRROR=${MIRROR:-http://deb.debian.org/debian}
fi

mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9

# --- kernel package: linux-image-amd64 -> linux-image-<abi>-amd64 ----------------------------
KPKG=$(apt-cache depends "$KERNEL_META" 2>/dev/null |
  sed -n 's/^ *Depends: *\(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -n1)
[[ -n $KPKG ]] || die "cannot resolve the kernel package from $KERNEL_META (run apt-get update?)"
KVER_PKG=$(apt-cache show --no-all-versions "$KPKG" 2>/dev/null | sed -n 's/^Version: *//p' | head -n1)
[[ -n $KVER_PKG ]] || die "no candidate version for $KPKG"

# --- cache key ----------------------------------------------------------------------------------
overlay_digest() {
  # Python's byte-code caches (a checkout where the firstboot script was compiled) are neither in the key
  # nor in the image: they would make two checkouts of one commit build two different images.
  (cd "$OVERLAY" && find . -mindepth 1 -name __pycache__ -prune -o -printf '%y %m %p %l\n' | LC_ALL=C sort &&
    find . -name __pycache__ -prune -o -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
}
key_inputs() {
  echo "suite $SUITE size $SIZE_MB"
  echo "packages ${PACKAGES[*]}"
  echo "initrd-modules ${INITRD_MODULES[*]}"
  echo "image-modules ${IMAGE_MODULES[*]}"
  echo "kernel $KPKG $KVER_PKG"
  sha256sum "$HERE/build.sh" "$BUSYBOX" | cut -d' ' -f1
  if [[ -n $TORQUE_PREFIX ]]; then
    echo "torque $TORQUE_PREFIX"
    (cd "$TORQUE_PREFIX" && sha256sum "${TORQUE_FILES[@]}")
  else
    echo "torque none"
  fi
  overlay_digest
}
KEY=$(key_inputs | sha256sum | cut -d' ' -f1)
FILES=(vo-worker.qcow2 vmlinuz initrd.img sha512)
have_all() { local f; for f in "${FILES[@]}"; do [[ -s $OUT/$f ]] || return 1; done; }
if [[ -z ${FORCE:-} ]] && have_all && [[ -f $OUT/cache-key && $(cat "$OUT/cache-key") == "$KEY" ]]; then
  say "up to date: $OUT/vo-worker.qcow2 ($(du -h --apparent-size "$OUT/vo-worker.qcow2" | cut -f1)," \
    "$(cut -c1-16 "$OUT/sha512")…)"
  exit 0
fi

if [[ -n ${FORCE:-} ]]; then
  say "FORCE=1: rebuilding"
elif ! have_all || [[ ! -f $OUT/cache-key ]]; then
  say "no cached image: building"
else
  say "cache key changed: rebuilding (inputs: diff $OUT/cache-key-inputs against the new ones)"
fi

# --- work area (cleaned on exit, mounts first: never rm -rf through a live /proc or /dev) ------
TMP=$(mktemp -d "$OUT/build.XXXXXX")
cleanup() {
  local m
  awk -v t="$TMP/" 'index($2, t) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
  rm -rf --one-file-system "$TMP"
}
trap cleanup EXIT
ROOT=$TMP/root

# --- kernel: fetch (cached) and unpack -----------------------------------------------------------
DEB_NAME="${KPKG}_${KVER_PKG//:/%3a}_amd64.deb"
mkdir -p "$OUT/debs"
DEB=""
for d in "$OUT/debs" "${SKYGRID_CACHE:-/var/cache/skygrid}/guest/debs"; do
  [[ -s $d/$DEB_NAME ]] && { DEB=$d/$DEB_NAME; break; }
done
if [[ -z $DEB ]]; then
  say "downloading $KPKG=$KVER_PKG"
  (cd "$TMP" && apt-get download -q -o APT::Sandbox::User=root "$KPKG=$KVER_PKG" >/dev/null) ||
    die "apt-get download $KPKG=$KVER_PKG failed"
  rm -f "$OUT/debs/"*.deb
  mv "$TMP/$DEB_NAME" "$OUT/debs/"
  DEB=$OUT/debs/$DEB_NAME
fi
say "unpacking $(basename "$DEB")"
dpkg-deb -x "$DEB" "$TMP/kernel"
VMLINUZ=$(find "$TMP/kernel/boot" -maxdepth 1 -name 'vmlinuz-*' | head -n1)
KREL=${VMLINUZ##*/vmlinuz-}
KMODS=$TMP/kernel/lib/modules/$KREL
[[ -d $KMODS ]] || die "no lib/modules/$KREL in $KPKG"
# The package ships no modules.dep (made at install time); depmod over the whole tree takes a
# while, so the result is kept next to the .deb.
DEP_CACHE=$OUT/debs/${DEB_NAME%.deb}.modules.dep
if [[ ! -f $KMODS/modules.dep ]]; then
  if [[ -s $DEP_CACHE ]]; then
    cp "$DEP_CACHE" "$KMODS/modules.dep"
  else
    depmod -b "$TMP/kernel" "$KREL"
    cp "$KMODS/modules.dep" "$DEP_CACHE"
  fi
fi

declare -A DEP_OF=() PATH_OF=()
while IFS= read -r line; do
  mod=${line%%:*}
  name=${mod##*/}; name=${name%%.ko*}; name=${name//-/_}   # no subshell: ~6000 lines
  PATH_OF[$name]=$mod
  DEP_OF[$mod]=${line#*:}
done <"$KMODS/modules.dep"

# resolve_modules NAME... -> prints module paths (relative to lib/modules/KREL), dependencies first
resolve_modules() {
  local -A seen=()
  local -a order=()
  visit() {
    local mod=$1 dep
    [[ -n ${seen[$mod]:-} ]] && return
    seen[$mod]=1
    for dep in ${DEP_OF[$mod]}; do visit "$dep"; done
    order+=("$mod")
  }
  local m n
  for m in "$@"; do
    n=${m//-/_}
    if [[ -n ${PATH_OF[$n]:-} ]]; then
      visit "${PATH_OF[$n]}"
    elif grep -Eq "/(${n}|${n//_/-})\.ko" "$KMODS/modules.builtin"; then
      :
    else
      die "module $m not found in $KREL"
    fi
  done
  printf '%s\n' "${order[@]}"
}

# copy_module REL DESTDIR -> copies lib/modules/KREL/REL uncompressed, prints the new relative path
copy_module() {
  local rel=$1 dst=$2/$1
  mkdir -p "$(dirname "$dst")"
  case $rel in
    *.ko) cp "$KMODS/$rel" "$dst"; echo "$rel" ;;
    *.ko.xz) xz -dc "$KMODS/$rel" >"${dst%.xz}"; echo "${rel%.xz}" ;;
    *.ko.zst) zstd -qdc "$KMODS/$rel" >"${dst%.zst}"; echo "${rel%.zst}" ;;
    *.ko.gz) gzip -dc "$KMODS/$rel" >"${dst%.gz}"; echo "${rel%.gz}" ;;
    *) die "unknown module format: $rel" ;;
  esac
}

# --- root file system -----------------------------------------------------------------------------
mkdir -p "$OUT/debootstrap-cache"
say "debootstrap --variant=minbase $SUITE from $MIRROR (+ ${PACKAGES[*]})"
TD=$SECONDS
# Two stages, so that dpkg in the second one already skips documentation (overlay's dpkg
# path-exclude file) and unpacks with force-unsafe-io (no fsync per file: the image is packed
# from this directory afterwards, a crash only means building again).
ds_fail() { tail -n 30 "$TMP/debootstrap.log" >&2; die "debootstrap $1 failed (log above)"; }
debootstrap --foreign --variant=minbase --include="$(IFS=,; echo "${PACKAGES[*]}")" \
  --cache-dir="$OUT/debootstrap-cache" "$SUITE" "$ROOT" "$MIRROR" >"$TMP/debootstrap.log" 2>&1 ||
  ds_fail "first stage"
say "debootstrap first stage done in $((SECONDS - TD))s; second stage (dpkg in the chroot)"
mkdir -p "$ROOT/etc/dpkg/dpkg.cfg.d"
cp "$OVERLAY/etc/dpkg/dpkg.cfg.d/skygrid-vo-nodoc" "$ROOT/etc/dpkg/dpkg.cfg.d/"
echo force-unsafe-io >"$ROOT/etc/dpkg/dpkg.cfg.d/skygrid-vo-build-unsafe-io"
chroot "$ROOT" /debootstrap/debootstrap --second-stage >>"$TMP/debootstrap.log" 2>&1 ||
  ds_fail "second stage"
rm -f "$ROOT/etc/dpkg/dpkg.cfg.d/skygrid-vo-build-unsafe-io"
say "debootstrap done in $((SECONDS - TD))s ($(du -sm "$ROOT" | cut -f1) MiB)"

say "applying overlay/ and image policy"
tar -C "$OVERLAY" --owner=0 --group=0 --exclude=__pycache__ -cf - . | tar -C "$ROOT" -xf -
chmod 0755 "$ROOT"
ln -sfn /bin/busybox "$ROOT/sbin/init"
# HEPiX image policy: no credentials, no host identity, no accounts with passwords, no ssh server.
rm -f "$ROOT/etc/munge/munge.key" "$ROOT/etc/machine-id" "$ROOT/var/lib/dbus/machine-id" \
  "$ROOT"/etc/ssh/ssh_host_* "$ROOT/var/lib/systemd/random-seed"
: >"$ROOT/etc/resolv.conf"   # debootstrap copied the build host's
if awk -F: '$2 !~ /^[*!]/' "$ROOT/etc/shadow" | grep -q .; then
  die "accounts with a password or an empty password field in the image: $(awk -F: '$2 !~ /^[*!]/ {print $1}' "$ROOT/etc/shadow")"
fi
for f in usr/sbin/sshd usr/sbin/dropbear usr/bin/cloud-init; do
  [[ ! -e $ROOT/$f ]] || die "$f must not be in the image"
done
find "$ROOT/etc" "$ROOT/root" -name '*.key' -o -name '*.pem' -o -name 'id_*' 2>/dev/null | grep -v '/etc/ssl/certs/' |
  grep . && die "key-like files in the image (above)"

# pbs_mom, its helpers and libtorque under the build's prefix; PBS_HOME (/var/spool/torque, the build's
# --with-server-home) laid out as `make install` does, as far as a MOM needs it (without it pbs_mom exits 3).
# server_name and mom_priv/config come from the VM's seed (the torque role's vm_context).
TORQUE_VER=none
if [[ -n $TORQUE_PREFIX ]]; then
  say "adding pbs_mom from $TORQUE_PREFIX"
  for f in "${TORQUE_FILES[@]}"; do install -D -m 0755 "$TORQUE_PREFIX/$f" "$ROOT$TORQUE_PREFIX/$f"; done
  ln -s libtorque.so.2.0.0 "$ROOT$TORQUE_PREFIX/lib/libtorque.so.2"
  echo "$TORQUE_PREFIX/lib" >"$ROOT/etc/ld.so.conf.d/skygrid-torque.conf"  # also for a build without RUNPATH
  chroot "$ROOT" ldconfig
  for f in pbs_mom momctl; do ln -sfn "$TORQUE_PREFIX/sbin/$f" "$ROOT/usr/local/sbin/$f"; done
  TH=$ROOT/var/spool/torque
  mkdir -p "$TH"/{mom_priv/jobs,spool,undelivered,checkpoint,aux,mom_logs,job_logs}
  chmod 0751 "$TH/mom_priv" "$TH/mom_priv/jobs"
  chmod 1777 "$TH/spool" "$TH/undelivered" "$TH/checkpoint"
  : >"$TH/pbs_environment"
  chroot "$ROOT" ldd "$TORQUE_PREFIX/sbin/pbs_mom" | grep -q 'not found' &&
    die "pbs_mom misses libraries in the image: $(chroot "$ROOT" ldd "$TORQUE_PREFIX/sbin/pbs_mom" | grep 'not found')"
  TORQUE_VER=$("$TORQUE_PREFIX/bin/pbs-config" --version 2>/dev/null || echo unknown)
fi

# Kernel modules for modprobe in the image (the initramfs has already loaded its own set).
resolve_modules "${IMAGE_MODULES[@]}" >"$TMP/image-modules"
mapfile -t IMAGE_MODS <"$TMP/image-modules"
for mod in "${IMAGE_MODS[@]}"; do copy_module "$mod" "$ROOT/lib/modules/$KREL" >/dev/null; done
cp "$KMODS/modules.builtin" "$KMODS/modules.order" "$ROOT/lib/modules/$KREL/" 2>/dev/null || true
[[ -f $KMODS/modules.builtin.modinfo ]] && cp "$KMODS/modules.builtin.modinfo" "$ROOT/lib/modules/$KREL/"
depmod -b "$ROOT" "$KREL"

# Size: no documentation, manual pages, translations, apt lists or caches, logs of the build.
say "stripping the image"
find "$ROOT/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
find "$ROOT/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$ROOT"/usr/share/{man,info,lintian,linda,bug,menu}/* "$ROOT"/usr/share/locale/*/ \
  "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/cache/apt/archives/*.deb \
  "$ROOT"/var/cache/debconf/*-old "$ROOT"/var/lib/dpkg/*-old "$ROOT"/usr/lib/x86_64-linux-gnu/gconv/*.so \
  "$ROOT"/var/cache/ldconfig/aux-cache "$ROOT"/tmp/* "$ROOT"/root/.bash_history
find "$ROOT/var/log" -type f -delete
mkdir -p "$ROOT/var/lib/apt/lists/partial"

# Build record inside the image and next to it.
# shellcheck disable=SC2016 # dpkg-query's own ${...} format
SLURM_VER=$(chroot "$ROOT" dpkg-query -W -f='${Version}' slurmd)
# shellcheck disable=SC2016
MUNGE_VER=$(chroot "$ROOT" dpkg-query -W -f='${Version}' munge)
BUILT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
cat >"$ROOT/etc/skygrid-vo-release" <<EOF
SKYGRID_VO_IMAGE=vo-worker
DEBIAN_SUITE=$SUITE
DEBIAN_VERSION=$(cat "$ROOT/etc/debian_version")
KERNEL=$KREL
SLURM=$SLURM_VER
MUNGE=$MUNGE_VER
TORQUE=$TORQUE_VER
BUILT=$BUILT
CACHE_KEY=$KEY
EOF
# shellcheck disable=SC2016
chroot "$ROOT" dpkg-query -W -f='${Package} ${Version}\n' >"$TMP/packages"
USED_MB=$(du -sm "$ROOT" | cut -f1)
(( SIZE_MB * 10 >= USED_MB * 13 + 2560 )) ||
  die "SIZE_MB=$SIZE_MB is too small for $USED_MB MiB of files (+30% and 256 MiB free)"

# --- pack: ext4 from the directory, then compressed qcow2 ---------------------------------------
say "mkfs.ext4 -d ($USED_MB MiB of files, ${SIZE_MB} MiB file system)"
# lazy_itable_init=0: inode tables are zeroed now (zero clusters cost nothing in the qcow2), so the
# guest kernel's ext4lazyinit thread does not write them into every VM's overlay under TCG.
mkfs.ext4 -q -F -L vo-root -m 1 -d "$ROOT" -E lazy_itable_init=0,lazy_journal_init=0 \
  "$TMP/root.raw" "${SIZE_MB}M" >/dev/null
say "qemu-img convert -O qcow2 -c"
qemu-img convert -f raw -O qcow2 -c "$TMP/root.raw" "$TMP/vo-worker.qcow2"
rm -f "$TMP/root.raw"

# --- initramfs ------------------------------------------------------------------------------------
say "initramfs"
IRD=$TMP/initramfs
mkdir -p "$IRD"/{bin,dev,etc,proc,sys,run,newroot}
ln -s bin "$IRD/sbin"
cp "$BUSYBOX" "$IRD/bin/busybox"
for applet in $("$BUSYBOX" --list); do
  [[ $applet == busybox ]] || ln -sf busybox "$IRD/bin/$applet"
done
install -m 0755 "$INITRAMFS_INIT" "$IRD/init"
resolve_modules "${INITRD_MODULES[@]}" >"$TMP/initrd-modules"
mapfile -t INITRD_MODS <"$TMP/initrd-modules"
: >"$IRD/etc/skygrid-modules"
for mod in "${INITRD_MODS[@]}"; do
  echo "lib/modules/$KREL/$(copy_module "$mod" "$IRD/lib/modules/$KREL")" >>"$IRD/etc/skygrid-modules"
done
mknod -m 600 "$IRD/dev/console" c 5 1
mknod -m 666 "$IRD/dev/null" c 1 3
(cd "$IRD" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -9n >"$TMP/initrd.img"

# --- install into the cache -----------------------------------------------------------------------
cp "$VMLINUZ" "$TMP/vmlinuz"
(cd "$TMP" && sha512sum vo-worker.qcow2 >sha512)
QCOW_BYTES=$(stat -c %s "$TMP/vo-worker.qcow2")
cat >"$TMP/build-info" <<EOF
$(cat "$ROOT/etc/skygrid-vo-release")
ROOT_FILES_MB=$USED_MB
FS_SIZE_MB=$SIZE_MB
QCOW2_BYTES=$QCOW_BYTES
INITRD_BYTES=$(stat -c %s "$TMP/initrd.img")
INITRD_MODULES=$(for m in "${INITRD_MODS[@]}"; do basename "${m%%.ko*}"; done | tr '\n' ' ')
BUILD_SECONDS=$((SECONDS - T0))
EOF
for f in "${FILES[@]}" build-info packages; do mv -f "$TMP/$f" "$OUT/$f"; done
key_inputs >"$OUT/cache-key-inputs"
echo "$KEY" >"$OUT/cache-key"
say "built $OUT/vo-worker.qcow2: $((QCOW_BYTES / 1024 / 1024)) MiB qcow2 ($USED_MB MiB of files," \
  "${SIZE_MB} MiB virtual), kernel $KREL, slurm $SLURM_VER, munge $MUNGE_VER, torque $TORQUE_VER, in $((SECONDS - T0))s"
