#!/usr/bin/env bash
# Boot test of the skygrid VO worker image (tests/vo-image/build.sh) under libvirt/QEMU TCG.
#
# Builds the image (or finds it cached), boots it once with 1 vCPU / 512 MiB on an isolated
# libvirt network (no <forward>) with a NoCloud seed whose user-data writes files (plain and
# base64, with owner and permissions) and runs commands that print markers, `slurmd -V` and
# `munged --version` on the console, starts munged with a per-test key and checks a credential
# round trip; then it checks the console log for all of them and for `SKYGRID-VO: ready`.
#
# SGVO_CMDLINE overrides the kernel command line (default console=ttyS0 root=/dev/vda rw quiet),
# SGVO_DISK_GB the VM's disk size (default 3, larger than the image: the guest grows its ext4).
# SGVO_NET=static uses a static network-config (v2, interface matched by MAC) instead of DHCP.
# SGVO_JOIN=1 (the default when slurmctld is installed here) also proves the Slurm path: a private
# munged + slurmctld on the isolated network's host address (port 16817, configless, dynamic nodes;
# the shared Slurm test bed is not touched), the VM's runcmd starts `slurmd -Z --conf-server …
# --conf "NodeAddr=<its IP> Feature=atlas CPUs=1 RealMemory=400"`, the node registers with its
# feature, and `sbatch --constraint=atlas` runs a job inside the VM that prints its hostname on the
# VM's console. SGVO_JOIN=0 skips that.
# SGVO_REBOOT=1 (the default with SGVO_JOIN) then reboots the VM (virsh reboot, as a host restart
# restarts its autostarted VMs): write_files and runcmd do not run again (once per instance), the seed's
# per-boot script (/var/lib/cloud/scripts/per-boot, run at every boot) starts munged and slurmd again,
# the node is idle again and a second job runs in the VM.
#
# Everything is named sgvo-* and removed on exit (transient domain and network, work directory,
# private daemons), also after a failure; SGVO_KEEP=1 keeps the work directory (console log).
# Prints: build time, image size, boot-to-ready time. Exit status 0 = all checks passed.
# Needs root, libvirtd on qemu:///system (scripts/testbed.sh start), genisoimage, qemu-img.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
URI=qemu:///system
CACHE=${SKYGRID_CACHE:-/var/cache/skygrid}/vo-image
DOM=sgvo-boot
NET=sgvo-net
BRIDGE=sgvo-br0
PREFIX=${SGVO_SUBNET:-192.168.236}   # /24 of the isolated network; the host is .1
HOST_IP=$PREFIX.1
CTLD_PORT=${SGVO_CTLD_PORT:-16817}
# The private munged's socket (AuthInfo=socket=…, also handed to the VM by configless Slurm; in the
# VM it is a link to munged's default socket, which slurmd uses before it has fetched slurm.conf).
MUNGE_SOCK_DIR=/run/sgvo-munge
BOOT_TIMEOUT=${SGVO_BOOT_TIMEOUT:-300}
NETMODE=${SGVO_NET:-dhcp}            # dhcp (network-config v2 dhcp4) or static (v2, match by MAC)
MAC=52:54:00:5a:76:01
CMDLINE=${SGVO_CMDLINE:-console=ttyS0 root=/dev/vda rw quiet}
DISK_GB=${SGVO_DISK_GB:-3}              # the VM's disk; the image's file system is 2 GiB
STATIC_IP=$PREFIX.77
if [[ -z ${SGVO_JOIN:-} ]]; then
  if command -v slurmctld >/dev/null && command -v munged >/dev/null; then SGVO_JOIN=1; else SGVO_JOIN=0; fi
fi
SGVO_REBOOT=${SGVO_REBOOT:-$SGVO_JOIN}

T0=$SECONDS
say() { echo "sgvo-test: [$((SECONDS - T0))s] $*"; }
FAILED=0
fail() { echo "sgvo-test: FAIL: $*" >&2; FAILED=1; }
virsh_() { virsh -q -c "$URI" "$@"; }

