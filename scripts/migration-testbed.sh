#!/usr/bin/env bash
# A second libvirt hypervisor ("host B") on this machine, for live-migration tests against the
# host's own libvirtd ("host A", qemu:///system, see scripts/testbed.sh). Debian 12, run as root.
#
#   scripts/migration-testbed.sh start    idempotent: namespace, veth, virtlogd + libvirtd of host B,
#                                         storage pool `sgmig-pool` on both hosts
#   scripts/migration-testbed.sh stop     destroy domains still running on host B, stop its daemons,
#                                         undefine `sgmig-pool` on host A, remove the namespace
#   scripts/migration-testbed.sh status   show what runs
#   scripts/migration-testbed.sh uri      print host B's libvirt URI
#
# Layout
#   * network namespace `sgmig`, joined to the root namespace by the veth pair sgmig0 (root side,
#     10.254.77.1/30) <-> sgmig1 (in the namespace, 10.254.77.2/30); loopback up inside. No route
#     leads beyond the /30 and nothing is forwarded: the link only connects host A and host B.
#   * inside it, in its own mount and UTS namespace (hostname sgmig-b), `virtlogd -d` and
#     `libvirtd --listen` under `tini -s`, with PRIVATE /etc/libvirt, /var/lib/libvirt,
#     /run/libvirt (= /var/run/libvirt), /var/log/libvirt and /var/cache/libvirt bind-mounted from
#     $STATE_DIR, and their pid files in $STATE_DIR/daemon. /etc/libvirt is copied from the host's
#     once (without the host's domains, secrets and extra pools/networks), then adjusted on every
#     start: distinct host_uuid (libvirt refuses to migrate to "the same host"), TCP listener on
#     10.254.77.2, migration_address/migration_host = 10.254.77.2 (so migrating A -> B needs no
#     migrate URI) and migration_port_min/max (QEMU's incoming migration and NBD ports).
#   * A fresh sysfs is mounted in host B's mount namespace, so it sees its own network devices and
#     NO cgroup hierarchies: its domains run without libvirt cgroups (cputune/memtune/blkiotune are
#     not applied there). With cgroups, both daemons would create /machine/qemu-<id>-<name> in the
#     one shared cgroup tree and a migrating domain could land in the cgroup of its source.
#   * host B cannot see $STATE_DIR/pool-a (an empty read-only tmpfs hides it), just as a real second
#     host could not; its /etc/hosts maps sgmig-b and host A's hostname (-> 10.254.77.1).
#   * storage pool `sgmig-pool` (dir) on both hosts, same name, different directories:
#     host A: $STATE_DIR/pool-a, host B: $STATE_DIR/pool-b (non-shared storage).
#
# Migrating A -> B: virsh migrate ... qemu+tcp://10.254.77.2/system (migrate URI optional).
# Migrating B -> A: virsh -c qemu+tcp://10.254.77.2/system migrate ... qemu:///system; the client
# (not --p2p: host B's qemu:///system is host B itself) talks to both daemons; passing
# --migrateuri tcp://10.254.77.1 is recommended.
# --copy-storage-inc of a <disk type='volume'>: pre-create the overlay on the destination (same
# name, backing file = the destination pool's base volume) and pass a destination XML (--xml,
# VIR_MIGRATE_PARAM_DEST_XML) in which that disk is type='file' with the destination path:
# libvirt 9.0 checks for an existing target before it resolves pool/volume and otherwise fails
# with "pre-creation of storage targets for incremental storage migration is not supported".
set -euo pipefail

