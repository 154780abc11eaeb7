#!/usr/bin/env bash
# The no-op converge of the converted site in a box, an earlier commit and this checkout side by side:
# RUNS rounds, each running the earlier commit's convert_worker_nodes.yml then this checkout's, so the
# machine's drift between runs hits both alike. Both must change nothing (the site is converged first).
#   make demo && bench/converge/ab.sh <commit> [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../.."
here=$PWD commit=${1:?usage: bench/converge/ab.sh <commit> [runs]} runs=${2:-4}
old=$(mktemp -d /tmp/skygrid-ab-XXXXXX)
trap 'git worktree remove --force "$old" >/dev/null 2>&1 || rm -rf "$old"' EXIT
git worktree add -f --detach "$old" "$commit" >/dev/null 2>&1

converge() { # checkout: prints seconds and the recap's changed count
  local start end out
  start=$(date +%s.%N)
  out=$(cd "$1" && ANSIBLE_CONFIG="$1/ansible.cfg" ANSIBLE_COLLECTIONS_PATH="$1/collections" \
        "$here/.venv/bin/ansible-playbook" -i inventories/local playbooks/convert_worker_nodes.yml 2>&1) \
    || { echo "$out" | tail -20 >&2; exit 1; }
  end=$(date +%s.%N)
  printf '%.2f %s\n' "$(echo "$end - $start" | bc)" "$(grep -o 'changed=[0-9]*' <<<"$out" | head -1)"
}

converge "$here" >/dev/null  # converged by this checkout first
for ((i = 1; i <= runs; i++)); do
  echo "run $i: $commit $(converge "$old"); this checkout $(converge "$here")"
done
