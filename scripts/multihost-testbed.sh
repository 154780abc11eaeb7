#!/usr/bin/env bash
# A grid site of several hosts on this machine, reached over SSH: a batch server, an IPAM host and
# worker nodes, each in its own network, mount and UTS namespace. Debian 12, run as root; no systemd.
#
#   scripts/multihost-testbed.sh start    idempotent: bridge, namespaces, sshd, libvirtd, munge + Slurm,
#                                         /etc/hosts block, known_hosts, inventories/multihost/hosts.yml
#   scripts/multihost-testbed.sh stop     destroy the hosts' domains, stop their daemons, remove the
#                                         namespaces, the bridge, the routes and the /etc/hosts block
#   scripts/multihost-testbed.sh status   what runs; exit 0 only when every host answers
#   scripts/multihost-testbed.sh exec HOST CMD...   run a command inside a host (its mounts, network, name)
#   scripts/multihost-testbed.sh down HOST sshd|libvirtd   stop one daemon (the broken-node tests)
#
# SKYGRID_MULTIHOST_TORQUE=1 start: Torque as well (TORQUE 6.1.3, scripts/torque/build.sh): trqauthd,
# pbs_server and pbs_sched on mh-batch (scripts/torque-testbed.sh inside it, without a pbs_mom there), a
# pbs_mom on each worker node (a Torque node mh-wnN); later starts keep it until `stop`. The playbooks use it
# with `-e @inventories/multihost_torque.yml`. Each host's PBS_HOME (/var/spool/torque: server_priv,
# mom_priv, logs) is private; mh-batch has a /tmp of its own (trqauthd's socket is /tmp/trqauthd-unix,
# compiled in: it must not meet the machine's).
#
# Hosts (SKYGRID_MULTIHOST_WORKERS worker nodes, default 3, at most 9), domain skygrid.test:
#   mh-batch  10.254.80.5    sshd, munged; scripts/slurm-testbed.sh inside it: the site's cluster (the worker
#                            nodes join it as dynamic nodes) and a cluster per VO (docs/SECURITY.md)
#   mh-ipam   10.254.80.10   sshd (the IPAM database lives in its private /var/lib/skygrid)
#   mh-wnN    10.254.80.1N   sshd, virtlogd, libvirtd (under tini -s), munged, slurmd -Z -N mh-wnN;
#                            its VMs get the routed subnet 10.254.9N.0/24 (a libvirt network the
#                            convert playbook makes), reached from every other host by a route via 10.254.80.1N
#
# Network: the bridge sgmh0 (10.254.80.1/24) in the root namespace and one veth per host (eth0 inside).
# The namespaces have no default route: they reach the bridge's subnet and the worker nodes' VM subnets,
# nothing else. The root namespace does not forward (net.ipv4.ip_forward stays as it is, 0 here), so
# nothing the test bed does leaves the machine.
#
# Each host runs, in its own mount namespace held open by a `sleep` (its "holder"): PRIVATE /etc/libvirt,
# /var/lib/libvirt, /run/libvirt, /var/log/libvirt, /var/cache/libvirt, /var/lib/skygrid, /etc/munge,
# /run/munge, /var/lib/munge, /var/log/munge, /etc/slurm, /etc/ansible, /etc/skygrid, /usr/local/sbin and
# /etc/hosts, bind-mounted from
# $STATE_DIR/hosts/<host>/, a /run of its own (tmpfs), and on worker nodes a fresh sysfs without cgroup
# mounts (as in scripts/migration-testbed.sh).
# The rest of the file system is the machine's (the packages, /root, /var/cache/skygrid with the VO image).
# Daemons are started inside with nsenter into the holder, so each can be stopped and restarted alone.
# sshd listens only on the host's address, with its own host key, key-only root login with the key this
# script makes ($STATE_DIR/id_ed25519); $STATE_DIR/known_hosts holds every host key. An SSH session sees
# the host's own libvirtd at qemu:///system, its own IPAM database, its own Slurm configuration (and on
# mh-batch the Torque commands on the PATH).
set -euo pipefail

SELF=$(readlink -f "$0")
ROOT=$(dirname "$(dirname "$SELF")")
# shellcheck disable=SC2034  # both read by lib/testbed-common.sh
TB_NAME=multihost-testbed TB_SCRIPT=scripts/multihost-testbed.sh
# shellcheck source-path=SCRIPTDIR
source "$(dirname "$SELF")/lib/testbed-common.sh"
# shellcheck source-path=SCRIPTDIR
source "$(dirname "$SELF")/torque/mom-home.sh"

