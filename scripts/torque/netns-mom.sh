#!/usr/bin/env bash
# A second pbs_mom for the Torque test bed, standing in for a VM node: its own network namespace and address,
# so pbs_server (which knows a MOM by its source address) sees another host.
#
#   scripts/torque/netns-mom.sh start   idempotent: namespace, veth, /etc/hosts line, PBS_HOME, pbs_mom
#   scripts/torque/netns-mom.sh stop    stop that pbs_mom, remove the namespace and the /etc/hosts line
#   scripts/torque/netns-mom.sh status  exit 0 when the pbs_mom runs
#
# Layout: namespace sgtrq, veth sgtrq0 (root side, 10.254.78.1/29) <-> sgtrq1 (inside, 10.254.78.2/29); nothing
# is routed or forwarded beyond the /29. Node name $SKYGRID_TORQUE_NS_NODE (default sgtrq-vm1) resolves to
# 10.254.78.2 through a marked line in /etc/hosts (on a site, DNS or the IPAM hosts export does this), and
# sgtrq-vm2/sgtrq-vm3 to 10.254.78.3/.4, where no MOM answers (nodes that stay down; packets to them end at
# the veth); inside,
# `ip netns exec` mounts /etc/netns/sgtrq/hosts over /etc/hosts, where the server's name is 10.254.78.1.
# The MOM runs with its own PBS_HOME (-d /var/spool/torque-<node>) and host name (-H <node>). The node is not
# created on the server here: that is what the batch_node module under test does.
set -euo pipefail

PREFIX=${SKYGRID_TORQUE_PREFIX:-/opt/skygrid/torque-6.1.3}
NODE=${SKYGRID_TORQUE_NS_NODE:-sgtrq-vm1}
NS=sgtrq
VETH_HOST=sgtrq0
VETH_NS=sgtrq1
ADDR_HOST=10.254.78.1
ADDR_NS=10.254.78.2
SERVER=$(hostname)
MOM_HOME=/var/spool/torque-$NODE
MARK="# skygrid torque test bed ($NS)"

die() { echo "netns-mom.sh: $*" >&2; exit 2; }
log() { echo "==> $*"; }
[[ $(id -u) == 0 ]] || die "run as root"
# shellcheck source-path=SCRIPTDIR
source "$(dirname "$(readlink -f "$0")")/mom-home.sh"

mom_pid() {
  local pid
  [[ -s $MOM_HOME/mom_priv/mom.lock ]] || return 1
  pid=$(tr -dc '0-9' <"$MOM_HOME/mom_priv/mom.lock")
  local exe
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  [[ -n $pid && ${exe% (deleted)} == "$PREFIX/sbin/pbs_mom" ]] && echo "$pid"
}

ns_exists() { ip netns list | awk '{print $1}' | grep -qx "$NS"; }

start() {
  [[ -x $PREFIX/sbin/pbs_mom ]] || die "no $PREFIX/sbin/pbs_mom: run scripts/torque-testbed.sh start first"
  ns_exists || { log "creating network namespace $NS"; ip netns add "$NS"; }
  ip -n "$NS" link set lo up
  if ! ip link show "$VETH_HOST" >/dev/null 2>&1; then
    ip -n "$NS" link del "$VETH_NS" 2>/dev/null || true
    ip link add "$VETH_HOST" type veth peer name "$VETH_NS"
    ip link set "$VETH_NS" netns "$NS"
  fi
  ip addr replace "$ADDR_HOST/29" dev "$VETH_HOST"
  ip -n "$NS" addr replace "$ADDR_NS/29" dev "$VETH_NS"
  ip link set "$VETH_HOST" up
  ip -n "$NS" link set "$VETH_NS" up
  grep -qF "$MARK" /etc/hosts || printf '%s\n' "$ADDR_NS $NODE $MARK" "10.254.78.3 sgtrq-vm2 $MARK" \
    "10.254.78.4 sgtrq-vm3 $MARK" >>/etc/hosts
  mkdir -p "/etc/netns/$NS"
  printf '127.0.0.1 localhost\n%s %s\n%s %s\n' "$ADDR_NS" "$NODE" "$ADDR_HOST" "$SERVER" >"/etc/netns/$NS/hosts"
  torque_mom_home "$MOM_HOME" "$SERVER"
  if ! mom_pid >/dev/null; then
    log "starting pbs_mom $NODE in namespace $NS ($ADDR_NS)"
    ip netns exec "$NS" "$PREFIX/sbin/pbs_mom" -d "$MOM_HOME" -H "$NODE"
    local deadline=$((SECONDS + 20))
    until mom_pid >/dev/null; do
      ((SECONDS < deadline)) || die "pbs_mom $NODE did not start; see $MOM_HOME/mom_logs"
      sleep 0.2
    done
  fi
}

stop() {
  local pid
  if pid=$(mom_pid); then
    log "stopping pbs_mom $NODE (pid $pid)"
    kill "$pid"
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null; do
      ((SECONDS < deadline)) || { kill -9 "$pid" 2>/dev/null || true; break; }
      sleep 0.2
    done
  fi
  if ns_exists; then
    # jobs the MOM started may still run in the namespace
    for pid in $(ip netns pids "$NS" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$NS"
  fi
  ip link del "$VETH_HOST" 2>/dev/null || true
  if grep -qF "$MARK" /etc/hosts; then
    # rewritten in place: /etc/hosts may be a bind mount that a rename would fail on
    local kept
    kept=$(grep -vF "$MARK" /etc/hosts)
    printf '%s\n' "$kept" >/etc/hosts
  fi
  rm -rf "/etc/netns/$NS"
}

case ${1:-status} in
  start) start ;;
  stop) stop ;;
  status) mom_pid >/dev/null ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