NS=sgmig
VETH_HOST=sgmig0
VETH_NS=sgmig1
ADDR_HOST=10.254.77.1
ADDR_NS=10.254.77.2
PREFIX=30
HOSTNAME_B=sgmig-b
TCP_PORT=16509
MIG_PORT_MIN=49152
MIG_PORT_MAX=49215
POOL=sgmig-pool
HOST_URI=qemu:///system
URI="qemu+tcp://$ADDR_NS/system"
STATE_DIR=${SKYGRID_MIGRATION_STATE:-/var/lib/skygrid-migration}
DAEMON_DIR=$STATE_DIR/daemon
ETC_DIR=$STATE_DIR/etc-libvirt
POOL_A=$STATE_DIR/pool-a
POOL_B=$STATE_DIR/pool-b
START_TIMEOUT=${SKYGRID_MIGRATION_TIMEOUT:-600}
TINI_PIDFILE=$DAEMON_DIR/tini.pid
LIBVIRTD_PIDFILE=$DAEMON_DIR/libvirtd.pid
VIRTLOGD_PIDFILE=$DAEMON_DIR/virtlogd.pid
DAEMON_LOG=$DAEMON_DIR/libvirtd.out
SELF=$(readlink -f "$0")
# shellcheck disable=SC2034  # both read by lib/testbed-common.sh
TB_NAME=migration-testbed TB_SCRIPT=scripts/migration-testbed.sh
# shellcheck source-path=SCRIPTDIR
source "$(dirname "$SELF")/lib/testbed-common.sh"

tini_pid() { live_pid "$TINI_PIDFILE" tini; }
libvirtd_pid() { live_pid "$LIBVIRTD_PIDFILE" libvirtd; }
virtlogd_pid() { live_pid "$VIRTLOGD_PIDFILE" virtlogd; }


virsh_b() { timeout 30 virsh -q -c "$URI" "$@"; }
virsh_a() { timeout 30 virsh -q -c "$HOST_URI" "$@"; }
b_answers() { timeout 10 virsh -c "$URI" version >/dev/null 2>&1; }
a_answers() { timeout 10 virsh -c "$HOST_URI" version >/dev/null 2>&1; }

# ------------------------------------------------------------------------------- start --