STATE_DIR=${SKYGRID_MULTIHOST_STATE:-/var/lib/skygrid-multihost}
WORKERS=${SKYGRID_MULTIHOST_WORKERS:-3}
START_TIMEOUT=${SKYGRID_MULTIHOST_TIMEOUT:-300}
INVENTORY_DIR=${SKYGRID_MULTIHOST_INVENTORY:-$ROOT/inventories/multihost}
DOMAIN=skygrid.test
BRIDGE=sgmh0
NET=10.254.80
BRIDGE_ADDR=$NET.1
PREFIX=24
KEY=$STATE_DIR/id_ed25519
KNOWN_HOSTS=$STATE_DIR/known_hosts
MUNGE_KEY=$STATE_DIR/munge.key
SLURMCTLD_PORT=6817
HOSTS_MARK=skygrid-multihost
# The hosts' libvirtd runs as "mh-libvirtd" (a symlink): `pkill -x libvirtd`, which the hypervisor role's
# start script for hosts without systemd ran before it found its libvirtd by pid file, and which other test
# runs on this machine may still run, must not stop the test bed's hosts.
LIBVIRTD_NAME=mh-libvirtd
LIBVIRTD_LINK=$STATE_DIR/bin/$LIBVIRTD_NAME
RACKS=(a b c d e)   # two worker nodes a rack
TORQUE_PREFIX=${SKYGRID_TORQUE_PREFIX:-/opt/skygrid/torque-6.1.3}
TORQUE_ON=$STATE_DIR/torque.on   # started with Torque: later starts keep it, stop removes it
TORQUE_WAIT=${SKYGRID_MULTIHOST_TORQUE_WAIT:-120}
# what an SSH session on mh-batch finds on its PATH: Torque's commands, as a site's install has them
BATCH_PATH=$TORQUE_PREFIX/bin:$TORQUE_PREFIX/sbin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

[[ $WORKERS =~ ^[1-9]$ ]] || die "SKYGRID_MULTIHOST_WORKERS must be 1 to 9, not '$WORKERS'"

# ------------------------------------------------------------------------------ the hosts --

