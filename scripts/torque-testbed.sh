#!/usr/bin/env bash
# A one-host TORQUE 6.1.3 test bed: trqauthd, pbs_server, pbs_sched and a pbs_mom for this host.
#
#   scripts/torque-testbed.sh start    build Torque if needed (scripts/torque/build.sh: once, cached outside
#                                      the clone), configure and start what is not running (idempotent: a
#                                      second run starts and changes nothing)
#   scripts/torque-testbed.sh stop     stop pbs_mom, pbs_sched, pbs_server and trqauthd of this install
#   scripts/torque-testbed.sh status   show the daemons and `pbsnodes`; exit 0 only when all answer
#   scripts/torque-testbed.sh env      print the PATH line that puts the Torque commands first
#
# No systemd is needed: the daemons are started directly. PBS_HOME is /var/spool/torque (pbs_server refuses
# one under /tmp). The server is this host, by its name (`hostname`), which must resolve: it is added to
# /etc/hosts (127.0.1.1) when it does not. On the first start the server database is created
# (`pbs_server -t create`) and torque.setup's steps are done here (torque.setup itself is `#!/bin/sh` with bash
# syntax): root@<host> becomes manager and operator, queue `batch` is the default, scheduling is on. This
# host is node <host> (np = its cores); SKYGRID_TORQUE_MOM=0 starts no pbs_mom and makes no node for this host
# (a batch server that is not a compute node: scripts/multihost-testbed.sh runs this script inside its mh-batch).
# Daemons are found by their pid/lock files and by the program they run (/proc/PID/exe under the install
# prefix) in this script's own mount namespace, never by name alone: the multi-host test bed's hosts run the
# same programs beside this one.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
PREFIX=${SKYGRID_TORQUE_PREFIX:-/opt/skygrid/torque-6.1.3}
PBS_HOME=${SKYGRID_TORQUE_HOME:-/var/spool/torque}
HOST=$(hostname)
NP=$(nproc)
BIN=$PREFIX/bin
SBIN=$PREFIX/sbin
SERVER_LOCK=$PBS_HOME/server_priv/server.lock
SCHED_LOCK=$PBS_HOME/sched_priv/sched.lock
MOM_LOCK=$PBS_HOME/mom_priv/mom.lock
WAIT_SERVER=${SKYGRID_TORQUE_WAIT_SERVER:-60}
WAIT_MOM=${SKYGRID_TORQUE_WAIT_MOM:-120}
WITH_MOM=${SKYGRID_TORQUE_MOM:-1}
MOUNT_NS=$(readlink /proc/self/ns/mnt)

die() { echo "torque-testbed.sh: $*" >&2; exit 2; }
log() { echo "==> $*"; }
[[ $(id -u) == 0 ]] || die "run as root"
export PATH=$BIN:$SBIN:$PATH LC_ALL=C

exe_of() { # pid: its executable; one replaced by a rebuild since it started still counts as that program
  local exe
  exe=$(readlink "/proc/$1/exe" 2>/dev/null) || return 0
  echo "${exe% (deleted)}"
}

# pids of processes running $SBIN/<program> (exact executable, not a name match) in this mount namespace:
# another host's daemons (a namespace of the multi-host test bed) are not this test bed's
program_pids() {
  local exe=$SBIN/$1 proc
  for proc in /proc/[0-9]*; do
    [[ $(exe_of "${proc#/proc/}") == "$exe" && $(readlink "$proc/ns/mnt" 2>/dev/null) == "$MOUNT_NS" ]] &&
      echo "${proc#/proc/}"
  done
  return 0
}

lock_pid() { # lockfile program: the pid in a Torque lock file when that process runs the program
  local pid
  [[ -s $1 ]] || return 1
  pid=$(tr -dc '0-9' <"$1")
  [[ -n $pid && $(exe_of "$pid") == "$SBIN/$2" && $(readlink "/proc/$pid/ns/mnt" 2>/dev/null) == "$MOUNT_NS" ]] && echo "$pid"
}

server_pid() { # `pbs_server -t create` leaves no server.lock behind (6.1.3): then by its executable
  local pid
  pid=$(lock_pid "$SERVER_LOCK" pbs_server || program_pids pbs_server)
  [[ -n $pid ]] && echo "${pid%%$'\n'*}"
}

wait_for() { # seconds description command...: bounded wait; on timeout say what was last seen
  local seconds=$1 what=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "torque-testbed.sh: timed out after ${seconds}s waiting for $what" >&2
      "$@" >&2 || true
      return 1
    fi
    sleep 0.5
  done
}

