# Shell functions shared by the namespace test beds (scripts/migration-testbed.sh,
# scripts/multihost-testbed.sh): pid files, bounded stops, libvirt's private configuration tree and
# the managed blocks in config files. Source it; set TB_NAME (the prefix of messages) first.
# shellcheck shell=bash

say() { echo "${TB_NAME:-testbed}: $*"; }
die() { echo "${TB_NAME:-testbed}: ERROR: $*" >&2; exit 1; }

pid_alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }
pidfile_pid() { if [[ -s $1 ]]; then tr -dc 0-9 <"$1"; fi; }
pid_comm() { cat /proc/"$1"/comm 2>/dev/null || true; }
# pid from a pid file, only if it is alive and runs the expected program
live_pid() {  # pidfile comm
  local pid
  pid=$(pidfile_pid "$1")
  if pid_alive "$pid" && [[ $(pid_comm "$pid") == "$2" ]]; then echo "$pid"; fi
}

ns_exists() { [[ -e /run/netns/$1 ]] && ip netns list | awk '{print $1}' | grep -qx "$1"; }
ns_pids() { if ns_exists "$1"; then ip netns pids "$1" 2>/dev/null || true; fi; }

stop_pid() {  # name pid: SIGTERM, up to 10 s, then SIGKILL
  local name=$1 pid=$2
  pid_alive "$pid" || return 0
  say "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do pid_alive "$pid" || return 0; sleep 0.1; done
  say "$name did not exit after 10s; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

need_tools() {  # tool... : die naming the missing ones
  local tool absent=()
  for tool in "$@"; do command -v "$tool" >/dev/null || absent+=("$tool"); done
  ((${#absent[@]} == 0)) || die "missing tools: ${absent[*]}"
}

# Comment out active settings of these keys, then (re)write our block at the end of the file.
# libvirt's config parser uses the FIRST occurrence of a key, so old lines must go.
set_conf_block() {  # mark file key=value|#comment...
  local mark=$1 file=$2 kv key sed_keys=()
  shift 2
  for kv in "$@"; do
    [[ $kv == \#* ]] && continue
    key=${kv%%=*}
    sed_keys+=(-e "s/^[[:space:]]*\\(${key}[[:space:]]*=\\)/#${mark}# \\1/")
  done
  sed -i -e "/^# >>> ${mark}/,/^# <<< ${mark}/d" "${sed_keys[@]}" "$file"
  {
    echo "# >>> ${mark} (managed by ${TB_SCRIPT:-a test bed script}; rewritten on start)"
    for kv in "$@"; do
      [[ $kv == \#* ]] && { echo "$kv"; continue; }
      echo "${kv%%=*} = ${kv#*=}"
    done
    echo "# <<< ${mark}"
  } >>"$file"
}

# A lines block between "# >>> mark" and "# <<< mark" in a file, replaced in place (the file keeps
# its inode: /etc/hosts may be a bind mount). Lines come on stdin; no input removes the block.
replace_marked_block() {  # mark file
  local mark=$1 file=$2 body tmp
  body=$(cat)
  tmp=$(mktemp)
  sed -e "/^# >>> ${mark}/,/^# <<< ${mark}/d" "$file" >"$tmp"
  if [[ -n $body ]]; then
    { echo "# >>> ${mark} (managed by ${TB_SCRIPT:-a test bed script})"; echo "$body"; echo "# <<< ${mark}"; } >>"$tmp"
  fi
  cmp -s "$tmp" "$file" || cat "$tmp" >"$file"
  rm -f "$tmp"
}

# A private copy of /etc/libvirt for a libvirtd in a namespace, made once: none of the host's
# domains, secrets, or pools/networks other than the packaged `default` ones (they would point at
# the host's directories or bridges).
copy_etc_libvirt_once() {  # destination
  local dest=$1 tmp f
  [[ -f $dest/.skygrid-copied ]] && return 0
  say "copying /etc/libvirt -> $dest (once)"
  tmp=$dest.tmp
  rm -rf "$tmp"
  cp -a /etc/libvirt "$tmp"
  rm -f "$tmp"/qemu/*.xml "$tmp"/qemu/autostart/* "$tmp"/secrets/*
  for f in "$tmp"/storage/*.xml "$tmp"/storage/autostart/*.xml \
    "$tmp"/qemu/networks/*.xml "$tmp"/qemu/networks/autostart/*.xml; do
    [[ -e $f && $(basename "$f") != default.xml ]] && rm -f "$f"
  done
  touch "$tmp/.skygrid-copied"
  rm -rf "$dest"
  mv "$tmp" "$dest"
}

# Top-level directories of the private trees get the owner and mode of the host's.
mirror_top_dirs() {  # host_dir private_dir
  local d name
  mkdir -p "$2"
  chmod --reference="$1" "$2" 2>/dev/null || true
  for d in "$1"/*/; do
    [[ -d $d ]] || continue
    name=$(basename "$d")
    mkdir -p "$2/$name"
    chown --reference="$d" "$2/$name"
    chmod --reference="$d" "$2/$name"
  done
}

# The private libvirt trees of a namespace host under a state dir (names as in libvirt_bind_mounts).
prepare_libvirt_trees() {  # state_dir
  copy_etc_libvirt_once "$1/etc-libvirt"
  mirror_top_dirs /var/lib/libvirt "$1/var-lib-libvirt"
  mirror_top_dirs /var/log/libvirt "$1/var-log-libvirt"
  mirror_top_dirs /var/cache/libvirt "$1/var-cache-libvirt"
  mkdir -p "$1/run-libvirt"
  chmod 0755 "$1/run-libvirt"
}

# Inside a fresh mount namespace: a sysfs of this network namespace WITHOUT the cgroup mounts below
# /sys (detached, not shadowed: libvirt looks for cgroup mounts in /proc/mounts; two libvirtds in one
# cgroup tree would mix up their domains), and the private libvirt trees bind-mounted.
mount_private_libvirt() {  # state_dir
  local b src dst
  umount -l /sys
  mount -t sysfs sysfs /sys
  for b in etc-libvirt:/etc/libvirt var-lib-libvirt:/var/lib/libvirt run-libvirt:/run/libvirt \
    var-log-libvirt:/var/log/libvirt var-cache-libvirt:/var/cache/libvirt; do
    src=$1/${b%%:*}
    dst=${b#*:}
    mkdir -p "$dst"
    mount --bind "$src" "$dst"
  done
  # /var/run is a symlink to /run on Debian; bind it too where it is not
  if [[ ! -L /var/run && -d /var/run/libvirt ]]; then
    mount --bind "$1/run-libvirt" /var/run/libvirt
  fi
}

# Bounded wait: run the check until it succeeds; on timeout die with the description.
wait_until() {  # seconds description command...
  local seconds=$1 what=$2 deadline
  shift 2
  deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out after ${seconds}s waiting for $what"
    sleep 0.3
  done
}