host_list() { printf "%s\n" batch ipam; for ((i = 1; i <= WORKERS; i++)); do echo "wn$i"; done; }
worker_list() { for ((i = 1; i <= WORKERS; i++)); do echo "wn$i"; done; }
is_worker() { [[ $1 == wn* ]]; }
host_addr() {
  case $1 in
    batch) echo "$NET.5" ;;
    ipam) echo "$NET.10" ;;
    wn[1-9]) echo "$NET.1${1#wn}" ;;
    *) die "unknown host '$1' (hosts: $(host_list | tr '\n' ' '))" ;;
  esac
}
vm_subnet() { echo "10.254.9${1#wn}.0/24"; }   # a worker node's routed VM network
short_name() { echo "mh-$1"; }
fqdn() { echo "mh-$1.$DOMAIN"; }
ns_name() { echo "sgmh-$1"; }
veth_name() { echo "sgmhv-$1"; }
host_dir() { echo "$STATE_DIR/hosts/$1"; }
# accept mh-wn1, mh-wn1.skygrid.test or wn1
host_arg() { local h=${1%%.*}; h=${h#mh-}; host_addr "$h" >/dev/null; echo "$h"; }

holder_pid() { live_pid "$(host_dir "$1")/run/holder.pid" sleep; }
sshd_pid() { live_pid "$(host_dir "$1")/run/sshd.pid" sshd; }
# libvirtd and virtlogd keep their default pid files, in the host's private /run: the hypervisor role's
# start script (/usr/local/sbin/skygrid-libvirtd) finds and restarts them there
host_run_pid() {  # host file comm
  local holder
  holder=$(holder_pid "$1")
  [[ -z $holder ]] || live_pid "/proc/$holder/root/run/$2" "$3"
}
libvirtd_pid() { host_run_pid "$1" libvirtd.pid "$LIBVIRTD_NAME"; }
tini_pid() { live_pid "$(host_dir "$1")/run/tini.pid" tini; }
virtlogd_pid() { host_run_pid "$1" virtlogd.pid virtlogd; }
munged_pid() { live_pid "$(host_dir "$1")/munge/run/munged.pid" munged; }
slurmd_pid() { host_run_pid "$1" "slurmd-$(short_name "$1").pid" slurmd; }
mom_pid() { live_pid "$(host_dir "$1")/torque/mom_priv/mom.lock" pbs_mom; }

running() { [[ -n $("$@") ]]; }  # a *_pid function found its process

# Run a command inside a host: its network, mounts and host name.
in_host() {  # host command...
  local h=$1 pid
  shift
  pid=$(holder_pid "$h")
  [[ -n $pid ]] || die "host $(short_name "$h") is not running (no holder process); run '$0 start'"
  nsenter -t "$pid" -m -u -n -- "$@"
}

# --------------------------------------------------------------------------------- start --

check_prereqs() {
  [[ $EUID -eq 0 ]] || die "must run as root"
  need_tools ip nsenter unshare mount tini libvirtd virtlogd virsh timeout ssh ssh-keygen munged \
    slurmctld slurmd scontrol runuser
  [[ -x /usr/sbin/sshd ]] || die "/usr/sbin/sshd is missing: apt-get install openssh-server" \
    "(with /usr/sbin/policy-rc.d exiting 101, so that it does not start an sshd on port 22)"
}

ensure_keys() {
  mkdir -p "$STATE_DIR" "$STATE_DIR/hosts"
  chmod 0711 "$STATE_DIR"   # traversable: the VO slurmctlds of mh-batch run as slurm; keys stay 0600
  [[ -s $KEY ]] || { say "generating the test bed's SSH key $KEY"; ssh-keygen -q -t ed25519 -N "" -C skygrid-multihost -f "$KEY"; }
  cp "$KEY.pub" "$STATE_DIR/authorized_keys"
  mkdir -p "$STATE_DIR/bin"
  ln -sfn "$(command -v libvirtd)" "$LIBVIRTD_LINK"
  if [[ ! -s $MUNGE_KEY ]]; then
    say "generating the test bed's munge key (never printed)"
    (umask 077; dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none)
  fi
  chmod 0400 "$MUNGE_KEY"
}

ensure_bridge() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    say "creating bridge $BRIDGE ($BRIDGE_ADDR/$PREFIX)"
    ip link add "$BRIDGE" type bridge
  fi
  ip addr replace "$BRIDGE_ADDR/$PREFIX" dev "$BRIDGE"
  ip link set "$BRIDGE" up
}

ensure_host_net() {  # host
  local h=$1 ns veth
  ns=$(ns_name "$h") veth=$(veth_name "$h")
  ns_exists "$ns" || { say "creating network namespace $ns"; ip netns add "$ns"; }
  ip -n "$ns" link set lo up
  if ! ip link show "$veth" >/dev/null 2>&1; then
    ip -n "$ns" link del eth0 2>/dev/null || true   # orphaned half of an old pair
    say "creating veth $veth <-> $ns:eth0 ($(host_addr "$h")/$PREFIX)"
    ip link add "$veth" type veth peer name "sgmhp-$h"
    ip link set "sgmhp-$h" netns "$ns"
    ip -n "$ns" link set "sgmhp-$h" name eth0
  fi
  ip -n "$ns" link show eth0 >/dev/null 2>&1 ||
    die "$veth exists but its peer eth0 is not in namespace $ns; run '$0 stop' and retry"
  ip link set "$veth" master "$BRIDGE" up
  ip -n "$ns" addr replace "$(host_addr "$h")/$PREFIX" dev eth0
  ip -n "$ns" link set eth0 up
}

# Every namespace but the worker's own, and the root namespace, reach a worker's VMs through it.
ensure_routes() {
  local w h
  for w in $(worker_list); do
    ip route replace "$(vm_subnet "$w")" via "$(host_addr "$w")" dev "$BRIDGE"
    for h in $(host_list); do
      [[ $h == "$w" ]] && continue
      ip -n "$(ns_name "$h")" route replace "$(vm_subnet "$w")" via "$(host_addr "$w")" dev eth0
    done
  done
}

hosts_lines() {
  local h
  for h in $(host_list); do echo "$(host_addr "$h") $(fqdn "$h") $(short_name "$h")"; done
}

write_hosts_files() {
  local h d
  hosts_lines | replace_marked_block "$HOSTS_MARK" /etc/hosts
  for h in $(host_list); do
    d=$(host_dir "$h")
    # the test bed's block, rewritten in place: what the playbooks add (the Torque server's block of VM
    # slot names on mh-batch) stays
    if ! grep -q "^# >>> $HOSTS_MARK" "$d/hosts" 2>/dev/null; then
      {
        echo "# /etc/hosts of $(fqdn "$h") (bind-mounted in its mount namespace by scripts/multihost-testbed.sh)"
        echo "127.0.0.1 localhost"
        echo "::1 localhost ip6-localhost ip6-loopback"
      } >"$d/hosts"
    fi
    hosts_lines | replace_marked_block "$HOSTS_MARK" "$d/hosts"
  done
}

write_sshd_config() {  # host
  local h=$1 d
  d=$(host_dir "$h")
  [[ -s $d/ssh_host_ed25519_key ]] || ssh-keygen -q -t ed25519 -N "" -C "$(fqdn "$h")" -f "$d/ssh_host_ed25519_key"
  cat >"$d/sshd_config.new" <<EOF
# sshd of $(fqdn "$h"), written by scripts/multihost-testbed.sh
ListenAddress $(host_addr "$h"):22
HostKey $d/ssh_host_ed25519_key
PidFile $d/run/sshd.pid
AuthorizedKeysFile $STATE_DIR/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PrintMotd no
AcceptEnv LANG LC_*
MaxStartups 100:30:200
MaxSessions 100
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
  [[ $h != batch ]] || echo "SetEnv PATH=$BATCH_PATH" >>"$d/sshd_config.new"
  # rewritten only when it changes: a running sshd reloads a configuration newer than its pid file
  if cmp -s "$d/sshd_config.new" "$d/sshd_config"; then rm -f "$d/sshd_config.new"; else mv "$d/sshd_config.new" "$d/sshd_config"; fi
}

write_known_hosts() {
  local h
  for h in $(host_list); do
    echo "$(fqdn "$h"),$(short_name "$h"),$(host_addr "$h") $(cut -d' ' -f1-2 "$(host_dir "$h")/ssh_host_ed25519_key.pub")"
  done >"$KNOWN_HOSTS"
}

configure_libvirt() {  # host
  local d uuid_file
  d=$(host_dir "$1")
  prepare_libvirt_trees "$d"
  uuid_file=$d/host-uuid
  [[ -s $uuid_file ]] || cat /proc/sys/kernel/random/uuid >"$uuid_file"
  set_conf_block "$HOSTS_MARK" "$d/etc-libvirt/libvirtd.conf" \
    "# reached over SSH only (qemu+ssh://), through its unix socket in the private /run/libvirt" \
    "listen_tls=0" \
    "listen_tcp=0" \
    "host_uuid=\"$(tr -dc 0-9a-f- <"$uuid_file")\"" \
    "log_outputs=\"3:file:/var/log/libvirt/libvirtd.log\""
}

prepare_host() {  # host
  local h=$1 d
  d=$(host_dir "$h")
  mkdir -p "$d/run" "$d/log" "$d/var-lib-skygrid" "$d/etc-slurm" "$d/slurm" "$d/etc-ansible" "$d/etc-skygrid" \
    "$d/munge/etc" "$d/munge/run" "$d/munge/lib" "$d/munge/log" "$d/torque"
  # seen inside the host at /var/spool/torque: the check that its PBS_HOME is its own
  echo "PBS_HOME of $(fqdn "$h") (scripts/multihost-testbed.sh)" >"$d/torque/.skygrid-multihost"
  chmod 0700 "$d/run" "$d/log"
  chmod 0755 "$d/var-lib-skygrid" "$d/munge/run"
  chown munge:munge "$d/munge/etc" "$d/munge/run" "$d/munge/lib" "$d/munge/log"
  chmod 0700 "$d/munge/etc" "$d/munge/lib" "$d/munge/log"
  install -o munge -g munge -m 0400 "$MUNGE_KEY" "$d/munge/etc/munge.key"
  # /usr/local/sbin and /etc/skygrid of its own, starting as copies of the machine's: the libvirt network hook
  # in the host's /etc/libvirt runs the isolation script with its rules from the first start on, and fails
  # the network without them (the role then keeps both the host's own)
  mkdir -p "$d/usr-local-sbin"
  cp -an /usr/local/sbin/. "$d/usr-local-sbin/"
  [[ -e $d/etc-skygrid/vm-isolation.rules || ! -d /etc/skygrid ]] || cp -an /etc/skygrid/. "$d/etc-skygrid/"
  write_sshd_config "$h"
  if is_worker "$h"; then configure_libvirt "$h"; fi
}

# Runs as the holder of a host's namespaces: private mounts, host name, then sleep forever.
host_init() {  # host
  [[ ${SKYGRID_MULTIHOST_INNER:-} == 1 ]] || die "internal subcommand"
  local h=$1 d
  d=$(host_dir "$h")
  mount --make-rprivate /
  # a /run of its own: pid files by name (/run/slurmd-<node>.pid), sockets (/run/munge-vo) and sshd's
  # privilege separation directory do not meet another host's, nor the machine's
  mount -t tmpfs -o mode=0755,size=64m run /run
  mkdir -p /run/munge /run/sshd /run/lock
  if is_worker "$h"; then mount_private_libvirt "$d"; fi
  mount --bind "$d/var-lib-skygrid" /var/lib/skygrid 2>/dev/null ||
    { mkdir -p /var/lib/skygrid && mount --bind "$d/var-lib-skygrid" /var/lib/skygrid; }
  mount --bind "$d/munge/etc" /etc/munge
  mount --bind "$d/munge/run" /run/munge
  mount --bind "$d/munge/lib" /var/lib/munge
  mount --bind "$d/munge/log" /var/log/munge
  mount --bind "$d/etc-slurm" /etc/slurm
  mkdir -p /etc/ansible && mount --bind "$d/etc-ansible" /etc/ansible   # local facts (ansible_local)
  # what the hypervisor role writes per host: the VM isolation rules, its scripts (otherwise the hosts,
  # and other runs on this machine, overwrite each other's)
  mkdir -p /etc/skygrid && mount --bind "$d/etc-skygrid" /etc/skygrid
  mount --bind "$d/usr-local-sbin" /usr/local/sbin
  mount --bind "$d/hosts" /etc/hosts
  mkdir -p /var/spool/torque && mount --bind "$d/torque" /var/spool/torque   # PBS_HOME: server_priv, mom_priv
  # trqauthd's socket is /tmp/trqauthd-unix (compiled in): the batch server's must not replace the machine's
  [[ $h != batch ]] || mount -t tmpfs -o mode=1777,size=256m sgmh-tmp /tmp
  hostname "$(short_name "$h")"
  echo "=== $(date -Is) host $(fqdn "$h") up in netns $(ns_name "$h")"
  echo $$ >"$d/run/holder.pid"
  exec sleep infinity
}

start_holder() {  # host
  local h=$1 d
  d=$(host_dir "$h")
  [[ -n $(holder_pid "$h") ]] && return 0
  if [[ -n $(ns_pids "$(ns_name "$h")") ]]; then
    die "namespace $(ns_name "$h") has processes but no holder: run '$0 stop' first"
  fi
  find "$d/run" "$d/munge/run" -mindepth 1 -delete
  [[ ! -d $d/run-libvirt ]] || find "$d/run-libvirt" -mindepth 1 -delete
  SKYGRID_MULTIHOST_INNER=1 setsid nohup nsenter --net="/run/netns/$(ns_name "$h")" -- \
    unshare --mount --uts --propagation private -- bash "$SELF" __host-init "$h" \
    >>"$d/log/holder.log" 2>&1 </dev/null &
  wait_until 20 "the namespaces of $(short_name "$h") (see $d/log/holder.log)" running holder_pid "$h"
}

start_sshd() {  # host
  local h=$1 d
  d=$(host_dir "$h")
  if [[ -n $(sshd_pid "$h") ]]; then
    if [[ $d/sshd_config -nt $d/run/sshd.pid ]]; then
      say "reloading sshd of $(short_name "$h") (new $d/sshd_config)"
      kill -HUP "$(sshd_pid "$h")"
      touch "$d/run/sshd.pid"
    fi
    return 0
  fi
  in_host "$h" /usr/sbin/sshd -t -f "$d/sshd_config" || die "sshd of $(short_name "$h") rejects $d/sshd_config"
  say "starting sshd of $(short_name "$h") on $(host_addr "$h"):22"
  in_host "$h" /usr/sbin/sshd -f "$d/sshd_config" -E "$d/log/sshd.log"
  wait_until 10 "sshd of $(short_name "$h") (see $d/log/sshd.log)" running sshd_pid "$h"
}

libvirt_answers() { in_host "$1" timeout 10 virsh -c qemu:///system version >/dev/null 2>&1; }

start_libvirt() {  # host: virtlogd, then libvirtd under tini -s (QEMU processes reaped at once)
  local h=$1 d
  d=$(host_dir "$h")
  [[ -n $(virtlogd_pid "$h") ]] || in_host "$h" virtlogd -d
  # running: ours (under our tini), or one the hypervisor role's start script restarted
  [[ -n $(tini_pid "$h") || -n $(libvirtd_pid "$h") ]] && return 0
  say "starting libvirtd of $(short_name "$h") under tini -s (log: $d/log/libvirtd.out)"
  # shellcheck disable=SC2016  # expanded by the inner bash
  setsid nohup nsenter -t "$(holder_pid "$h")" -m -u -n -- bash -c \
    'echo $$ >"$1"; exec tini -s -- "$2"' _ "$d/run/tini.pid" "$LIBVIRTD_LINK" \
    >>"$d/log/libvirtd.out" 2>&1 </dev/null &
}

# A first libvirtd start probes QEMU's capabilities (slow on a busy machine): wait while its tini
# lives, up to START_TIMEOUT; fail at once when it exited, with its last words.
wait_for_libvirt() {  # host
  local h=$1 d deadline=$((SECONDS + START_TIMEOUT)) why=""
  d=$(host_dir "$h")
  until libvirt_answers "$h"; do
    if ((SECONDS >= deadline)); then why="did not answer within ${START_TIMEOUT}s"
    elif ((SECONDS > 3)) && [[ -z $(tini_pid "$h") && -z $(libvirtd_pid "$h") ]]; then why="exited before answering"; fi
    if [[ -n $why ]]; then
      echo "$TB_NAME: ERROR: libvirtd of $(short_name "$h") $why; last lines of its logs:" >&2
      tail -n 10 "$d/log/libvirtd.out" "$d/var-log-libvirt/libvirtd.log" >&2 2>/dev/null || true
      exit 1
    fi
    sleep 0.5
  done
}

munge_ok() { in_host "$1" bash -c 'munge -n </dev/null | unmunge >/dev/null'; }

start_munge() {  # host
  local h=$1
  [[ -n $(munged_pid "$h") ]] && munge_ok "$h" && return 0
  say "starting munged of $(short_name "$h")"
  in_host "$h" runuser -u munge -- /usr/sbin/munged
  wait_until 15 "munged of $(short_name "$h") (see $(host_dir "$h")/munge/log)" munge_ok "$h"
}

ctld_up() { in_host batch timeout 5 scontrol ping | grep -q UP; }

# The batch server runs the project's Slurm test bed inside its namespace: the site's cluster and one
# cluster per VO with its own munge key and munged (docs/SECURITY.md), all in mh-batch's private /etc/slurm,
# /etc/munge and /run. Its worker nodes join the site's cluster as dynamic nodes (start_slurmd).
start_batch_slurm() {
  local d
  d=$(host_dir batch)
  say "starting Slurm on $(short_name batch) (scripts/slurm-testbed.sh start, inside the host; log: $d/log/slurm-testbed.log)"
  in_host batch env SKYGRID_SLURM_DIR="$d/slurm" bash "$ROOT/scripts/slurm-testbed.sh" start >>"$d/log/slurm-testbed.log" 2>&1 ||
    { tail -n 15 "$d/log/slurm-testbed.log" >&2; die "Slurm did not start on $(short_name batch); see $d/log/slurm-testbed.log"; }
  wait_until 30 "slurmctld of mh-batch (see $d/slurm/log)" ctld_up
}

node_registered() {  # host: a node of the site's cluster, not down
  local state
  state=$(in_host batch sinfo -h -N -n "$(short_name "$1")" -o %T 2>/dev/null | head -n1)
  [[ -n $state && $state != down* && $state != *'*' ]]
}

start_slurmd() {  # worker host: a dynamic node of the site's cluster, configuration from the batch server
  local h=$1
  [[ -n $(slurmd_pid "$h") ]] && return 0
  say "starting slurmd $(short_name "$h") (configless from $(short_name batch))"
  # shellcheck disable=SC2016  # expanded by the inner bash
  # slurmd 22.05 will not start without the cgroup file systems, which the host's libvirtd must not see
  # (see the header): slurmd gets a mount namespace of its own, a child of the host's, with the machine's.
  in_host "$h" unshare --mount --propagation private -- bash -c 'mkdir -p /var/spool/slurmd /var/log/slurm &&
    mount -t tmpfs -o mode=0755 cgroup /sys/fs/cgroup &&
    for c in cpuset memory devices freezer name=systemd; do mkdir -p /sys/fs/cgroup/${c#name=} && mount -t cgroup -o $c cgroup /sys/fs/cgroup/${c#name=}; done &&
    slurmd -Z -N "$1" --conf-server "$2"' _ "$(short_name "$h")" "$(host_addr batch):$SLURMCTLD_PORT"
  wait_until 15 "slurmd of $(short_name "$h") (see /var/log/slurm/slurmd-$(short_name "$h").log)" running slurmd_pid "$h"
  wait_until 30 "node $(short_name "$h") to register in the site's cluster on $(short_name batch)" node_registered "$h"
}

# ---------------------------------------------------------------------- Torque (optional) --

torque_wanted() { [[ ${SKYGRID_MULTIHOST_TORQUE:-0} == 1 || -e $TORQUE_ON ]]; }

# scripts/torque-testbed.sh inside mh-batch: its own PBS_HOME, /tmp (trqauthd's socket) and name
batch_torque() {  # start|stop|status
  in_host batch env SKYGRID_TORQUE_MOM=0 SKYGRID_TORQUE_PREFIX="$TORQUE_PREFIX" bash "$ROOT/scripts/torque-testbed.sh" "$1"
}

tq_batch() { in_host batch env PATH="$BATCH_PATH" "$@"; }   # a Torque client command on mh-batch

torque_node_state() {  # worker host: its node's state in pbs_server, empty when unknown
  tq_batch pbsnodes -x "$(short_name "$1")" 2>/dev/null | sed -n 's:.*<state>\([^<]*\)</state>.*:\1:p'
}

torque_node_up() {  # worker host: its pbs_mom reported (free, or offline as a converted VM host), not down
  local state
  state=$(torque_node_state "$1")
  [[ -n $state && $state != *down* ]]
}

# The hosts must have been started with their private PBS_HOME (and mh-batch its /tmp): a test bed started
# by an older version of this script has not.
check_torque_mounts() {
  local h
  [[ -x $TORQUE_PREFIX/sbin/pbs_server && -x $TORQUE_PREFIX/sbin/pbs_mom ]] ||
    die "Torque is not built in $TORQUE_PREFIX: run scripts/torque/build.sh (make torque)"
  for h in $(host_list); do
    in_host "$h" test -e /var/spool/torque/.skygrid-multihost ||
      die "$(short_name "$h") has no private /var/spool/torque (started by an older test bed): run '$0 stop', then start"
  done
  [[ $(in_host batch findmnt -n -o SOURCE /tmp) == sgmh-tmp ]] ||
    die "$(short_name batch) has no private /tmp (started by an older test bed): run '$0 stop', then start"
}

# mh-batch: PBS_HOME's directories and the scheduler's configuration as the install made them in the machine's
# (its lock file and logs stay there), then torque-testbed.sh: trqauthd, pbs_server, pbs_sched, no pbs_mom.
start_batch_torque() {
  local d f w
  d=$(host_dir batch)
  [[ -r /var/spool/torque/sched_priv/sched_config ]] ||
    die "/var/spool/torque/sched_priv/sched_config is missing: run scripts/torque/build.sh --force"
  mirror_top_dirs /var/spool/torque "$d/torque"   # checkpoint, aux, spool...: pbs_server fails without them
  for f in /var/spool/torque/sched_priv/*; do
    if [[ -f $f && $f != *.lock ]]; then cp -n "$f" "$d/torque/sched_priv/"; fi
  done
  cp -n /var/spool/torque/pbs_environment "$d/torque/" 2>/dev/null || touch "$d/torque/pbs_environment"
  say "starting Torque on $(short_name batch) (scripts/torque-testbed.sh start inside the host; log: $d/log/torque-testbed.log)"
  batch_torque start >>"$d/log/torque-testbed.log" 2>&1 ||
    { tail -n 15 "$d/log/torque-testbed.log" >&2; die "Torque did not start on $(short_name batch); see $d/log/torque-testbed.log and $d/torque/server_logs"; }
  for w in $(worker_list); do   # the worker nodes are the site's compute nodes
    tq_batch pbsnodes -x "$(short_name "$w")" >/dev/null 2>&1 ||
      tq_batch qmgr -c "create node $(short_name "$w") np=$(nproc)" ||
      die "could not create node $(short_name "$w") in pbs_server on $(short_name batch); see $d/torque/server_logs"
  done
}

start_mom() {  # worker host: pbs_mom with the host's own PBS_HOME, reporting to mh-batch
  local h=$1 d
  d=$(host_dir "$h")
  [[ -n $(mom_pid "$h") ]] && return 0
  torque_mom_home "$d/torque" "$(short_name batch)"
  say "starting pbs_mom of $(short_name "$h") (log: $d/torque/mom_logs)"
  in_host "$h" "$TORQUE_PREFIX/sbin/pbs_mom" >>"$d/log/pbs_mom.out" 2>&1 </dev/null
  wait_until 20 "pbs_mom of $(short_name "$h") (see $d/torque/mom_logs, $d/log/pbs_mom.out)" running mom_pid "$h"
}

start_torque() {
  local w
  check_torque_mounts
  touch "$TORQUE_ON"
  start_batch_torque
  for w in $(worker_list); do start_mom "$w"; done
  for w in $(worker_list); do wait_for_torque_node "$w"; done
}

wait_for_torque_node() {  # worker host: bounded; on timeout, the state pbs_server last gave and the logs to read
  local h=$1 deadline=$((SECONDS + TORQUE_WAIT))
  until torque_node_up "$h"; do
    ((SECONDS < deadline)) || die "timed out after ${TORQUE_WAIT}s waiting for node $(short_name "$h") to report to" \
      "pbs_server (state: '$(torque_node_state "$h")'); see $(host_dir "$h")/torque/mom_logs and $(host_dir batch)/torque/server_logs"
    sleep 1
  done
}

ssh_ok() {  # host
  ssh -q -i "$KEY" -o UserKnownHostsFile="$KNOWN_HOSTS" -o StrictHostKeyChecking=yes -o BatchMode=yes \
    -o ConnectTimeout=5 "root@$(fqdn "$1")" true
}

write_inventory() {
  local w i
  mkdir -p "$INVENTORY_DIR"
  {
    echo "---"
    echo "# GENERATED by scripts/multihost-testbed.sh start ($WORKERS worker nodes); not in git."
    echo "# The site's settings are in group_vars/ beside this file."
    echo "all:"
    echo "  children:"
    echo "    batch_servers:"
    echo "      hosts:"
    echo "        $(fqdn batch):"
    echo "    ipam_hosts:"
    echo "      hosts:"
    echo "        $(fqdn ipam):"
    echo "    worker_nodes:"
    echo "      children:"
    # racks of two
    for ((i = 1; i <= WORKERS; i += 2)); do
      echo "        rack_${RACKS[(i - 1) / 2]}:"
      echo "          hosts:"
      for w in "wn$i" "wn$((i + 1))"; do
        ((${w#wn} <= WORKERS)) || continue
        echo "            $(fqdn "$w"):"
      done
    done
    echo "  vars:"
    echo "    fabric_ip_pools:   # one a worker node: its routed VM subnet (fabric_vm_network.pool in group_vars)"
    for w in $(worker_list); do
      echo "      mh_$w: {cidr: $(vm_subnet "$w"), gateway: ${NET%.*}.9${w#wn}.1, range: {start: ${NET%.*}.9${w#wn}.10, end: ${NET%.*}.9${w#wn}.99}, dns_domain: vm.$DOMAIN}"
    done
    echo "    ansible_connection: ssh"
    echo "    ansible_user: root"
    echo "    ansible_ssh_private_key_file: $KEY"
    echo "    ansible_ssh_common_args: -o UserKnownHostsFile=$KNOWN_HOSTS -o StrictHostKeyChecking=yes"
    echo "    ansible_python_interpreter: /usr/bin/python3"
  } >"$INVENTORY_DIR/hosts.yml.new"
  mv "$INVENTORY_DIR/hosts.yml.new" "$INVENTORY_DIR/hosts.yml"
}

cmd_start() {
  local h
  check_prereqs
  ensure_keys
  ensure_bridge
  for h in $(host_list); do
    mkdir -p "$(host_dir "$h")"
    prepare_host "$h"
    ensure_host_net "$h"
  done
  ensure_routes
  write_hosts_files
  write_known_hosts
  for h in $(host_list); do
    start_holder "$h"
    start_sshd "$h"
    start_munge "$h"
  done
  for h in $(worker_list); do start_libvirt "$h"; done
  start_batch_slurm
  for h in $(worker_list); do
    wait_for_libvirt "$h"
    start_slurmd "$h"
  done
  if torque_wanted; then start_torque; fi
  for h in $(host_list); do
    wait_until 20 "SSH to root@$(fqdn "$h") with $KEY (see $(host_dir "$h")/log/sshd.log)" ssh_ok "$h"
  done
  write_inventory
  say "ready: $(host_list | sed 's/^/mh-/' | tr '\n' ' ')- inventory $INVENTORY_DIR$(torque_wanted && echo " (Torque: -e @inventories/multihost_torque.yml)")"
}

# ---------------------------------------------------------------------------------- stop --

stop_host() {  # host
  local h=$1 d pid dom
  d=$(host_dir "$h")
  if [[ -n $(holder_pid "$h") ]]; then
    if is_worker "$h" && libvirt_answers "$h"; then
      for dom in $(in_host "$h" virsh -q -c qemu:///system list --name); do
        say "destroying domain $dom on $(short_name "$h")"
        in_host "$h" virsh -q -c qemu:///system destroy "$dom" >/dev/null || true
      done
    fi
  fi
  # Torque first (qterm saves pbs_server's state); whatever a job left runs in the namespace: swept below
  if [[ $h == batch && -n $(holder_pid "$h") && -e $d/torque/server_priv/serverdb ]]; then
    batch_torque stop >>"$d/log/torque-testbed.log" 2>&1 || say "torque-testbed.sh stop in $(short_name "$h") failed; see $d/log/torque-testbed.log"
  fi
  pid=$(mom_pid "$h"); [[ -z $pid ]] || stop_pid "pbs_mom of $(short_name "$h")" "$pid"
  pid=$(slurmd_pid "$h"); [[ -z $pid ]] || stop_pid "slurmd of $(short_name "$h")" "$pid"
  pid=$(libvirtd_pid "$h"); [[ -z $pid ]] || stop_pid "libvirtd of $(short_name "$h")" "$pid"
  pid=$(tini_pid "$h"); [[ -z $pid ]] || stop_pid "tini of $(short_name "$h")" "$pid"
  pid=$(virtlogd_pid "$h"); [[ -z $pid ]] || stop_pid "virtlogd of $(short_name "$h")" "$pid"
  pid=$(munged_pid "$h"); [[ -z $pid ]] || stop_pid "munged of $(short_name "$h")" "$pid"
  pid=$(sshd_pid "$h"); [[ -z $pid ]] || stop_pid "sshd of $(short_name "$h")" "$pid"
  for pid in $(ns_pids "$(ns_name "$h")"); do
    stop_pid "$(pid_comm "$pid") in $(ns_name "$h")" "$pid"   # the holder, sessions, leftovers
  done
  rm -f "$d"/run/*.pid
  if ip link show "$(veth_name "$h")" >/dev/null 2>&1; then ip link del "$(veth_name "$h")"; fi
  if ns_exists "$(ns_name "$h")"; then say "removing network namespace $(ns_name "$h")"; ip netns del "$(ns_name "$h")"; fi
}

cmd_stop() {
  [[ $EUID -eq 0 ]] || die "must run as root"
  local h i
  # every host an earlier start may have made, whatever SKYGRID_MULTIHOST_WORKERS says now
  WORKERS=9
  for h in $(host_list); do   # the hosts at once: each waits for its own daemons
    [[ -d $(host_dir "$h") ]] || ns_exists "$(ns_name "$h")" || continue
    stop_host "$h" &
  done
  wait
  for i in 1 2 3 4 5 6 7 8 9; do ip route del "10.254.9$i.0/24" dev "$BRIDGE" 2>/dev/null || true; done
  if ip link show "$BRIDGE" >/dev/null 2>&1; then say "removing bridge $BRIDGE"; ip link del "$BRIDGE"; fi
  replace_marked_block "$HOSTS_MARK" /etc/hosts </dev/null
  rm -f "$INVENTORY_DIR/hosts.yml" "$TORQUE_ON"
  say "stopped (keys and host state kept in $STATE_DIR)"
}

# -------------------------------------------------------------------------------- status --

cmd_status() {
  local rc=0 h line
  for h in $(host_list); do
    line="$(short_name "$h") $(host_addr "$h"):"
    if [[ -z $(holder_pid "$h") ]]; then say "$line not running"; rc=1; continue; fi
    if ssh_ok "$h"; then line+=" ssh ok"; else line+=" ssh FAILS"; rc=1; fi
    if munge_ok "$h"; then line+=", munge ok"; else line+=", munge FAILS"; rc=1; fi
    if is_worker "$h"; then
      if libvirt_answers "$h"; then
        line+=", libvirt ok ($(in_host "$h" virsh -q -c qemu:///system list --name | grep -c . || true) running)"
      else line+=", libvirt FAILS"; rc=1; fi
      line+=", slurmd $([[ -n $(slurmd_pid "$h") ]] && echo running || echo 'NOT running')"
    fi
    if [[ $h == batch ]]; then
      if ctld_up; then line+=", slurmctld up"; else line+=", slurmctld DOWN"; rc=1; fi
      if torque_wanted; then
        if batch_torque status >/dev/null 2>&1; then line+=", pbs_server up"; else line+=", Torque DOWN"; rc=1; fi
      fi
    elif is_worker "$h" && torque_wanted; then
      if torque_node_up "$h"; then line+=", pbs_mom $(torque_node_state "$h")"; else line+=", pbs_mom DOWN"; rc=1; fi
    fi
    say "$line"
  done
  return $rc
}

# A broken host for the failure tests: stop one daemon; `start` repairs it.
cmd_down() {  # host daemon
  local h pid p
  h=$(host_arg "${1:?host}")
  case ${2:?daemon} in
    # the listener and every session: a client's ControlPersist master would otherwise keep the host reachable
    sshd) pid="$(sshd_pid "$h") $(for p in $(ns_pids "$(ns_name "$h")"); do [[ $(pid_comm "$p") != sshd ]] || echo "$p"; done)" ;;
    libvirtd) pid=$(libvirtd_pid "$h") ;;
    *) die "down: sshd or libvirtd, not '$2'" ;;
  esac
  for p in $pid; do stop_pid "$2 of $(short_name "$h")" "$p"; done
}

case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  exec) h=$(host_arg "${2:?host}"); shift 2; in_host "$h" "$@" ;;
  down) cmd_down "${2:-}" "${3:-}" ;;
  __host-init) host_init "$2" ;;
  *) echo "usage: $0 {start|stop|status|exec HOST CMD...|down HOST sshd|libvirtd}" >&2; exit 2 ;;
esac
