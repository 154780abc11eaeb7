#!/usr/bin/env bash
# Starts/stops the local libvirt test bed (libvirtd + virtlogd) on a Debian 12 host, run as root.
#
#   scripts/testbed.sh start    idempotent: start virtlogd and libvirtd, make sure the default
#                               nwfilters and the `default` storage pool exist
#   scripts/testbed.sh stop     stop the daemons this script started (running VMs keep running)
#   scripts/testbed.sh status   show what is running
#
# With systemd as init it uses `systemctl start virtlogd libvirtd`. Without systemd it runs
# `virtlogd -d` and `libvirtd` under `tini -s` (a child subreaper): the QEMU and dnsmasq
# processes libvirtd daemonises are then reaped at once by tini instead of by a PID 1 that
# reaps orphans only every ~1.5 s (which made every `virsh destroy` take ~2 s).
set -euo pipefail

URI=qemu:///system
STATE_DIR=/run/skygrid-testbed
LOG_DIR=/var/log/libvirt
LIBVIRTD_LOG=$LOG_DIR/skygrid-testbed-libvirtd.log
POOL_DIR=/var/lib/libvirt/images
START_TIMEOUT=${SKYGRID_TESTBED_TIMEOUT:-600}

# shellcheck disable=SC2034  # both read by lib/testbed-common.sh
TB_NAME=testbed TB_SCRIPT=scripts/testbed.sh
# shellcheck source-path=SCRIPTDIR
source "$(dirname "$(readlink -f "$0")")/lib/testbed-common.sh"

have_systemd() { [[ -d /run/systemd/system ]] && [[ "$(cat /proc/1/comm 2>/dev/null)" == systemd ]]; }
virsh_q() { virsh -q -c "$URI" "$@"; }
libvirt_answers() { timeout 10 virsh -c "$URI" version >/dev/null 2>&1; }


virtlogd_pid() {
  local pid
  pid=$(pidfile_pid /run/virtlogd.pid)
  if pid_alive "$pid"; then echo "$pid"; return; fi
  pgrep -x virtlogd | head -n1 || true
}

libvirtd_pid() {
  local pid
  pid=$(pidfile_pid /run/libvirtd.pid)
  if pid_alive "$pid"; then echo "$pid"; return; fi
  pgrep -x libvirtd | head -n1 || true
}

# The first start on a new machine probes QEMU's capabilities, which takes long on a busy machine:
# wait as long as libvirtd is alive (bounded by START_TIMEOUT), fail at once when it died.
wait_for_libvirt() {
  local deadline=$((SECONDS + START_TIMEOUT)) next_note=$((SECONDS + 30)) why=""
  until libvirt_answers; do
    if ((SECONDS >= deadline)); then
      why="did not answer on $URI within ${START_TIMEOUT}s"
    elif ((SECONDS > 3)) && [[ -z $(libvirtd_pid) ]]; then
      why="exited before answering on $URI"
    fi
    if [[ -n $why ]]; then
      echo "testbed: ERROR: libvirtd $why" >&2
      if [[ -f $LIBVIRTD_LOG ]]; then
        echo "testbed: last lines of $LIBVIRTD_LOG:" >&2
        tail -n 20 "$LIBVIRTD_LOG" >&2
      fi
      exit 1
    fi
    if ((SECONDS >= next_note)); then
      say "libvirtd (pid $(libvirtd_pid)) alive, not answering yet; waiting (up to ${START_TIMEOUT}s)"
      next_note=$((SECONDS + 30))
    fi
    sleep 0.3
  done
}

# Debian's udev rule makes /dev/kvm root:kvm 0660. Where no udev runs (containers, some CI VMs) the
# node stays root:root 0600, QEMU (running as libvirt-qemu) cannot open it, and libvirtd re-probes
# QEMU's capabilities on every define (~8 s each): apply the rule's effect ourselves, and say so.
ensure_kvm_device_access() {
  [[ -c /dev/kvm ]] || return 0
  getent group kvm >/dev/null || return 0
  local current
  current=$(stat -c '%G %a' /dev/kvm)
  [[ $current == "kvm 660" ]] && return 0
  chgrp kvm /dev/kvm
  chmod 0660 /dev/kvm
  say "/dev/kvm was '$current' (no udev here): set root:kvm 0660 as Debian's udev rule does"
}

start_daemons_systemd() {
  say "systemd detected: systemctl start virtlogd libvirtd"
  systemctl start virtlogd libvirtd
}

start_daemons_plain() {
  command -v tini >/dev/null || die "tini is not installed (apt-get install tini)"
  mkdir -p "$STATE_DIR" "$LOG_DIR"

  if [[ -n $(virtlogd_pid) ]]; then
    say "virtlogd already running (pid $(virtlogd_pid))"
  else
    say "starting virtlogd"
    virtlogd -d
    for _ in $(seq 50); do [[ -n $(virtlogd_pid) ]] && break; sleep 0.1; done
    [[ -n $(virtlogd_pid) ]] || die "virtlogd did not start"
    virtlogd_pid >"$STATE_DIR/virtlogd.pid"
  fi

  if libvirt_answers; then
    say "libvirtd already answering on $URI"
    return
  fi
  if [[ -n $(libvirtd_pid) ]]; then
    say "libvirtd running (pid $(libvirtd_pid)) but not answering yet; waiting"
    return
  fi
  say "starting libvirtd under tini -s (log: $LIBVIRTD_LOG)"
  {
    echo "=== $(date -Is) skygrid testbed: starting libvirtd under tini -s"
  } >>"$LIBVIRTD_LOG"
  # setsid + nohup: detach from this shell's session so the daemon survives its exit.
  setsid nohup tini -s -- libvirtd >>"$LIBVIRTD_LOG" 2>&1 </dev/null &
  echo $! >"$STATE_DIR/tini.pid"
}