ensure_name_resolves() {
  getent hosts "$HOST" >/dev/null && return 0
  log "adding $HOST to /etc/hosts (127.0.1.1)"
  echo "127.0.1.1 $HOST" >>/etc/hosts
}

write_file() { # path content: write when different; prints "changed"
  if [[ -e $1 && $(cat "$1") == "$2" ]]; then
    return 0
  fi
  mkdir -p "$(dirname "$1")"
  printf '%s\n' "$2" >"$1.tmp"
  mv "$1.tmp" "$1"
  echo changed
}

server_answers() { "$BIN/qstat" -B "$HOST" >/dev/null 2>&1; }

node_state() { # name: the node's state string, empty when unknown
  "$BIN/pbsnodes" -x "$1" 2>/dev/null | sed -n 's:.*<state>\([^<]*\)</state>.*:\1:p'
}

mom_free() { [[ $(node_state "$HOST") == free ]]; }

show_mom_state() { echo "node $HOST state: '$(node_state "$HOST")'"; false; }

qmgr_set() { "$BIN/qmgr" -c "$1" >/dev/null || die "qmgr -c '$1' failed"; }

configure_server() { # torque.setup's steps, only where the server differs
  local server queue
  server=$("$BIN/qmgr" -c "print server")
  # pbs_server accepts a manager's host only by its canonical name (the first name resolving gives: on a host
  # whose name resolves to NAME.DOMAIN, "root@NAME" is a "Bad ACL entry")
  local admin
  admin=$(getent hosts "$HOST" | awk '{print $2; exit}')
  admin=root@${admin:-$HOST}
  grep -q "managers = .*$admin\|managers += $admin" <<<"$server" || qmgr_set "set server managers += $admin"
  grep -q "operators = .*$admin\|operators += $admin" <<<"$server" || qmgr_set "set server operators += $admin"
  grep -q "^set server scheduling = True" <<<"$server" || qmgr_set "set server scheduling = True"
  # vo_demand reads every user's jobs
  grep -q "^set server query_other_jobs = True" <<<"$server" || qmgr_set "set server query_other_jobs = True"
  # `delete node` under a running job waits this long for the MOM to requeue it (default 120 s) before it
  # purges the job: shorter, for the tests that do so
  grep -q "^set server timeout_for_job_requeue = 15$" <<<"$server" || qmgr_set "set server timeout_for_job_requeue = 15"
  queue=$("$BIN/qmgr" -c "print queue batch" 2>/dev/null || true)
  if [[ -z $queue ]]; then
    log "creating queue batch"
    qmgr_set "create queue batch queue_type = Execution"
    qmgr_set "set queue batch resources_default.walltime = 01:00:00"
  fi
  grep -q "enabled = True" <<<"$queue" || qmgr_set "set queue batch enabled = True"
  grep -q "started = True" <<<"$queue" || qmgr_set "set queue batch started = True"
  grep -q "^set server default_queue = batch" <<<"$server" || qmgr_set "set server default_queue = batch"
  [[ $WITH_MOM == 1 ]] || return 0
  if ! "$BIN/pbsnodes" -x "$HOST" >/dev/null 2>&1; then
    log "creating node $HOST (np=$NP)"
    qmgr_set "create node $HOST np=$NP"
  fi
}

