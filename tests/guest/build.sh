#!/usr/bin/env bash
# Builds the tiny skygrid test guest: Debian's kernel (vmlinuz) and a busybox initramfs
# (initrd.img) with the virtio/isofs/ACPI-button modules and tests/guest/init as /init.
#
# Output (cached): ${SKYGRID_CACHE:-/var/cache/skygrid}/guest/{vmlinuz,initrd.img}
# The cache key is the kernel package name+version, the busybox binary and the sha256 of this
# script and of init; with an unchanged key nothing is rebuilt. FORCE=1 rebuilds anyway.
# Needs: apt-get/apt-cache (package lists present), dpkg-deb, depmod (kmod), busybox-static,
# cpio, gzip.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
INIT_SRC=$HERE/init
OUT=${SKYGRID_CACHE:-/var/cache/skygrid}/guest
BUSYBOX=${BUSYBOX:-/bin/busybox}
META_PKG=linux-image-amd64
# Modules to load in the guest, in this order (dependencies are added from modules.dep).
MODULES=(virtio_pci virtio_blk virtio_net virtio_console isofs button evdev)

say() { echo "guest-build: $*"; }
die() { echo "guest-build: ERROR: $*" >&2; exit 1; }

for tool in apt-cache apt-get dpkg-deb cpio gzip sha256sum; do
  command -v "$tool" >/dev/null || die "$tool not found"
done
[[ -x $BUSYBOX ]] || die "$BUSYBOX not found (apt-get install busybox-static)"
file_is_static() { ! LC_ALL=C ldd "$1" >/dev/null 2>&1; }
file_is_static "$BUSYBOX" || die "$BUSYBOX is dynamically linked; need busybox-static"

mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9

