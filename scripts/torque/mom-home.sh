# A PBS_HOME for a pbs_mom of its own, shared by scripts/torque/netns-mom.sh and scripts/multihost-testbed.sh.
# Source it.
# shellcheck shell=bash

# The layout `make install` gives PBS_HOME, as far as a MOM needs it (without it pbs_mom exits 3, silently),
# the server it reports to, and a configuration that copies job files locally and reports every 10 s
# (default 45 s: a new node turns free sooner).
torque_mom_home() {  # home server
  local home=$1 server=$2
  mkdir -p "$home/mom_priv/jobs" "$home/spool" "$home/undelivered" "$home/checkpoint" \
    "$home/aux" "$home/mom_logs" "$home/job_logs"
  chmod 0751 "$home/mom_priv" "$home/mom_priv/jobs"
  chmod 1777 "$home/spool" "$home/undelivered" "$home/checkpoint"
  touch "$home/pbs_environment"
  echo "$server" >"$home/server_name"
  # shellcheck disable=SC2016 # $pbsserver etc. are MOM directives, not shell variables
  printf '$pbsserver %s\n$usecp *:/ /\n$status_update_time 10\n$check_poll_time 10\n' "$server" >"$home/mom_priv/config"
}
