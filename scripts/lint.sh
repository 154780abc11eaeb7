#!/usr/bin/env bash
# Runs ansible-lint (production profile, see .ansible-lint) over the collection, offline.
# Extra arguments are passed to ansible-lint (e.g. `scripts/lint.sh plugins/ roles/` or `--fix`).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd -P)
cd "$ROOT"
[[ -x .venv/bin/ansible-lint ]] || { echo "lint.sh: .venv/bin/ansible-lint not found; run scripts/install-deps.sh first" >&2; exit 2; }

# Offline: `offline: true` in .ansible-lint and --offline here skip the Galaxy install of collection
# requirements, the schema refresh and the release check; the variable below also skips the schema refresh.
export ANSIBLE_LINT_SKIP_SCHEMA_UPDATE=1
# The checkout's collection, never an installed copy of it (~/.ansible/collections would shadow it).
export ANSIBLE_COLLECTIONS_PATH="$ROOT/collections"
# Use the venv's ansible-* tools (ansible-lint calls ansible-config/ansible-galaxy).
export PATH="$ROOT/.venv/bin:$PATH"
# Plain output when not on a terminal (TERM=xterm otherwise makes ansible-lint emit colour codes into logs).
[[ -t 1 ]] || export NO_COLOR=${NO_COLOR:-1}
exec .venv/bin/ansible-lint --offline -c .ansible-lint "$@"