[[ $(id -u) == 0 ]] || { echo "run as root" >&2; exit 2; }
for tool in virsh genisoimage qemu-img; do command -v "$tool" >/dev/null || { echo "$tool not found" >&2; exit 2; }; done
timeout 10 virsh -c "$URI" version >/dev/null 2>&1 || { echo "libvirtd does not answer on $URI (scripts/testbed.sh start)" >&2; exit 2; }

WORK=$(mktemp -d /var/tmp/sgvo-boot.XXXXXX)
chmod 0755 "$WORK"   # QEMU runs as libvirt-qemu and must reach the overlay, seed and log
cleanup() {
  set +e
  virsh_ destroy "$DOM" >/dev/null 2>&1
  virsh_ net-destroy "$NET" >/dev/null 2>&1
  local f pid
  for f in "$WORK"/slurm/slurmctld.pid "$WORK"/munge/munged.pid; do
    [[ -s $f ]] || continue
    pid=$(cat "$f")
    kill "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done   # it saves state on exit
  done
  rm -rf "$MUNGE_SOCK_DIR"
  # libvirt's DAC driver chowns the overlay's backing file (the cached image) to libvirt-qemu and
  # does not give it back; the content is untouched (read-only backing), return it to root.
  [[ -n ${QCOW:-} && -f $QCOW ]] && chown root:root "$QCOW"
  if [[ -n ${SGVO_KEEP:-} ]]; then
    echo "sgvo-test: kept $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
# Leftovers of an interrupted run (only our own names).
virsh_ destroy "$DOM" >/dev/null 2>&1 || true
virsh_ net-destroy "$NET" >/dev/null 2>&1 || true

# --- build (cold or cached) ------------------------------------------------------------------------
TB=$SECONDS
"$HERE/build.sh"
BUILD_S=$((SECONDS - TB))
QCOW=$CACHE/vo-worker.qcow2
say "build step: ${BUILD_S}s; image $(stat -c %s "$QCOW") bytes ($(du -h --apparent-size "$QCOW" | cut -f1)), virtual $(qemu-img info --output=json "$QCOW" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"] // 2**20)') MiB"

# --- optional private Slurm controller on the isolated network --------------------------------------
MUNGE_KEY=$WORK/munge/munge.key
mkdir -p "$WORK/munge" "$MUNGE_SOCK_DIR"
chmod 0700 "$WORK/munge"
head -c 1024 /dev/urandom >"$MUNGE_KEY"   # per-test key: never in the image, gone after the test
chmod 0400 "$MUNGE_KEY"

# --- network, seed, overlay, domain -------------------------------------------------------------------
virsh_ net-create /dev/stdin >/dev/null <<EOF
<network>
  <name>$NET</name>
  <bridge name='$BRIDGE' stp='off' delay='0'/>
  <ip address='$HOST_IP' netmask='255.255.255.0'>
    <dhcp><range start='$PREFIX.10' end='$PREFIX.50'/></dhcp>
  </ip>
</network>
EOF
say "isolated network $NET ($HOST_IP/24 on $BRIDGE, no forward)"

if ((SGVO_JOIN)); then
  mkdir -p "$WORK/slurm/state"
  cat >"$WORK/slurm/slurm.conf" <<EOF