# --- resolve the kernel package: linux-image-amd64 -> linux-image-<abi>-amd64 ---------------
KPKG=$(apt-cache depends "$META_PKG" 2>/dev/null |
  sed -n 's/^ *Depends: *\(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -n1)
[[ -n $KPKG ]] || die "cannot resolve the kernel package from $META_PKG (run apt-get update?)"
KVER_PKG=$(apt-cache show --no-all-versions "$KPKG" 2>/dev/null | sed -n 's/^Version: *//p' | head -n1)
[[ -n $KVER_PKG ]] || die "no candidate version for $KPKG"

KEY=$(
  {
    echo "kernel $KPKG $KVER_PKG"
    echo "modules ${MODULES[*]}"
    sha256sum "$BUSYBOX" "$HERE/build.sh" "$INIT_SRC" | cut -d' ' -f1
  } | sha256sum | cut -d' ' -f1
)
if [[ -z ${FORCE:-} && -s $OUT/vmlinuz && -s $OUT/initrd.img && -f $OUT/cache-key &&
  $(cat "$OUT/cache-key") == "$KEY" ]]; then
  say "up to date ($KPKG $KVER_PKG): $OUT/vmlinuz $OUT/initrd.img"
  exit 0
fi

TMP=$(mktemp -d /tmp/skygrid-guest.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

# --- fetch and unpack the kernel package (never installed into /boot) ---------------------
DEB_DIR=$OUT/debs
mkdir -p "$DEB_DIR"
DEB=$(find "$DEB_DIR" -maxdepth 1 -name "${KPKG}_${KVER_PKG//:/%3a}_*.deb" | head -n1)
if [[ -z $DEB ]]; then
  say "downloading $KPKG=$KVER_PKG"
  rm -f "$DEB_DIR"/*.deb
  (cd "$TMP" && apt-get download -q -o APT::Sandbox::User=root "$KPKG=$KVER_PKG" >/dev/null) ||
    die "apt-get download $KPKG=$KVER_PKG failed"
  mv "$TMP"/*.deb "$DEB_DIR/"
  DEB=$(find "$DEB_DIR" -maxdepth 1 -name '*.deb' | head -n1)
else
  say "using cached $(basename "$DEB")"
fi
say "unpacking $(basename "$DEB")"
dpkg-deb -x "$DEB" "$TMP/kernel"
VMLINUZ=$(find "$TMP/kernel/boot" -maxdepth 1 -name 'vmlinuz-*' | head -n1)
KREL=${VMLINUZ##*/vmlinuz-}
MODDIR=$TMP/kernel/lib/modules/$KREL
[[ -d $MODDIR ]] || die "no lib/modules/$KREL in $KPKG"
# The package does not ship modules.dep (it is made at install time): generate it.
if [[ ! -f $MODDIR/modules.dep ]]; then
  if command -v depmod >/dev/null; then
    depmod -b "$TMP/kernel" "$KREL"
  else
    "$BUSYBOX" depmod -b "$TMP/kernel" "$KREL"
  fi
fi
[[ -f $MODDIR/modules.dep ]] || die "depmod did not produce modules.dep"

# --- resolve modules and their dependencies (dependencies first) --------------------------
declare -A DEP_OF=() PATH_OF=() SEEN=()
while IFS= read -r line; do
  mod=${line%%:*}
  deps=${line#*:}
  name=$(basename "$mod"); name=${name%%.ko*}; name=${name//-/_}
  PATH_OF[$name]=$mod
  DEP_OF[$mod]=$deps
done <"$MODDIR/modules.dep"

ORDER=()
visit() {  # path relative to the module dir
  local mod=$1 dep
  [[ -n ${SEEN[$mod]:-} ]] && return
  SEEN[$mod]=1
  for dep in ${DEP_OF[$mod]}; do visit "$dep"; done
  ORDER+=("$mod")
}
for m in "${MODULES[@]}"; do
  n=${m//-/_}
  if [[ -n ${PATH_OF[$n]:-} ]]; then
    visit "${PATH_OF[$n]}"
  elif grep -Eq "/${n}\.ko|/${n//_/-}\.ko" "$MODDIR/modules.builtin"; then
    say "module $m is built in"
  else
    die "module $m not found in $KREL"
  fi
done

# --- assemble the initramfs --------------------------------------------------------------
ROOT=$TMP/root
mkdir -p "$ROOT"/{bin,dev,etc,proc,sys,run,tmp,mnt/seed,var/log,lib/modules/"$KREL"}
ln -s bin "$ROOT/sbin"
mkdir -p "$ROOT/usr"
ln -s ../bin "$ROOT/usr/bin"
ln -s ../bin "$ROOT/usr/sbin"
cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in $("$BUSYBOX" --list); do
  [[ $applet == busybox ]] || ln -sf busybox "$ROOT/bin/$applet"
done
install -m 0755 "$INIT_SRC" "$ROOT/init"
: >"$ROOT/etc/skygrid-modules"
for mod in "${ORDER[@]}"; do
  dst=$ROOT/lib/modules/$KREL/$mod
  mkdir -p "$(dirname "$dst")"
  case $mod in
    *.ko) cp "$MODDIR/$mod" "$dst" ;;
    *.ko.xz) xz -dc "$MODDIR/$mod" >"${dst%.xz}"; mod=${mod%.xz} ;;
    *.ko.zst) zstd -qdc "$MODDIR/$mod" >"${dst%.zst}"; mod=${mod%.zst} ;;
    *.ko.gz) gzip -dc "$MODDIR/$mod" >"${dst%.gz}"; mod=${mod%.gz} ;;
    *) die "unknown module format: $mod" ;;
  esac
  echo "lib/modules/$KREL/$mod" >>"$ROOT/etc/skygrid-modules"
done
echo "$KREL" >"$ROOT/etc/skygrid-kernel"
# Initial console for the kernel to open before /init runs (init re-opens it after devtmpfs).
mknod -m 600 "$ROOT/dev/console" c 5 1 2>/dev/null || true
mknod -m 666 "$ROOT/dev/null" c 1 3 2>/dev/null || true

say "packing initramfs (${#ORDER[@]} modules: $(for m in "${ORDER[@]}"; do basename "${m%%.ko*}"; done | tr '\n' ' '))"
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -9n >"$OUT/initrd.img.new"
cp "$VMLINUZ" "$OUT/vmlinuz.new"
mv -f "$OUT/vmlinuz.new" "$OUT/vmlinuz"
mv -f "$OUT/initrd.img.new" "$OUT/initrd.img"
echo "$KREL" >"$OUT/kernel-release"
echo "$KEY" >"$OUT/cache-key"
say "built $OUT/vmlinuz ($KREL) and $OUT/initrd.img ($(du -k "$OUT/initrd.img" | cut -f1) KiB)"