start() {
  "$HERE/torque/build.sh"
  ensure_name_resolves
  local restart_mom
  write_file "$PBS_HOME/server_name" "$HOST" >/dev/null
  # $usecp: job output is copied locally instead of by scp to the submit host (this same host)
  restart_mom=$(write_file "$PBS_HOME/mom_priv/config" "\$pbsserver $HOST
\$usecp *:/ /
\$logevent 0x1ff")
  [[ -r $PBS_HOME/sched_priv/sched_config ]] ||
    die "$PBS_HOME has no sched_priv/sched_config: 'make install' writes PBS_HOME; run scripts/torque/build.sh --force"
  # pbs_server -t create does not make its own directories (make install does; they may have been removed)
  local dir
  for dir in accounting acl_groups acl_hosts acl_svr acl_users arrays credentials disallowed_types hostlist jobs queues; do
    mkdir -p "$PBS_HOME/server_priv/$dir"
  done
  chmod 0750 "$PBS_HOME/server_priv"
  mkdir -p "$PBS_HOME/server_logs" "$PBS_HOME/spool" "$PBS_HOME/undelivered"
  chmod 1777 "$PBS_HOME/spool" "$PBS_HOME/undelivered"

  if [[ -z $(program_pids trqauthd) ]]; then
    log "starting trqauthd"
    "$SBIN/trqauthd" >/dev/null 2>&1 || die "trqauthd did not start"
  fi
  if ! server_pid >/dev/null; then
    if [[ -e $PBS_HOME/server_priv/serverdb ]]; then
      log "starting pbs_server"
      "$SBIN/pbs_server"
    else
      log "starting pbs_server (creating its database)"
      "$SBIN/pbs_server" -t create -f
    fi
  fi
  wait_for "$WAIT_SERVER" "pbs_server on $HOST to answer (qstat -B; log in $PBS_HOME/server_logs)" server_answers || exit 1
  configure_server
  if ! lock_pid "$SCHED_LOCK" pbs_sched >/dev/null; then
    log "starting pbs_sched"
    "$SBIN/pbs_sched"
  fi
  if [[ $WITH_MOM != 1 ]]; then
    log "torque test bed up: server $HOST (no pbs_mom here: SKYGRID_TORQUE_MOM=0), commands in $BIN"
    return 0
  fi
  local mom
  if mom=$(lock_pid "$MOM_LOCK" pbs_mom) && [[ $restart_mom == changed ]]; then
    log "restarting pbs_mom (new mom_priv/config)"
    kill "$mom"
    wait_for 30 "pbs_mom $mom to stop" bash -c "! kill -0 $mom" || exit 1
  fi
  if ! lock_pid "$MOM_LOCK" pbs_mom >/dev/null; then
    log "starting pbs_mom for $HOST"
    "$SBIN/pbs_mom"
  fi
  wait_for "$WAIT_MOM" "node $HOST to be free (pbs_mom log in $PBS_HOME/mom_logs)" mom_free_or_cleared || {
    show_mom_state
    exit 1
  }
  log "torque test bed up: server $HOST, node $HOST ($NP cores), commands in $BIN"
}

mom_free_or_cleared() { # a node left offline by an earlier run goes back to service
  local state
  state=$(node_state "$HOST")
  case $state in
    free) return 0 ;;
    offline | offline,*)
      # but one that skygrid.fabric drained into a VM host (the site in a box on Torque) stays so
      if "$BIN/pbsnodes" -x "$HOST" 2>/dev/null | grep -q '<note>[^<]*skygrid\.fabric'; then
        [[ $state == offline ]] && return 0
      else
        "$BIN/pbsnodes" -c -N n "$HOST" >/dev/null 2>&1
      fi
      ;;
  esac
  return 1
}

stop_pid() { # what pid
  [[ -n $2 ]] || return 0
  log "stopping $1 (pid $2)"
  kill "$2" 2>/dev/null || return 0
  local deadline=$((SECONDS + 30))
  while kill -0 "$2" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      kill -9 "$2" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
}

stop() {
  stop_pid pbs_mom "$(lock_pid "$MOM_LOCK" pbs_mom || true)"
  stop_pid pbs_sched "$(lock_pid "$SCHED_LOCK" pbs_sched || true)"
  local pid
  if pid=$(server_pid); then
    # qterm saves the server's state; a plain signal is the fallback
    "$BIN/qterm" -t quick "$HOST" >/dev/null 2>&1 || true
    stop_pid pbs_server "$pid"
  fi
  for pid in $(program_pids trqauthd); do
    stop_pid trqauthd "$pid"
  done
}

status() {
  local rc=0
  if [[ -n $(program_pids trqauthd) ]]; then echo "trqauthd: running"; else echo "trqauthd: not running"; rc=1; fi
  if server_pid >/dev/null && server_answers; then echo "pbs_server: running"; else echo "pbs_server: not running"; rc=1; fi
  if lock_pid "$SCHED_LOCK" pbs_sched >/dev/null; then echo "pbs_sched: running"; else echo "pbs_sched: not running"; rc=1; fi
  if [[ $WITH_MOM != 1 ]]; then :
  elif lock_pid "$MOM_LOCK" pbs_mom >/dev/null; then echo "pbs_mom ($HOST): running"; else echo "pbs_mom ($HOST): not running"; rc=1; fi
  if ((rc == 0)); then
    "$BIN/pbsnodes" -a
  fi
  return "$rc"
}

case ${1:-status} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) echo "export PATH=$BIN:$SBIN:\$PATH" ;;
  *)
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
    ;;
esac