# sgvo boot test: private controller for one dynamic node (tests/vo-image/test_boot.sh)
ClusterName=sgvo
SlurmctldHost=$(hostname -s)($HOST_IP)
SlurmctldPort=$CTLD_PORT
SlurmdPort=6818
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK_DIR/munge.socket.2
StateSaveLocation=$WORK/slurm/state
SlurmctldPidFile=$WORK/slurm/slurmctld.pid
SlurmctldLogFile=$WORK/slurm/slurmctld.log
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmdPidFile=/run/slurmd.pid
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MaxNodeCount=8
TreeWidth=65533
SlurmctldParameters=enable_configless
PartitionName=vo Nodes=ALL Default=YES MaxTime=10 State=UP
EOF
  munged --socket="$MUNGE_SOCK_DIR/munge.socket.2" --key-file="$MUNGE_KEY" \
    --pid-file="$WORK/munge/munged.pid" --log-file="$WORK/munge/munged.log" \
    --seed-file="$WORK/munge/munged.seed" --force
  SLURM_CONF=$WORK/slurm/slurm.conf slurmctld -f "$WORK/slurm/slurm.conf"
  for _ in $(seq 50); do
    SLURM_CONF=$WORK/slurm/slurm.conf timeout 5 scontrol ping 2>/dev/null | grep -q UP && break
    sleep 0.2
  done
  SLURM_CONF=$WORK/slurm/slurm.conf scontrol ping | grep -q UP || { cat "$WORK/slurm/slurmctld.log" >&2; echo "private slurmctld did not come up" >&2; exit 1; }
  say "private munged + slurmctld on $HOST_IP:$CTLD_PORT (configless, dynamic nodes)"
fi

mkdir -p "$WORK/seed"
B64=$(printf 'SGVO-TEST-B64 decoded ok\n' | base64 -w0)
KEY_B64=$(base64 -w0 "$MUNGE_KEY")
cat >"$WORK/seed/meta-data" <<EOF
instance-id: $DOM-$(date +%s)
local-hostname: $DOM
EOF
if [[ $NETMODE == static ]]; then
  cat >"$WORK/seed/network-config" <<EOF
version: 2
ethernets:
  nic0:
    match:
      macaddress: "$MAC"
    set-name: eth0
    addresses: [$STATIC_IP/24]
    routes:
      - to: 0.0.0.0/0
        via: $HOST_IP
    nameservers:
      addresses: [$HOST_IP]
      search: [sgvo.test]
EOF
else
  cat >"$WORK/seed/network-config" <<EOF
version: 2
ethernets:
  nic0:
    match:
      name: eth0
    dhcp4: true
EOF
fi
{
  cat <<EOF
#cloud-config
# sgvo boot test (tests/vo-image/test_boot.sh)
write_files:
  - path: /etc/sgvo-test/plain.txt
    content: |
      SGVO-TEST-FILE plain text from write_files
    permissions: '0640'
    owner: root:munge
  - path: /etc/sgvo-test/b64.txt
    encoding: b64
    content: $B64
    permissions: '0600'
  - path: /etc/munge/munge.key
    encoding: b64
    content: $KEY_B64
    owner: munge:munge
    permissions: '0400'
EOF
  if ((SGVO_JOIN)); then
    # At every boot (before runcmd on the first): once runcmd has run, start munged and slurmd again.
    cat <<EOF
  - path: /var/lib/cloud/scripts/per-boot/sgvo-rejoin
    permissions: '0755'
    content: |
      #!/bin/sh
      echo "SGVO-TEST-PER-BOOT \$(cat /proc/sys/kernel/random/boot_id)"
      [ -e /var/lib/sgvo-test/initialised ] || exit 0
      runuser -u munge -- /usr/sbin/munged
      mkdir -p $MUNGE_SOCK_DIR && ln -sfn /run/munge/munge.socket.2 $MUNGE_SOCK_DIR/munge.socket.2
      slurmd -Z --conf-server $HOST_IP:$CTLD_PORT --conf "NodeAddr=\$(ip -4 -o addr show dev eth0 | awk '{print \$4}' | cut -d/ -f1) Feature=atlas CPUs=1 RealMemory=400" && echo "SGVO-TEST-SLURMD-REJOINED"
EOF
  fi
  cat <<EOF
runcmd:
  - echo "SGVO-TEST-MARKER runcmd as \$(id -un) on \$(hostname), eth0 \$(ip -4 -o addr show dev eth0 | awk '{print \$4}')"
  - [sh, -c, 'cat /etc/sgvo-test/plain.txt /etc/sgvo-test/b64.txt']
  - [stat, -c, 'SGVO-TEST-STAT %n %a %U:%G', /etc/sgvo-test/plain.txt, /etc/sgvo-test/b64.txt, /etc/munge/munge.key]
  - echo "SGVO-TEST-SLURMD \$(slurmd -V)"
  - echo "SGVO-TEST-MUNGED \$(munged --version 2>&1)"
  - echo "SGVO-TEST-RESOURCES \$(free -m | awk '/^Mem:/ {print \$3 " of " \$2 " MiB used"}'), root fs \$(df -m / | awk 'NR==2 {print \$3 " of " \$2 " MiB used"}')"
  - runuser -u munge -- /usr/sbin/munged
  - echo "SGVO-TEST-MUNGE \$(munge -n | unmunge | grep STATUS)"
  - mkdir -p $MUNGE_SOCK_DIR && ln -s /run/munge/munge.socket.2 $MUNGE_SOCK_DIR/munge.socket.2
EOF
  if ((SGVO_JOIN)); then
    cat <<EOF
  - >-
    slurmd -Z --conf-server $HOST_IP:$CTLD_PORT
    --conf "NodeAddr=\$(ip -4 -o addr show dev eth0 | awk '{print \$4}' | cut -d/ -f1) Feature=atlas CPUs=1 RealMemory=400"
    && echo "SGVO-TEST-SLURMD-STARTED"
    || { echo "SGVO-TEST-SLURMD-FAILED"; tail -n 20 /var/log/slurm/slurmd.log; false; }
  - mkdir -p /var/lib/sgvo-test && touch /var/lib/sgvo-test/initialised
EOF
  fi
} >"$WORK/seed/user-data"
genisoimage -quiet -output "$WORK/$DOM-cidata.iso" -volid cidata -joliet -rock \
  "$WORK/seed/user-data" "$WORK/seed/meta-data" "$WORK/seed/network-config"
