#!/usr/bin/env bash
# Build TORQUE 6.1.3 (server, scheduler, MOM, clients) from source for the Torque test bed, once.
#
#   scripts/torque/build.sh          build and install unless the install is already up to date
#   scripts/torque/build.sh --force  build again even when it is
#
# Source: the upstream archive (github.com/adaptivecomputing/torque, branch 6.1.3) when it is reachable,
# else the copy beside the checkout (../shared/third_party/torque/); either must match SHA256SUMS there.
# Torque's source is never copied into the collection: it is unpacked into the build directory, patched
# with the PATCHES below in order (gcc 12; a compute node may not claim another submit host), its build
# files regenerated with autoconf 2.69 (Debian 12's 2.71 writes a configure that fails with "TORQUE needs
# pthreads"), built with make -j$(nproc) and installed into the prefix. Both live outside the clone.
#
# A stamp in the prefix records the archive checksum and the checksums of the patches and of this script:
# a re-run with the same three does nothing (seconds), so CI on the same machine builds once.
#
# Environment: SKYGRID_TORQUE_PREFIX (default /opt/skygrid/torque-6.1.3), SKYGRID_TORQUE_BUILD_DIR (default
# /var/cache/skygrid/torque-build), SKYGRID_TORQUE_HOME (PBS_HOME, default /var/spool/torque; not under /tmp:
# pbs_server refuses a world-writable parent), SKYGRID_TORQUE_SOURCE_DIR (default
# <checkout>/../shared/third_party/torque), SKYGRID_TORQUE_URL (the upstream archive; empty: never download).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CHECKOUT=$(cd "$HERE/../.." && pwd)
VERSION=6.1.3
ARCHIVE=torque-$VERSION.tar.gz
PREFIX=${SKYGRID_TORQUE_PREFIX:-/opt/skygrid/torque-$VERSION}
BUILD_DIR=${SKYGRID_TORQUE_BUILD_DIR:-/var/cache/skygrid/torque-build}
PBS_HOME=${SKYGRID_TORQUE_HOME:-/var/spool/torque}
SOURCE_DIR=${SKYGRID_TORQUE_SOURCE_DIR:-$CHECKOUT/../shared/third_party/torque}
URL=${SKYGRID_TORQUE_URL-https://github.com/adaptivecomputing/torque/archive/refs/heads/$VERSION.tar.gz}
PATCHES=("$HERE/gcc12-null-pointers.patch" "$HERE/node-submit-host.patch")
STAMP=$PREFIX/.skygrid-build-stamp
DEPS=(g++ make pkg-config autoconf2.69 automake libtool libboost-dev libxml2-dev libssl-dev zlib1g-dev
  libreadline-dev libncurses-dev patch curl ca-certificates)
CONFIGURE_OPTIONS=(--prefix="$PREFIX" --with-server-home="$PBS_HOME" --with-default-server=localhost
  --disable-gui --without-tcl --disable-cpuset --disable-cgroups --disable-gcc-warnings --without-pam
  --disable-drmaa --with-sendmail=/bin/true
  # The programs find libtorque by their RUNPATH, whatever this host's ld.so.conf says: libtool leaves the
  # RUNPATH out when the prefix's lib is already in ld.so.conf (a rebuild), and a pbs_mom copied into
  # the VO image then misses libtorque there.
  LDFLAGS="-Wl,-rpath,$PREFIX/lib")

die() { echo "torque/build.sh: $*" >&2; exit 2; }
log() { echo "==> $*"; }
[[ $(id -u) == 0 ]] || die "run as root (it installs Debian packages and writes $PREFIX)"
FORCE=0
case ${1:-} in
  --force) FORCE=1 ;;
  "") ;;
  *) die "usage: $0 [--force]" ;;
esac

expected_sum() {
  [[ -r $SOURCE_DIR/SHA256SUMS ]] || die "no $SOURCE_DIR/SHA256SUMS to check the archive against (set SKYGRID_TORQUE_SOURCE_DIR)"
  awk -v f="$ARCHIVE" '$2 == f || $2 == "*" f {print $1}' "$SOURCE_DIR/SHA256SUMS"
}

wanted_stamp() {
  printf 'archive %s\npatch %s\nscript %s\nprefix %s\nhome %s\n' "$(expected_sum)" \
    "$(cat "${PATCHES[@]}" | sha256sum | cut -d' ' -f1)" "$(sha256sum <"${BASH_SOURCE[0]}" | cut -d' ' -f1)" "$PREFIX" "$PBS_HOME"
}