check_prereqs() {
  [[ $EUID -eq 0 ]] || die "must run as root"
  local tool missing=()
  for tool in ip nsenter unshare mount tini libvirtd virtlogd virsh timeout; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  ((${#missing[@]} == 0)) || die "missing tools: ${missing[*]} (Debian: iproute2, util-linux, tini," \
    "libvirt-daemon-system, libvirt-clients)"
  a_answers || die "host libvirtd does not answer on $HOST_URI; run scripts/testbed.sh start first"
}

ensure_network() {
  if ns_exists "$NS"; then
    say "network namespace $NS exists"
  else
    say "creating network namespace $NS"
    ip netns add "$NS"
  fi
  ip -n "$NS" link set lo up
  if ! ip link show "$VETH_HOST" >/dev/null 2>&1; then
    if ip -n "$NS" link show "$VETH_NS" >/dev/null 2>&1; then
      ip -n "$NS" link del "$VETH_NS"   # orphaned half of an old pair
    fi
    say "creating veth $VETH_HOST ($ADDR_HOST/$PREFIX) <-> $NS:$VETH_NS ($ADDR_NS/$PREFIX)"
    ip link add "$VETH_HOST" type veth peer name "$VETH_NS"
    ip link set "$VETH_NS" netns "$NS"
  fi
  ip -n "$NS" link show "$VETH_NS" >/dev/null 2>&1 ||
    die "$VETH_HOST exists but its peer $VETH_NS is not in namespace $NS; run '$0 stop' and retry"
  ip addr replace "$ADDR_HOST/$PREFIX" dev "$VETH_HOST"
  ip -n "$NS" addr replace "$ADDR_NS/$PREFIX" dev "$VETH_NS"
  ip link set "$VETH_HOST" up
  ip -n "$NS" link set "$VETH_NS" up
}

configure_etc() {
  local uuid_file=$DAEMON_DIR/host-uuid uuid host_a_uuid
  if [[ ! -s $uuid_file ]]; then
    cat /proc/sys/kernel/random/uuid >"$uuid_file"
  fi
  uuid=$(tr -dc 0-9a-f- <"$uuid_file")
  host_a_uuid=$(virsh_a capabilities | sed -n 's:.*<uuid>\(.*\)</uuid>.*:\1:p' | head -n1)
  if [[ $uuid == "$host_a_uuid" ]]; then
    cat /proc/sys/kernel/random/uuid >"$uuid_file"
    uuid=$(tr -dc 0-9a-f- <"$uuid_file")
  fi
  set_conf_block skygrid-migration "$ETC_DIR/libvirtd.conf" \
    "listen_tls=0" \
    "listen_tcp=1" \
    "listen_addr=\"$ADDR_NS\"" \
    "tcp_port=\"$TCP_PORT\"" \
    "# auth_tcp = none: anyone who reaches $ADDR_NS:$TCP_PORT gets full root control of this" \
    "# libvirtd. Acceptable ONLY because the address lives on an isolated veth link between the" \
    "# root namespace of this test machine and namespace $NS, routed nowhere. Never copy this." \
    "auth_tcp=\"none\"" \
    "# distinct from host A: libvirt refuses to migrate to a host with the same UUID" \
    "host_uuid=\"$uuid\"" \
    "log_outputs=\"3:file:/var/log/libvirt/libvirtd.log\""
  set_conf_block skygrid-migration "$ETC_DIR/qemu.conf" \
    "# incoming migrations (and their NBD disk copies) listen here, and sources are told to connect here" \
    "migration_address=\"$ADDR_NS\"" \
    "migration_host=\"$ADDR_NS\"" \
    "migration_port_min=$MIG_PORT_MIN" \
    "migration_port_max=$MIG_PORT_MAX"
  printf '%s\n' \
    "# /etc/hosts of host B (bind-mounted in its mount namespace by scripts/migration-testbed.sh)" \
    "127.0.0.1 localhost" \
    "::1 localhost ip6-localhost ip6-loopback" \
    "$ADDR_NS $HOSTNAME_B" \
    "$ADDR_HOST $(hostname)" >"$DAEMON_DIR/hosts"
}

prepare_state() {
  mkdir -p "$STATE_DIR" "$DAEMON_DIR" "$POOL_A" "$POOL_B"
  chmod 0755 "$STATE_DIR" "$POOL_A" "$POOL_B"
  chmod 0700 "$DAEMON_DIR"
  prepare_libvirt_trees "$STATE_DIR"
  configure_etc
}

# Runs as PID of the future tini, inside netns $NS and a fresh mount + UTS namespace.
ns_init() {
  [[ ${SKYGRID_MIGRATION_INNER:-} == 1 ]] || die "internal subcommand"
  mount --make-rprivate /
  mount_private_libvirt "$STATE_DIR"  # own sysfs without cgroups (see the header), private trees
  mount --bind "$DAEMON_DIR/hosts" /etc/hosts
  mount -t tmpfs -o ro,size=16k,mode=0755 sgmig-hidden "$POOL_A"
  hostname "$HOSTNAME_B"
  echo "=== $(date -Is) migration-testbed: starting virtlogd + libvirtd (host B) in netns $NS"
  # a virtlogd of ours that outlived its libvirtd keeps serving (its socket is in run-libvirt)
  [[ -n $(virtlogd_pid) ]] || virtlogd -d -p "$VIRTLOGD_PIDFILE"
  echo $$ >"$TINI_PIDFILE"
  exec tini -s -- libvirtd --listen -p "$LIBVIRTD_PIDFILE"
}

start_daemons() {
  if [[ -n $(libvirtd_pid) ]] && b_answers; then
    say "libvirtd (host B) already answering on $URI (pid $(libvirtd_pid))"
    return
  fi
  if [[ -n $(tini_pid) ]]; then
    say "libvirtd (host B) running (tini pid $(tini_pid)) but not answering yet; waiting"
    return
  fi
  if [[ -z $(ns_pids "$NS") && -z $(virtlogd_pid) ]]; then
    # nothing of host B runs: runtime state of an earlier run is stale
    find "$STATE_DIR/run-libvirt" -mindepth 1 -delete
  fi
  rm -f "$TINI_PIDFILE" "$LIBVIRTD_PIDFILE"
  say "starting virtlogd + libvirtd --listen under tini -s in $NS (log: $DAEMON_LOG," \
    "$STATE_DIR/var-log-libvirt/libvirtd.log)"
  # setsid + nohup: detached from this shell; nsenter/unshare/ns_init exec into tini (same pid)
  SKYGRID_MIGRATION_INNER=1 setsid nohup nsenter --net="/run/netns/$NS" -- \
    unshare --mount --uts --propagation private -- bash "$SELF" __ns-init \
    >>"$DAEMON_LOG" 2>&1 </dev/null &
}

# Host B's first libvirtd start probes QEMU's capabilities (slow on a busy machine): wait as long
# as its tini is alive, up to START_TIMEOUT, and fail at once when it exited.
wait_for_b() {
  local deadline=$((SECONDS + START_TIMEOUT)) next_note=$((SECONDS + 30)) why=""
  until b_answers; do
    if ((SECONDS >= deadline)); then
      why="did not answer on $URI within ${START_TIMEOUT}s"
    elif ((SECONDS > 3)) && [[ -z $(tini_pid) ]]; then
      why="exited before answering on $URI"
    fi
    if [[ -n $why ]]; then
      echo "migration-testbed: ERROR: libvirtd of host B $why" >&2
      echo "migration-testbed: last lines of $DAEMON_LOG:" >&2
      tail -n 15 "$DAEMON_LOG" >&2 || true
      echo "migration-testbed: last lines of $STATE_DIR/var-log-libvirt/libvirtd.log:" >&2
      tail -n 15 "$STATE_DIR/var-log-libvirt/libvirtd.log" >&2 2>/dev/null || true
      exit 1
    fi
    if ((SECONDS >= next_note)); then
      say "libvirtd of host B alive (tini pid $(tini_pid)), not answering yet; waiting (up to ${START_TIMEOUT}s)"
      next_note=$((SECONDS + 30))
    fi
    sleep 0.3
  done
}

pool_field() { "$1" pool-info "$2" 2>/dev/null | awk -F': *' -v k="$3" '$1==k{print $2}'; }
pool_path() { "$1" pool-dumpxml "$2" 2>/dev/null | sed -n 's:.*<path>\(.*\)</path>.*:\1:p' | head -n1; }

ensure_pool() {  # virsh-function label dir
  local v=$1 label=$2 dir=$3 have
  if "$v" pool-info "$POOL" >/dev/null 2>&1; then
    have=$(pool_path "$v" "$POOL")
    [[ $have == "$dir" ]] ||
      die "pool $POOL on host $label points at $have, expected $dir; undefine it first"
  else
    say "defining pool $POOL on host $label at $dir"
    "$v" pool-define-as "$POOL" dir --target "$dir" >/dev/null
  fi
  if [[ $(pool_field "$v" "$POOL" State) != running ]]; then
    "$v" pool-build "$POOL" >/dev/null 2>&1 || true
    "$v" pool-start "$POOL" >/dev/null
  fi
  [[ $(pool_field "$v" "$POOL" Autostart) == yes ]] || "$v" pool-autostart "$POOL" >/dev/null
  "$v" pool-refresh "$POOL" >/dev/null
  say "pool $POOL on host $label: active, $dir"
}

cmd_start() {
  check_prereqs
  prepare_state
  ensure_network
  start_daemons
  wait_for_b
  say "host B answers on $URI: $(virsh -c "$URI" hostname 2>/dev/null)," \
    "$(virsh -c "$URI" version 2>/dev/null | sed -n 's/^Running hypervisor: //p')"
  ensure_pool virsh_a A "$POOL_A"
  ensure_pool virsh_b B "$POOL_B"
  say "ready: $URI (migration ports $ADDR_NS:$MIG_PORT_MIN-$MIG_PORT_MAX)"
}

# -------------------------------------------------------------------------------- stop --

cmd_stop() {
  [[ $EUID -eq 0 ]] || die "must run as root"
  local dom tpid lpid vpid pid left
  if [[ -n $(libvirtd_pid) ]] && b_answers; then
    for dom in $(virsh_b list --name); do
      say "destroying domain $dom on host B"
      virsh_b destroy "$dom" >/dev/null || true
    done
  fi
  tpid=$(tini_pid)
  if [[ -n $tpid ]]; then
    lpid=$(libvirtd_pid)
    # tini forwards SIGTERM to libvirtd and exits when it does
    stop_pid "libvirtd (host B)" "${lpid:-$tpid}"
    stop_pid "tini (host B)" "$tpid"
  else
    say "libvirtd of host B is not running"
  fi
  vpid=$(virtlogd_pid)
  if [[ -n $vpid ]]; then stop_pid "virtlogd (host B)" "$vpid"; else say "virtlogd of host B is not running"; fi
  rm -f "$TINI_PIDFILE" "$LIBVIRTD_PIDFILE" "$VIRTLOGD_PIDFILE"

  left=$(ns_pids "$NS")
  for pid in $left; do
    # only processes inside our namespace (QEMU of host B if its libvirtd was gone)
    stop_pid "leftover $(pid_comm "$pid") in $NS" "$pid"
  done

  if a_answers && virsh_a pool-info "$POOL" >/dev/null 2>&1 &&
    [[ $(pool_path virsh_a "$POOL") == "$POOL_A" ]]; then
    say "undefining pool $POOL on host A (files in $POOL_A are kept)"
    virsh_a pool-destroy "$POOL" >/dev/null 2>&1 || true
    virsh_a pool-undefine "$POOL" >/dev/null
  fi

  if ip link show "$VETH_HOST" >/dev/null 2>&1; then
    say "removing veth $VETH_HOST"
    ip link del "$VETH_HOST"
  fi
  if ns_exists "$NS"; then
    say "removing network namespace $NS"
    ip netns del "$NS"
  fi
  say "stopped (state kept in $STATE_DIR)"
}

# ------------------------------------------------------------------------------ status --

pool_status() {  # virsh-function label
  if "$1" pool-info "$POOL" >/dev/null 2>&1; then
    say "pool $POOL on host $2: $(pool_field "$1" "$POOL" State) $(pool_path "$1" "$POOL")," \
      "$("$1" vol-list "$POOL" 2>/dev/null | grep -c . || true) volume(s)"
  else
    say "pool $POOL on host $2: not defined"
  fi
}

cmd_status() {
  local rc=0 t l v
  if ns_exists "$NS"; then
    say "namespace $NS: present; $VETH_HOST $(ip -br addr show "$VETH_HOST" 2>/dev/null | awk '{print $2, $3}')," \
      "$VETH_NS $(ip -n "$NS" -br addr show "$VETH_NS" 2>/dev/null | awk '{print $2, $3}')"
  else
    say "namespace $NS: absent"
    rc=1
  fi
  t=$(tini_pid); l=$(libvirtd_pid); v=$(virtlogd_pid)
  if [[ -n $v ]]; then say "virtlogd (host B): running (pid $v)"; else say "virtlogd (host B): not running"; fi
  if [[ -n $l ]]; then
    say "libvirtd (host B): running (pid $l, under tini -s pid ${t:-?})"
  else
    say "libvirtd (host B): not running"
  fi
  if b_answers; then
    say "$URI answers (hostname $(virsh -c "$URI" hostname 2>/dev/null));" \
      "domains running: $(virsh_b list --name | grep -c . || true)," \
      "defined: $(virsh_b list --all --name | grep -c . || true)"
    pool_status virsh_b B
  else
    say "$URI does not answer"
    rc=1
  fi
  if a_answers; then pool_status virsh_a A; fi
  return $rc
}

case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  uri) echo "$URI" ;;
  __ns-init) ns_init ;;
  *) echo "usage: $0 {start|stop|status|uri}" >&2; exit 2 ;;
esac