# Larger than the image's file system: skygrid-firstboot must grow it.
qemu-img create -q -f qcow2 -b "$QCOW" -F qcow2 "$WORK/$DOM-vda.qcow2" "${DISK_GB}G"

cat >"$WORK/$DOM.xml" <<EOF
<domain type='qemu'>
  <name>$DOM</name>
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$CACHE/vmlinuz</kernel>
    <initrd>$CACHE/initrd.img</initrd>
    <cmdline>$CMDLINE</cmdline>
  </os>
  <features><acpi/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$WORK/$DOM-vda.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='$WORK/$DOM-cidata.iso'/>
      <target dev='vdb' bus='virtio'/>
      <readonly/>
    </disk>
    <interface type='network'>
      <source network='$NET'/>
      <mac address='$MAC'/>
      <model type='virtio'/>
    </interface>
    <serial type='pty'><log file='$WORK/console.log' append='off'/></serial>
    <console type='pty'><target type='serial'/></console>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <memballoon model='none'/>
  </devices>
</domain>
EOF

LOG=$WORK/console.log
console() { tr -d '\r' <"$LOG" 2>/dev/null || true; }
wait_console() { # pattern seconds
  local deadline=$((SECONDS + $2))
  until console | grep -q -- "$1"; do
    if ((SECONDS >= deadline)) || ! virsh_ domid "$DOM" >/dev/null 2>&1; then return 1; fi
    sleep 0.2
  done
}

TS=$(date +%s.%N)
virsh_ create "$WORK/$DOM.xml" >/dev/null
say "started $DOM (1 vCPU, 512 MiB, TCG); waiting for SKYGRID-VO: ready"
if wait_console "SKYGRID-VO: ready" "$BOOT_TIMEOUT"; then
  READY_S=$(python3 -c "import time; print('%.1f' % (time.time() - $TS))")
  say "boot to ready: ${READY_S}s (from virsh create; guest: $(console | sed -n 's/^SKYGRID-VO: firstboot: done at \([0-9.]*s\).*/\1/p') after kernel start)"
else
  READY_S=""
  fail "no 'SKYGRID-VO: ready' within ${BOOT_TIMEOUT}s"
fi