ensure_nwfilters() {
  local have f name dir missing=0
  have=$(virsh_q nwfilter-list | awk '{print $2}')
  for dir in /etc/libvirt/nwfilter /usr/share/libvirt/nwfilter; do
    [[ -d $dir ]] || continue
    for f in "$dir"/*.xml; do
      [[ -e $f ]] || continue
      name=$(sed -n "s/.*<filter[^>]*name='\([^']*\)'.*/\1/p" "$f" | head -n1)
      [[ -n $name ]] || continue
      if ! grep -qx "$name" <<<"$have"; then
        virsh_q nwfilter-define "$f" >/dev/null
        have+=$'\n'"$name"
        missing=$((missing + 1))
      fi
    done
  done
  if ! virsh_q nwfilter-list | awk '{print $2}' | grep -qx clean-traffic; then
    die "nwfilter clean-traffic is missing and no definition was found (install libvirt-daemon-config-nwfilter)"
  fi
  if ((missing)); then
    say "defined $missing missing nwfilter(s); clean-traffic present"
  else
    say "nwfilters present ($(wc -l <<<"$have") incl. clean-traffic)"
  fi
  # The nwfilter driver programs ebtables/iptables/ip6tables when a filtered NIC comes up.
  local tool
  for tool in ebtables iptables ip6tables; do
    command -v "$tool" >/dev/null || say "WARNING: $tool not found; filtered NICs will fail to start"
  done
}

ensure_default_pool() {
  if ! virsh_q pool-info default >/dev/null 2>&1; then
    say "defining storage pool 'default' at $POOL_DIR"
    mkdir -p "$POOL_DIR"
    virsh_q pool-define-as default dir --target "$POOL_DIR" >/dev/null
    virsh_q pool-build default >/dev/null 2>&1 || true
  fi
  if [[ $(virsh_q pool-info default | awk -F': *' '$1=="State"{print $2}') != running ]]; then
    say "starting storage pool 'default'"
    virsh_q pool-start default >/dev/null
  fi
  if [[ $(virsh_q pool-info default | awk -F': *' '$1=="Autostart"{print $2}') != yes ]]; then
    virsh_q pool-autostart default >/dev/null
  fi
  say "storage pool 'default' active, autostart ($(virsh_q pool-dumpxml default | sed -n 's:.*<path>\(.*\)</path>.*:\1:p' | head -n1))"
}

cmd_start() {
  [[ $EUID -eq 0 ]] || die "must run as root"
  ensure_kvm_device_access
  if have_systemd; then
    start_daemons_systemd
  else
    start_daemons_plain
  fi
  wait_for_libvirt
  say "libvirt answers: $(virsh -c "$URI" version 2>/dev/null | sed -n 's/^Running hypervisor: //p')"
  ensure_nwfilters
  ensure_default_pool
  say "ready"
}

cmd_stop() {
  if have_systemd; then
    say "systemd detected: systemctl stop libvirtd virtlogd"
    systemctl stop libvirtd virtlogd
    return
  fi
  local tpid lpid vpid
  tpid=$(pidfile_pid "$STATE_DIR/tini.pid")
  if pid_alive "$tpid"; then
    lpid=$(pgrep -x -P "$tpid" libvirtd | head -n1 || true)
    # tini forwards SIGTERM to libvirtd and exits when it does.
    stop_pid "libvirtd" "${lpid:-$tpid}"
    stop_pid "tini" "$tpid"
  else
    say "libvirtd was not started by this script (or is not running)"
  fi
  rm -f "$STATE_DIR/tini.pid"

  vpid=$(pidfile_pid "$STATE_DIR/virtlogd.pid")
  if pid_alive "$vpid" && [[ $(cat /proc/"$vpid"/comm 2>/dev/null) == virtlogd ]]; then
    stop_pid "virtlogd" "$vpid"
  else
    say "virtlogd was not started by this script (or is not running)"
  fi
  rm -f "$STATE_DIR/virtlogd.pid"
  if pgrep -f '^(/usr/bin/)?qemu-system-' >/dev/null || pgrep -x dnsmasq >/dev/null; then
    say "note: QEMU/dnsmasq processes keep running (domains and networks survive a libvirtd restart)"
  fi
  say "stopped"
}

cmd_status() {
  local rc=0 v l
  if have_systemd; then
    systemctl --no-pager status virtlogd libvirtd || rc=$?
    return $rc
  fi
  v=$(virtlogd_pid); l=$(libvirtd_pid)
  if [[ -n $v ]]; then say "virtlogd: running (pid $v)"; else say "virtlogd: not running"; fi
  if [[ -n $l ]]; then say "libvirtd: running (pid $l)"; else say "libvirtd: not running"; fi
  if [[ -f $STATE_DIR/tini.pid ]] && pid_alive "$(pidfile_pid "$STATE_DIR/tini.pid")"; then
    say "  under tini -s (pid $(pidfile_pid "$STATE_DIR/tini.pid")), started by this script"
  fi
  if libvirt_answers; then
    say "$URI answers; domains: $(virsh_q list --all --name | grep -c . || true)," \
      "networks active: $(virsh_q net-list --name | grep -c . || true)"
  else
    say "$URI does not answer"
    rc=1
  fi
  return $rc
}

case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 {start|stop|status}" >&2; exit 2 ;;
esac