install_deps() {
  local missing=() pkg
  for pkg in "${DEPS[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  log "installing build dependencies: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  }
}

fetch_archive() { # prints the path of a verified archive
  local want=$1 got
  if [[ -n $URL ]]; then
    if curl -fsSL --connect-timeout 5 --max-time 300 -o "$BUILD_DIR/download.tar.gz" "$URL" 2>/dev/null; then
      got=$(sha256sum <"$BUILD_DIR/download.tar.gz" | cut -d' ' -f1)
      if [[ $got == "$want" ]]; then
        log "using $URL (sha256 verified)" >&2
        echo "$BUILD_DIR/download.tar.gz"
        return 0
      fi
      log "$URL has sha256 $got, not $want as SHA256SUMS says; using the local copy" >&2
    else
      log "$URL is not reachable; using the local copy" >&2
    fi
  fi
  [[ -r $SOURCE_DIR/$ARCHIVE ]] || die "no $SOURCE_DIR/$ARCHIVE (and the upstream archive was not usable)"
  got=$(sha256sum <"$SOURCE_DIR/$ARCHIVE" | cut -d' ' -f1)
  [[ $got == "$want" ]] || die "$SOURCE_DIR/$ARCHIVE has sha256 $got, SHA256SUMS says $want: refusing to build it"
  log "using $SOURCE_DIR/$ARCHIVE (sha256 verified)" >&2
  echo "$SOURCE_DIR/$ARCHIVE"
}

build() {
  local archive=$1 src=$BUILD_DIR/torque-$VERSION
  rm -rf "$src"
  tar -xzf "$archive" -C "$BUILD_DIR"
  [[ -d $src ]] || die "$archive has no torque-$VERSION/ folder"
  local patch_file
  for patch_file in "${PATCHES[@]}"; do
    log "patching ($(basename "$patch_file"))"
    patch -s -p1 -d "$src" <"$patch_file"
  done
  log "regenerating the build files with autoconf 2.69"
  (
    cd "$src"
    export AUTOCONF=autoconf2.69 AUTOHEADER=autoheader2.69 AUTOM4TE=autom4te2.69
    mkdir -p m4
    libtoolize --copy --force
    aclocal -I buildutils
    autoconf2.69 --force
    autoheader2.69 --force
    automake --add-missing --copy --force-missing
  ) >>"$LOG" 2>&1 || die "regenerating the build files failed; see $LOG"
  log "configure"
  (cd "$src" && ./configure "${CONFIGURE_OPTIONS[@]}") >>"$LOG" 2>&1 || die "configure failed; see $LOG"
  log "make -j$(nproc) (about 7 minutes on 2 cores)"
  make -C "$src" -j"$(nproc)" >>"$LOG" 2>&1 || die "make failed; see $LOG"
  log "installing into $PREFIX"
  rm -rf "$PREFIX"
  make -C "$src" install FROM_TORQUE_BUILD=1 >>"$LOG" 2>&1 || die "make install failed; see $LOG"
  rm -rf "$src"
}

main() {
  local want
  want=$(wanted_stamp)
  [[ -n $(expected_sum) ]] || die "SHA256SUMS in $SOURCE_DIR has no line for $ARCHIVE"
  if ((!FORCE)) && [[ -x $PREFIX/sbin/pbs_server && -r $STAMP && $(cat "$STAMP") == "$want" ]]; then
    log "Torque $VERSION in $PREFIX is up to date (stamp matches); nothing to build"
    return 0
  fi
  if [[ -e $PREFIX && ! -e $STAMP ]] && [[ -n $(ls -A "$PREFIX") ]]; then
    die "$PREFIX exists and was not installed by this script; move it away or set SKYGRID_TORQUE_PREFIX"
  fi
  install_deps
  mkdir -p "$BUILD_DIR"
  LOG=$BUILD_DIR/build.log
  : >"$LOG"
  local started=$SECONDS archive
  archive=$(fetch_archive "$(expected_sum)")
  build "$archive"
  # pbs_server, pbs_mom and the clients find libtorque through the linker cache.
  echo "$PREFIX/lib" >/etc/ld.so.conf.d/skygrid-torque.conf
  ldconfig
  printf '%s\n' "$want" >"$STAMP"
  log "Torque $VERSION installed in $PREFIX in $((SECONDS - started))s (log: $LOG)"
}

main