if ((SGVO_JOIN)) && [[ -n $READY_S ]]; then
  export SLURM_CONF=$WORK/slurm/slurm.conf
  deadline=$((SECONDS + 60))
  until sinfo -h -N -n "$DOM" -o '%N %f %t' 2>/dev/null | grep -q "^$DOM atlas idle"; do
    if ((SECONDS >= deadline)); then fail "node $DOM did not register idle with feature atlas"; break; fi
    sleep 0.5
  done
  say "sinfo: $(sinfo -h -N -o '%N %f %c %m %t' 2>&1 | tr '\n' ';')"
  # shellcheck disable=SC2016 # $(hostname) is for the job's shell, inside the VM
  JOB=$(sbatch --parsable --constraint=atlas --chdir=/tmp --output=/dev/null --time=2 \
    --wrap 'echo "SGVO-TEST-JOB ran on $(hostname)" >/dev/console' 2>&1) || fail "sbatch: $JOB"
  wait_console "SGVO-TEST-JOB ran on $DOM" 60 || fail "job $JOB did not run inside $DOM"
  say "job $JOB: $(console | grep -m1 'SGVO-TEST-JOB ' || echo none)"
  if ((SGVO_REBOOT)); then
    virsh_ reboot "$DOM" >/dev/null
    say "virsh reboot $DOM; waiting for the second SKYGRID-VO: ready"
    deadline=$((SECONDS + BOOT_TIMEOUT))
    until (($(console | grep -c '^SKYGRID-VO: ready') >= 2)); do
      if ((SECONDS >= deadline)); then fail "no second 'SKYGRID-VO: ready' within ${BOOT_TIMEOUT}s of virsh reboot"; break; fi
      sleep 0.5
    done
    wait_console "SGVO-TEST-SLURMD-REJOINED" 30 || fail "slurmd was not started again after the reboot"
    deadline=$((SECONDS + 60))
    until sinfo -h -N -n "$DOM" -o '%N %f %t' 2>/dev/null | grep -q "^$DOM atlas idle"; do
      if ((SECONDS >= deadline)); then fail "node $DOM not idle again after the reboot: $(sinfo -h -N -n "$DOM" -o '%t %E' 2>&1)"; break; fi
      sleep 0.5
    done
    # shellcheck disable=SC2016 # $(hostname) is for the job's shell, inside the VM
    JOB2=$(sbatch --parsable --constraint=atlas --chdir=/tmp --output=/dev/null --time=2 \
      --wrap 'echo "SGVO-TEST-JOB2 ran on $(hostname) after the reboot" >/dev/console' 2>&1) || fail "sbatch: $JOB2"
    wait_console "SGVO-TEST-JOB2 ran on $DOM after the reboot" 60 || fail "job $JOB2 did not run inside $DOM after the reboot"
    say "job $JOB2 after the reboot: $(console | grep -m1 'SGVO-TEST-JOB2 ' || echo none)"
  fi
  scontrol delete nodename="$DOM" 2>/dev/null || true
fi

# --- checks ---------------------------------------------------------------------------------------
TEXT=$(console)
check() { # description pattern (extended regex)
  if grep -Eq -- "$2" <<<"$TEXT"; then echo "  ok   $1"; else fail "$1 (no /$2/ on the console)"; fi
}
echo "sgvo-test: console checks"
check "initramfs mounted the root from /dev/vda" 'SKYGRID-VO: initramfs: root /dev/vda mounted'
check "root file system grown to the ${DISK_GB} GiB disk" 'SKYGRID-VO: root file system on /dev/vda grown'
check "seed found on vdb" 'SKYGRID-VO: seed: /dev/vdb \(iso9660'
check "hostname from meta-data" "SKYGRID-VO: hostname $DOM"
if [[ $NETMODE == static ]]; then
  check "static address on eth0 (network-config v2, match by MAC)" "SKYGRID-VO: network: eth0 static $STATIC_IP/24"
else
  check "DHCP lease on eth0 (network-config v2)" "SKYGRID-VO: network: eth0 dhcp $PREFIX\."
fi
check "write_files plain" 'SKYGRID-VO: write_files: /etc/sgvo-test/plain.txt \(43 bytes, 0640, root:munge\)'
check "write_files b64" 'SKYGRID-VO: write_files: /etc/sgvo-test/b64.txt \(25 bytes, 0600'
check "runcmd marker (string item)" "SGVO-TEST-MARKER runcmd as root on $DOM, eth0 $PREFIX\."
check "file content (list item)" '^SGVO-TEST-FILE plain text from write_files'
check "base64 content decoded" '^SGVO-TEST-B64 decoded ok'
check "owner and mode applied" 'SGVO-TEST-STAT /etc/sgvo-test/plain.txt 640 root:munge'
check "munge key 0400 munge:munge" 'SGVO-TEST-STAT /etc/munge/munge.key 400 munge:munge'
check "slurmd -V" '^SGVO-TEST-SLURMD slurm(-wlm)? 22\.'
check "munged --version" '^SGVO-TEST-MUNGED munge-0\.5'
check "munged running, credential round trip" 'SGVO-TEST-MUNGE STATUS: +Success'
((SGVO_JOIN)) && check "slurmd -Z started" '^SGVO-TEST-SLURMD-STARTED'
check "runcmd exit 0" 'SKYGRID-VO: runcmd: exit 0'
check "no errors" 'SKYGRID-VO: firstboot: done at [0-9.]+s, 0 error'
check "ready" '^SKYGRID-VO: ready'
if ((SGVO_REBOOT)); then
  count() { grep -Ec -- "$1" <<<"$TEXT" || true; }
  check "per-boot script run (cloud-init's scripts/per-boot)" 'SKYGRID-VO: per-boot sgvo-rejoin: exit 0'
  check "second boot: write_files and runcmd not run again" 'SKYGRID-VO: instance-id .* \(already initialised\)'
  if [[ $(count '^SGVO-TEST-PER-BOOT ') == 2 && $(count 'SKYGRID-VO: runcmd: start') == 1 ]]; then
    echo "  ok   per-boot at both boots, runcmd at the first only"
  else
    fail "per-boot ran $(count '^SGVO-TEST-PER-BOOT ') times, runcmd $(count 'SKYGRID-VO: runcmd: start') (want 2 and 1)"
  fi
  check "slurmd started again by the per-boot script" '^SGVO-TEST-SLURMD-REJOINED'
  check "a job ran after the reboot" "SGVO-TEST-JOB2 ran on $DOM after the reboot"
fi
grep -m1 '^SGVO-TEST-RESOURCES' <<<"$TEXT" | sed 's/^/  info /' || true
if grep -q 'SKYGRID-VO: ERROR' <<<"$TEXT"; then fail "errors on the console: $(grep 'SKYGRID-VO: ERROR' <<<"$TEXT" | tr '\n' ';')"; fi

# Graceful shutdown through the ACPI power button.
if [[ -n $READY_S ]]; then
  virsh_ shutdown "$DOM" >/dev/null
  deadline=$((SECONDS + 60))
  while virsh_ domid "$DOM" >/dev/null 2>&1 && ((SECONDS < deadline)); do sleep 0.3; done
  if virsh_ domid "$DOM" >/dev/null 2>&1; then fail "no poweroff within 60 s of virsh shutdown"; else echo "  ok   virsh shutdown -> orderly poweroff"; fi
fi

if ((FAILED)); then
  echo "---- console log ----" >&2
  console >&2
  [[ -f $WORK/slurm/slurmctld.log ]] && { echo "---- slurmctld log (tail) ----" >&2; tail -n 30 "$WORK/slurm/slurmctld.log" >&2; }
  echo "sgvo-test: FAILED" >&2
  exit 1
fi
say "PASSED: build step ${BUILD_S}s, image $(du -h --apparent-size "$QCOW" | cut -f1), boot to ready ${READY_S}s (TCG, 1 vCPU, 512 MiB)"
